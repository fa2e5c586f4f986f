"""Per-node, per-model files: the start lock, the state file, the log, usage markers.

Layout: <state_dir>/<hostname>/<server key>/ holds
    lock        exclusive fcntl lock: held to read or change the server (start, stop)
    state.json  the running server: pid, process group, port, spec hash, times, watchdog
    server.log  the server's output (the previous run's is kept as server.log.1)
    last_use    its mtime is the last time a request began or ended
    in_flight   every request holds a shared fcntl lock on it while it runs
The hostname level keeps nodes apart if state_dir is on a shared file system. The server key
is the model's, plus the role for a batch server, so that a batch never shares (and never
stops) the interactive server of its model on the same host, and the replica's index past
the first (``ServerSpec.replica``).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import socket
import stat
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any


class LockTimeout(TimeoutError):
    """The model's lock stayed held by another caller longer than the bounded wait."""


_RUNTIME_FOLDER = re.compile(r"node-runtime-[0-9a-f]{12}")
# Held (a shared flock) by the server's processes while any of them lives: they inherit it.
_RUNNING_MARK = ".running"


def runtime_folder(server_id: str) -> Path:
    """A running server's scratch folder: its temporary files and vLLM's IPC sockets, which
    nobody else removes. Under the node's temp folder, not the server's: a socket's path must
    stay short (108 bytes on Linux). Removed when the server stops (``stop_recorded``), and
    by the next start on the node if the server ended without a stop
    (``remove_ended_runtime_folders``)."""
    return Path(tempfile.gettempdir()) / f"node-runtime-{server_id}"


def make_runtime_folder(server_id: str) -> int:
    """Create the server's scratch folder (mode 0700); return a descriptor holding a shared
    lock on its marker, for the server to inherit (``procs.spawn``'s keep_fds).

    The lock lives as long as some process holds that descriptor: once the server's
    processes are all gone, nobody does, which is what proves the folder's server ended.
    The folder gets its name only once the lock is held, so no start in between ever sees
    it unlocked. The caller closes the descriptor after the spawn.
    """
    final = runtime_folder(server_id)
    staging = Path(tempfile.mkdtemp(prefix=f"{final.name}.", dir=final.parent))
    try:
        fd = os.open(staging / _RUNNING_MARK, os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, 0o600)
        fcntl.flock(fd, fcntl.LOCK_SH)
        os.rename(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return fd


def remove_ended_runtime_folders() -> list[Path]:
    """Remove the scratch folders of servers that ended without a stop (a scheduler's kill of
    the whole job, a SIGKILL, a node's OOM killer): those of this user whose marker's lock no
    process holds. A folder of another user, or without the marker (made by a runtime before
    0.9.1), is left alone: nothing proves that its server ended."""
    base = Path(tempfile.gettempdir())
    removed: list[Path] = []
    try:
        entries = list(os.scandir(base))
    except OSError:
        return removed
    for entry in entries:
        if not _RUNTIME_FOLDER.fullmatch(entry.name):
            continue
        with contextlib.suppress(OSError):
            found = entry.stat(follow_symlinks=False)
            if not stat.S_ISDIR(found.st_mode) or found.st_uid != os.geteuid():
                continue
            fd = os.open(
                os.path.join(entry.path, _RUNNING_MARK), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
            )
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # its server, or a process that it started, still runs
                shutil.rmtree(entry.path, ignore_errors=True)
                removed.append(Path(entry.path))
            finally:
                os.close(fd)
    return removed


@dataclass(frozen=True)
class ServerPaths:
    """Where one model's files live on this node."""

    root: Path

    @classmethod
    def for_model(
        cls, state_dir: str, name: str, role: str = "interactive", replica: int = 0
    ) -> ServerPaths:
        root = Path(state_dir) / socket.gethostname() / model_key(name, role, replica)
        root.mkdir(parents=True, exist_ok=True)
        return cls(root)

    @property
    def lock(self) -> Path:
        return self.root / "lock"

    @property
    def state(self) -> Path:
        return self.root / "state.json"

    @property
    def log(self) -> Path:
        return self.root / "server.log"

    @property
    def watchdog_log(self) -> Path:
        return self.root / "watchdog.log"

    @property
    def last_use(self) -> Path:
        return self.root / "last_use"

    @property
    def in_flight(self) -> Path:
        return self.root / "in_flight"


# A process that keeps a server wanted while it lives: (pid, start ticks or None).
Anchor = tuple[int, int | None]


@dataclass(frozen=True)
class ServerState:
    """What state.json records about a running server."""

    server_id: str
    name: str
    framework: str
    pid: int
    pid_ticks: int | None
    pgid: int
    port: int
    spec_hash: str
    started_at: float
    ready_at: float
    idle_timeout_s: float
    stop_grace_s: float
    # Every caller's parent (the Parsl manager, i.e. the scheduler job) as (pid, start
    # ticks): the server is stopped once all of them are gone, not when the last one is.
    anchors: tuple[Anchor, ...] = ()
    watchdog_pid: int = 0
    watchdog_ticks: int | None = None
    role: str = "interactive"

    def replace(self, **changes: Any) -> ServerState:
        return ServerState(**{**asdict(self), **changes})


def read_state(paths: ServerPaths) -> ServerState | None:
    """The recorded server, or None if there is none (or the file is unreadable)."""
    try:
        data = json.loads(paths.state.read_text())
        if "anchor_pid" in data:  # written by runtime 0.1: one anchor, no start ticks
            data["anchors"] = [[data.pop("anchor_pid"), None]]
        data["anchors"] = tuple((int(pid), ticks) for pid, ticks in data.get("anchors", ()))
        return ServerState(**data)
    except (FileNotFoundError, ValueError, TypeError):
        return None


def write_state(paths: ServerPaths, state: ServerState) -> None:
    """Replace state.json atomically."""
    tmp = paths.state.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(asdict(state), indent=1, sort_keys=True))
    os.replace(tmp, paths.state)


