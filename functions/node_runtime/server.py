"""One server per model, role and node: start it once, reuse it, notice its death, stop it.

The role keeps a batch job's server apart from the interactive one of the same model on the
same host (``ServerSpec.role``). Each caller's parent process is recorded as an anchor; the
watchdog stops the server once every anchor is gone (or on idle timeout).
"""

from __future__ import annotations

import contextlib
import http.client
import os
import shutil
import signal
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from . import backend, launch, procs
from .dialout.agent import DIAL_FILE
from .server_files import (
    Anchor,
    ServerPaths,
    ServerState,
    clear_state,
    exclusive_lock,
    hold_in_flight,
    make_runtime_folder,
    read_state,
    release_in_flight,
    remove_ended_runtime_folders,
    runtime_folder,
    stamp_use,
    write_state,
)
from .spec import ServerSpec

_LOG_TAIL_LINES = 40
_POLL_S = 0.25


class ServerStartError(RuntimeError):
    """The model server did not become ready; the message carries its log's last lines."""


@dataclass(frozen=True)
class ServerHandle:
    """A ready server, as one caller sees it."""

    port: int
    server_id: str
    started: bool  # True if this call started it, False if it reused a running one
    start_wait_s: float  # time spent waiting for the lock and the start
    folder: str  # the server's files (lock, state, in-flight marker) on this node


def _lock_wait_s(spec: ServerSpec) -> float:
    # A caller may queue behind a full start plus a stop of the previous server.
    return spec.start_timeout_s + 2 * spec.stop_grace_s + 30.0


@contextlib.contextmanager
def use_server(spec: ServerSpec) -> Iterator[ServerHandle]:
    """Ensure the server and hold an in-flight marker on it while the body runs.

    The marker is taken under the model's lock, so the watchdog (which also takes that lock)
    can never stop the server between the check and the request.
    """
    began = time.monotonic()
    paths = ServerPaths.for_model(spec.state_dir, spec.name, spec.role, spec.replica)
    with exclusive_lock(paths.lock, _lock_wait_s(spec), _what(spec)):
        state, started = _ensure_locked(spec, paths)
        marker = hold_in_flight(paths)
    try:
        yield ServerHandle(
            state.port, state.server_id, started, time.monotonic() - began, str(paths.root)
        )
    finally:
        release_in_flight(paths, marker)


def ensure_server(spec: ServerSpec) -> ServerHandle:
    """Make sure the spec's server runs and is ready on this node; start it if not."""
    with use_server(spec) as handle:
        return handle


def stop_server(spec: ServerSpec, reason: str = "asked to stop") -> bool:
    """Stop the model's server on this node, if one runs; True if there was one."""
    paths = ServerPaths.for_model(spec.state_dir, spec.name, spec.role, spec.replica)
    with exclusive_lock(paths.lock, _lock_wait_s(spec), _what(spec)):
        state = read_state(paths)
        if state is None:
            return False
        stop_recorded(paths, state, reason)
        return True


def stop_recorded(paths: ServerPaths, state: ServerState, reason: str) -> None:
    """Stop a recorded server's whole process group and forget it (caller holds the lock)."""
    _note(paths, f"stopping server {state.server_id} (pid {state.pid}): {reason}")
    if state.watchdog_pid != os.getpid() and procs.is_alive(
        state.watchdog_pid, state.watchdog_ticks
    ):
        # it holds no lock now (we do), and would only find the state gone on waking
        with contextlib.suppress(ProcessLookupError):
            os.kill(state.watchdog_pid, signal.SIGTERM)
    procs.stop_group(state.pgid, state.stop_grace_s)
    backend.drop_connection(state.port)
    shutil.rmtree(runtime_folder(state.server_id), ignore_errors=True)
    clear_state(paths)


def _ensure_locked(spec: ServerSpec, paths: ServerPaths) -> tuple[ServerState, bool]:
    state = read_state(paths)
    if state is not None:
        alive = procs.is_alive(state.pid, state.pid_ticks)
        if alive and state.spec_hash == spec.process_hash():
            return _refresh(spec, paths, state), False
        stop_recorded(paths, state, "spec changed" if alive else "server died")
    return _start_locked(spec, paths), True


