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

Told to end (SIGTERM, SIGINT, SIGHUP: a scheduler ends the job, with the server, by signalling
all of its processes at once), it goes on checking, often, for a while (``ENDING_S``) before
it exits: a server that dies meanwhile is stopped as usual, which removes its scratch folder
and state, and one that lives on is left running (its next caller starts a new watchdog).

Run as: python -m node_runtime.watchdog <server folder> <server id>
"""

from __future__ import annotations

import signal
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


# How long it checks on its server after an ending signal (``procs.ENDING_SIGNALS``): under
# the 30 s that Slurm (KillWait) and PBS (kill_delay) leave between SIGTERM and SIGKILL.
ENDING_S = 20.0
_ENDING_ROUND_S = 0.2


def check_once(paths: ServerPaths, server_id: str, lock_wait_s: float = 60.0) -> tuple[bool, float]:
    """One round; returns (keep watching, seconds until the next round)."""
    with exclusive_lock(paths.lock, lock_wait_s, f"server {server_id}"):
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
    """Watch until the server is stopped or replaced, or for ENDING_S once told to end.

    The ending signals must be blocked in this thread (its starter and ``main`` do): they
    are taken between rounds, never in the middle of a stop.
    """
    paths = ServerPaths(root)
    ending_at: float | None = None
    while True:
        lock_wait_s = 60.0 if ending_at is None else max(ending_at - time.monotonic(), 0.1)
        try:
            keep, wait_s = check_once(paths, server_id, lock_wait_s)
        except LockTimeout:
            keep, wait_s = True, 1.0
        if not keep:
            return
        if ending_at is not None:
            if time.monotonic() >= ending_at:
                return
            wait_s = min(wait_s, _ENDING_ROUND_S)
        if _told_to_end(wait_s) and ending_at is None:
            ending_at = time.monotonic() + ENDING_S


def _told_to_end(wait_s: float) -> bool:
    """Sleep wait_s, or less if an ending signal comes; True if one came."""
    if not procs.CAN_TAKE_SIGNALS:  # not Linux: such a signal ends it at once
        time.sleep(wait_s)
        return False
    return signal.sigtimedwait(procs.ENDING_SIGNALS, wait_s) is not None


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(f"usage: {argv[0]} SERVER_FOLDER SERVER_ID", file=sys.stderr)
        return 2
    if procs.CAN_TAKE_SIGNALS:
        signal.pthread_sigmask(signal.SIG_BLOCK, procs.ENDING_SIGNALS)
    watch(Path(argv[1]), argv[2])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