def clear_state(paths: ServerPaths) -> None:
    with contextlib.suppress(FileNotFoundError):
        paths.state.unlink()


@contextlib.contextmanager
def exclusive_lock(path: Path, timeout_s: float, what: str) -> Iterator[None]:
    """Hold an exclusive fcntl lock on path; wait at most timeout_s for it."""
    with open(path, "a") as handle:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise LockTimeout(
                        f"waited {timeout_s:.0f} s for the lock on {what} ({path}); another "
                        "caller still holds it (a server start or stop that hangs?)"
                    ) from None
                time.sleep(0.02)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def hold_in_flight(paths: ServerPaths) -> IO[str]:
    """Mark one request in flight: a shared lock that the watchdog's probe cannot take.

    The lock dies with its holder, so a crashed worker never leaves a stale marker.
    """
    handle = open(paths.in_flight, "a")  # noqa: SIM115 - closed by release_in_flight
    fcntl.flock(handle, fcntl.LOCK_SH)
    stamp_use(paths)
    return handle


def release_in_flight(paths: ServerPaths, handle: IO[str]) -> None:
    stamp_use(paths)
    handle.close()


def any_in_flight(paths: ServerPaths) -> bool:
    """True while some request holds its in-flight marker."""
    with open(paths.in_flight, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
        return False


def stamp_use(paths: ServerPaths) -> None:
    try:
        os.utime(paths.last_use)
    except FileNotFoundError:
        paths.last_use.touch()


def idle_for(paths: ServerPaths) -> float:
    """Seconds since a request last began or ended (since the start if none has)."""
    try:
        return time.time() - paths.last_use.stat().st_mtime
    except FileNotFoundError:
        return float("inf")


def model_key(name: str, role: str = "interactive", replica: int = 0) -> str:
    """The folder a server's files live in under <state_dir>/<host>/: readable and unique.

    An interactive server's key is the model's alone; a batch server's adds its role, and a
    replica past the first its index (two replicas share a node only while one succeeds the
    other before its walltime, on a cluster whose jobs share nodes).
    """
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", name)[:80]
    key = f"{safe}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"
    key = key if role == "interactive" else f"{key}.{role}"
    return key if replica == 0 else f"{key}.r{replica}"
