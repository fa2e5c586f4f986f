"""A recorded 'server' that is a plain process group, for the watchdog's decisions."""

from __future__ import annotations

import os
import time
from pathlib import Path

from node_runtime import procs
from node_runtime.server_files import ServerPaths, ServerState, write_state

Anchors = tuple[tuple[int, int | None], ...]


def fake_server(
    tmp_path: Path,
    *,
    idle_timeout_s: float = 3600,
    anchors: Anchors | None = None,
    role: str = "interactive",
) -> tuple[ServerPaths, ServerState]:
    """A `sleep` process recorded as model 'fake' (anchored on this test by default)."""
    paths = ServerPaths.for_model(str(tmp_path), "fake", role)
    pid = procs.spawn(["sleep", "300"], env=dict(os.environ), cwd=tmp_path, log=tmp_path / "l")
    if anchors is None:
        anchors = ((os.getpid(), procs.start_ticks(os.getpid())),)
    state = ServerState(
        server_id="s1",
        name="fake",
        framework="vllm",
        pid=pid,
        pid_ticks=procs.start_ticks(pid),
        pgid=pid,
        port=procs.free_port(),
        spec_hash="h",
        started_at=time.time(),
        ready_at=time.time(),
        idle_timeout_s=idle_timeout_s,
        stop_grace_s=1.0,
        anchors=anchors,
        role=role,
    )
    write_state(paths, state)
    return paths, state
