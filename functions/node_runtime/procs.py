"""Processes and process groups: identity checks that survive PID reuse, and clean stops."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

# Servers and watchdogs this process started; kept so that they can be reaped (no zombies
# that look alive to a PID check) while this process lives.
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}

# Signals that ask a process to end: a scheduler's at a job's end, ours at a stop.
ENDING_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
# Whether a process can take such a signal at a time of its choosing (sigtimedwait; Linux).
CAN_TAKE_SIGNALS = hasattr(signal, "sigtimedwait")


def spawn(
    argv: list[str],
    *,
    env: dict[str, str],
    cwd: Path,
    log: Path,
    keep_fds: tuple[int, ...] = (),
    blocked: tuple[signal.Signals, ...] = (),
) -> int:
    """Start argv in a new session (its own process group), output appended to log; of this
    process's descriptors it inherits keep_fds only. It starts with the blocked signals
    blocked (pending until it takes them), so that none ends it while it starts up."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, blocked) if blocked else None
    try:
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=cwd,
                env=env,
                start_new_session=True,
                close_fds=True,
                pass_fds=keep_fds,
            )
    finally:
        if old is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)
    _CHILDREN[proc.pid] = proc
    return proc.pid


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name, or None if there is no such pid."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    except OSError:
        return None
    return text[text.rfind(")") + 2 :].split()


def _reap(pid: int) -> None:
    proc = _CHILDREN.get(pid)
    if proc is not None and proc.poll() is not None:
        del _CHILDREN[pid]


def start_ticks(pid: int) -> int | None:
    """The process's start time in clock ticks since boot; tells a PID from its reuse."""
    fields = _stat_fields(pid)
    return int(fields[19]) if fields is not None else None


def is_alive(pid: int, ticks: int | None = None) -> bool:
    """True while pid runs (not a zombie) and, if ticks is given, is the same process."""
    if pid <= 0:
        return False
    _reap(pid)
    fields = _stat_fields(pid)
    if fields is None:
        if Path("/proc/self/stat").exists():
            return False
        try:  # no procfs (not Linux): fall back to a signal probe
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    if fields[0] in ("Z", "X"):
        return False
    return ticks is None or int(fields[19]) == ticks


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes whose process group is pgid."""
    if not Path("/proc/self/stat").exists():
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return []
        return [pgid]
    members = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(int(entry.name))
        if fields is not None and fields[0] not in ("Z", "X") and int(fields[2]) == pgid:
            members.append(int(entry.name))
    return members


def stop_group(pgid: int, grace_s: float) -> bool:
    """SIGTERM the whole process group, SIGKILL what is left after grace_s; True if none left."""
    if pgid <= 1 or pgid == os.getpgrp():
        raise ValueError(f"refusing to signal process group {pgid}")
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, sig)
        deadline = time.monotonic() + wait_s
        while True:
            for pid in list(_CHILDREN):
                _reap(pid)
            if not group_members(pgid):
                return True
            if time.monotonic() >= deadline:
                break
            time.sleep(0.05)
    return not group_members(pgid)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def port_is_free(port: int) -> bool:
    """True if a server could bind 127.0.0.1:port now (as servers do, with SO_REUSEADDR)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True