def _refresh(spec: ServerSpec, paths: ServerPaths, state: ServerState) -> ServerState:
    """Keep the recorded timeouts, anchor and watchdog current for a reused server."""
    changes: dict[str, object] = {}
    if state.idle_timeout_s != spec.idle_timeout_s:
        changes["idle_timeout_s"] = spec.idle_timeout_s
    if state.stop_grace_s != spec.stop_grace_s:
        changes["stop_grace_s"] = spec.stop_grace_s
    anchor = caller_anchor()
    if anchor not in state.anchors:
        # dead anchors are dropped by the watchdog; a new job's is added beside the others
        changes["anchors"] = (*state.anchors, anchor)
    if not procs.is_alive(state.watchdog_pid, state.watchdog_ticks):
        pid = _spawn_watchdog(paths, state.server_id)
        changes.update(watchdog_pid=pid, watchdog_ticks=procs.start_ticks(pid))
    if changes:
        state = state.replace(**changes)
        write_state(paths, state)
    return state


def _start_locked(spec: ServerSpec, paths: ServerPaths) -> ServerState:
    _check_paths(spec)
    port = spec.port or procs.free_port()
    if spec.port and not procs.port_is_free(port):
        raise ServerStartError(
            f"model {spec.name!r}: port {port} on {_host()} is taken by another program; "
            "set the spec's port to 0 to pick a free one"
        )
    if paths.log.exists():
        os.replace(paths.log, paths.log.with_suffix(".log.1"))
    argv = launch.command(spec, port)
    _note(paths, "starting: " + " ".join(argv))
    started_at = time.time()
    server_id = uuid.uuid4().hex[:12]
    # A credential written for the previous server is not this one's (see dialout).
    (paths.root / DIAL_FILE).unlink(missing_ok=True)
    # Scratch folders of servers on this node that ended without a stop (their job killed).
    for gone in remove_ended_runtime_folders():
        _note(paths, f"removed {gone}: its server had ended")
    state = _spawn_recorded(spec, paths, argv, server_id, port, started_at)
    try:
        _wait_ready(spec, paths, state)
    except BaseException as exc:
        stop_recorded(paths, state, f"start failed: {exc.__class__.__name__}")
        if isinstance(exc, ServerStartError):
            raise
        raise ServerStartError(_failure(spec, paths, f"start interrupted ({exc!r})")) from exc
    watchdog = _spawn_watchdog(paths, state.server_id)
    state = state.replace(
        ready_at=time.time(), watchdog_pid=watchdog, watchdog_ticks=procs.start_ticks(watchdog)
    )
    write_state(paths, state)
    stamp_use(paths)
    _note(paths, f"ready on port {port} after {state.ready_at - started_at:.1f} s")
    return state


def _spawn_recorded(
    spec: ServerSpec, paths: ServerPaths, argv: list[str], server_id: str, port: int, at: float
) -> ServerState:
    """Spawn the server with its scratch folder and record it; if that fails, neither the
    process nor the folder is left behind."""
    running = make_runtime_folder(server_id)
    pid = 0
    try:
        env = launch.environment(spec, paths.root, server_id)
        try:
            pid = procs.spawn(argv, env=env, cwd=paths.root, log=paths.log, keep_fds=(running,))
        except OSError as exc:
            raise ServerStartError(
                f"model {spec.name!r} ({spec.framework}) on {_host()}: could not start "
                f"{argv[0]}: {exc}"
            ) from exc
        state = ServerState(
            server_id=server_id,
            name=spec.name,
            framework=spec.framework,
            pid=pid,
            pid_ticks=procs.start_ticks(pid),
            pgid=pid,
            port=port,
            spec_hash=spec.process_hash(),
            started_at=at,
            ready_at=0.0,
            idle_timeout_s=spec.idle_timeout_s,
            stop_grace_s=spec.stop_grace_s,
            anchors=(caller_anchor(),),
            role=spec.role,
        )
        # Recorded before the wait, so that a crash of this caller leaves a group to clean up.
        write_state(paths, state)
    except BaseException:
        if pid:
            procs.stop_group(pid, spec.stop_grace_s)
        shutil.rmtree(runtime_folder(server_id), ignore_errors=True)
        raise
    finally:
        os.close(running)  # the server holds the folder's lock from now on
    return state


