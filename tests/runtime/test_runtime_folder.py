"""A server's scratch folder: its temporary files and vLLM's IPC sockets go there, and it is
removed when the server stops, so that no start leaves files in the node's temp folder."""

from __future__ import annotations

import stat
from pathlib import Path

from node_runtime.launch import environment
from node_runtime.server import stop_recorded
from node_runtime.server_files import runtime_folder
from node_runtime.spec import ServerSpec

from .fake_server import fake_server
from .local_backends import vllm_spec


def test_a_servers_temporary_files_go_to_a_folder_of_its_own(tmp_path: Path) -> None:
    spec = ServerSpec.from_dict(vllm_spec("local/tiny-llama", tmp_path, require=False))
    env = environment(spec, tmp_path, "abc123")
    scratch = runtime_folder("abc123")
    try:
        assert env["VLLM_RPC_BASE_PATH"] == env["TMPDIR"] == str(scratch)
        assert stat.S_IMODE(scratch.stat().st_mode) == 0o700
        # A socket's path must stay short: vLLM's are the folder plus a UUID.
        assert len(str(scratch / "2f1b3c4d-0000-4000-8000-123456789abc")) < 100
        told = ServerSpec.from_dict(
            vllm_spec("local/tiny-llama", tmp_path, require=False, env={"TMPDIR": "/scratch"})
        )
        assert environment(told, tmp_path, "abc123")["TMPDIR"] == "/scratch"  # the spec's
    finally:
        scratch.rmdir()


def test_the_folder_goes_with_its_server(tmp_path: Path) -> None:
    paths, state = fake_server(tmp_path)
    scratch = runtime_folder(state.server_id)
    scratch.mkdir(mode=0o700, exist_ok=True)
    (scratch / "ipc-socket-left-by-vllm").write_text("")
    stop_recorded(paths, state, "the test stops it")
    assert not scratch.exists()
