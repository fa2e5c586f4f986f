"""Servers without a model: a recorded 'server' that is a plain process group, for the
watchdog's decisions, and a small HTTP server that the runtime starts as if it were vLLM."""

from __future__ import annotations

import os
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import node_runtime
from node_runtime import procs
from node_runtime.server_files import (
    ServerPaths,
    ServerState,
    read_state,
    runtime_folder,
    write_state,
)
from node_runtime.spec import ServerSpec

from .local_backends import Spec, vllm_spec

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


# Poses as vLLM: answers every request with {} and leaves a file in its TMPDIR, as vLLM's
# sockets are; a SIGTERM ends it at once, as it does vLLM within a few seconds.
FAKE_VLLM = """\
    import http.server, os, sys
    port = int(sys.argv[sys.argv.index("--port") + 1])
    open(os.path.join(os.environ["TMPDIR"], "ipc-socket-of-vllm"), "w").close()

    class Answer(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.answer()

        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            self.answer()

        def answer(self):
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args):
            pass

    http.server.HTTPServer(("127.0.0.1", port), Answer).serve_forever()
"""


def fake_vllm_spec(tmp_path: Path, name: str = "fake-vllm", python: str = "", **extra: Any) -> Spec:
    """A vLLM spec whose python is FAKE_VLLM (written to tmp_path), or the given one."""
    if not python:
        script = tmp_path / "fake-vllm"
        script.write_text(f"#!{sys.executable}\n" + textwrap.dedent(FAKE_VLLM))
        script.chmod(0o755)
        python = str(script)
    return vllm_spec(
        name,
        tmp_path / "state",
        require=False,
        weights=str(tmp_path),
        python=python,
        start_timeout_s=30,
        stop_grace_s=2,
        **extra,
    )


def start_fake_vllm(started: list[Spec], spec: Spec) -> tuple[ServerPaths, ServerState]:
    """Start the spec's server (and its watchdog) through the runtime, noted in started."""
    started.append(spec)
    node_runtime.ensure_server(ServerSpec.from_dict(spec))
    paths = ServerPaths.for_model(spec["state_dir"], spec["name"])
    state = read_state(paths)
    assert state is not None
    assert (runtime_folder(state.server_id) / "ipc-socket-of-vllm").exists()
    return paths, state


def scratch_folders(node_tmp: Path) -> list[str]:
    """The names of the servers' scratch folders in the node's temp folder."""
    return sorted(p.name for p in node_tmp.glob("node-runtime-*"))