def caller_anchor() -> Anchor:
    """This caller's parent (a Parsl worker's manager: the scheduler job), as an anchor."""
    parent = os.getppid()
    return parent, procs.start_ticks(parent)


def _what(spec: ServerSpec) -> str:
    return f"model {spec.name!r}" + ("" if spec.role == "interactive" else f" ({spec.role})")


def _check_paths(spec: ServerSpec) -> None:
    if not os.path.isdir(spec.weights):
        raise ServerStartError(
            f"model {spec.name!r}: the weights folder {spec.weights} does not exist on "
            f"{_host()}; fix the spec's 'weights' (copy the weights there first?)"
        )
    if not os.access(spec.python, os.X_OK):
        raise ServerStartError(
            f"model {spec.name!r}: the interpreter {spec.python} is not an executable on "
            f"{_host()}; fix the spec's 'python' to the environment that has {spec.framework}"
        )


def _wait_ready(spec: ServerSpec, paths: ServerPaths, state: ServerState) -> None:
    """Wait for /health, then for one real request; bounded by the spec's start timeout."""
    deadline = time.monotonic() + spec.start_timeout_s
    probe_path, probe_body = launch.probe_request(spec)
    healthy = False
    while True:
        if not procs.is_alive(state.pid, state.pid_ticks):
            raise ServerStartError(_failure(spec, paths, "the server exited while starting"))
        left = deadline - time.monotonic()
        if left <= 0:
            raise ServerStartError(
                _failure(spec, paths, f"not ready within start_timeout_s={spec.start_timeout_s:g}")
            )
        try:
            if not healthy:
                status, _ = backend.call(state.port, "GET", "/health", None, min(left, 5.0))
                healthy = status == 200
            if healthy:
                status, body = backend.call(state.port, "POST", probe_path, probe_body, left)
                if status == 200:
                    return
                if status != 503:
                    raise ServerStartError(
                        _failure(spec, paths, f"the first request answered {status}: {body}")
                    )
        except (OSError, http.client.HTTPException):
            backend.drop_connection(state.port)
        time.sleep(min(_POLL_S, max(deadline - time.monotonic(), 0.0)))


def _failure(spec: ServerSpec, paths: ServerPaths, what: str) -> str:
    return (
        f"model {spec.name!r} ({spec.framework}) on {_host()}: {what}. "
        f"Last lines of {paths.log}:\n{log_tail(paths.log)}"
    )


def log_tail(log: Path, lines: int = _LOG_TAIL_LINES) -> str:
    """The last lines of a log (at most about 8 KB)."""
    try:
        with open(log, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(handle.tell() - 65536, 0))
            text = handle.read().decode("utf-8", "replace")
    except FileNotFoundError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])[-8192:]


def _spawn_watchdog(paths: ServerPaths, server_id: str) -> int:
    argv = [sys.executable, "-m", "node_runtime.watchdog", str(paths.root), server_id]
    return procs.spawn(
        argv,
        env=dict(os.environ),
        cwd=paths.root,
        log=paths.watchdog_log,
        # it takes them between its rounds, even one sent while it starts up
        blocked=procs.ENDING_SIGNALS if procs.CAN_TAKE_SIGNALS else (),
    )


def _note(paths: ServerPaths, line: str) -> None:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
    with open(paths.root / "events.log", "a") as handle:
        handle.write(f"{stamp} pid={os.getpid()} {line}\n")


def _host() -> str:
    return os.uname().nodename
