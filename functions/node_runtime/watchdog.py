"""The idle watchdog: a detached process that stops one server once nobody uses it.

A thread would die with the Parsl worker that started the server (workers are restarted and
killed on scale-in), so the watchdog is its own process in its own session, started next to
the server. It keeps nothing in memory: each round it takes the model's lock and reads the
state file, so a new watchdog can take over at any time (callers respawn a dead one).

It stops the server's process group when, with no request in flight,
- no request began or ended for the recorded idle_timeout_s, or
- every anchor is gone: the anchors are the parents of its callers (the Parsl managers of
  the jobs that used it), so that a server never outlives the scheduler jobs that used it,
  and one job's end does not stop a server that another job still uses.
Dead anchors are dropped from the state as they are found. It exits when the server it
watches is gone or replaced.

Run as: python -m node_runtime.watchdog <server folder> <server id>
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from . import procs
from .server import stop_recorded
from .server_files import (
    LockTimeout,
    ServerPaths,
    any_in_flight,
    exclusive_lock,
    idle_for,
    read_state,
    write_state,
)


def poll_interval(idle_timeout_s: float) -> float:
    """Check often enough to stop within about a tenth of the timeout (0.2 s to 30 s)."""
    return min(max(idle_timeout_s / 10.0, 0.2), 30.0)


def check_once(paths: ServerPaths, server_id: str) -> tuple[bool, float]:
    """One round; returns (keep watching, seconds until the next round)."""
    with exclusive_lock(paths.lock, 60.0, f"server {server_id}"):
        state = read_state(paths)
        if state is None or state.server_id != server_id:
            return False, 0.0
        if not procs.is_alive(state.pid, state.pid_ticks):
            stop_recorded(paths, state, "watchdog found the server dead")
            return False, 0.0
        interval = poll_interval(state.idle_timeout_s)
        if state.ready_at == 0.0 or any_in_flight(paths):
            return True, interval
        idle = idle_for(paths)
        if idle >= state.idle_timeout_s:
            stop_recorded(
                paths, state, f"idle for {idle:.1f} s (timeout {state.idle_timeout_s:g} s)"
            )
            return False, 0.0
        live = tuple(a for a in state.anchors if procs.is_alive(*a))
        if state.anchors and not live:
            gone = ", ".join(str(pid) for pid, _ in state.anchors)
            stop_recorded(paths, state, f"every caller's parent (pid {gone}) is gone")
            return False, 0.0
        if live != state.anchors:
            write_state(paths, state.replace(anchors=live))
        return True, min(interval, max(state.idle_timeout_s - idle, 0.05))


def watch(root: Path, server_id: str) -> None:
    """Watch until the server is stopped or replaced."""
    paths = ServerPaths(root)
    while True:
        try:
            keep, wait_s = check_once(paths, server_id)
        except LockTimeout:
            keep, wait_s = True, 1.0
        if not keep:
            return
        time.sleep(wait_s)


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(f"usage: {argv[0]} SERVER_FOLDER SERVER_ID", file=sys.stderr)
        return 2
    watch(Path(argv[1]), argv[2])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
