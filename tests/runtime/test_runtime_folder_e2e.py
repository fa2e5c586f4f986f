"""Real vLLM puts its IPC sockets in its server's scratch folder, not the node's temp folder,
holds the folder's lock while it runs, and leaves no folder when its job ends (a scheduler's
SIGTERM to the server and its watchdog at once); test_runtime_folder.py has the other ends.
A watchdog told to end while its server lives on leaves it running (it waits ENDING_S)."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import node_runtime
import pytest
from node_runtime import procs, watchdog
from node_runtime.server_files import (
    ServerPaths,
    read_state,
    remove_ended_runtime_folders,
    runtime_folder,
)
from node_runtime.spec import ServerSpec

from tests.waiting import wait_until

from .fake_server import fake_vllm_spec, scratch_folders, start_fake_vllm
from .local_backends import Spec, vllm_spec

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def test_vllms_sockets_are_in_its_own_folder(
    chat_spec: Spec, chat_first_calls: list[dict[str, Any]]
) -> None:
    assert all(call["status"] == 200 for call in chat_first_calls)
    state = read_state(ServerPaths.for_model(chat_spec["state_dir"], chat_spec["name"]))
    assert state is not None
    scratch = runtime_folder(state.server_id)
    made = [p for p in scratch.iterdir() if p.is_socket()]
    assert made, "vLLM made no socket in its scratch folder"
    assert scratch not in remove_ended_runtime_folders()  # vLLM holds its lock
    assert scratch.exists()


def test_a_vllm_job_that_ends_leaves_no_folder(state_dir: Path) -> None:
    spec = vllm_spec("tiny-chat-job-end", state_dir)
    node_runtime.ensure_server(ServerSpec.from_dict(spec))
    paths = ServerPaths.for_model(spec["state_dir"], spec["name"])
    state = read_state(paths)
    assert state is not None
    scratch = runtime_folder(state.server_id)
    assert any(p.is_socket() for p in scratch.iterdir())
    try:
        # What Slurm does when it ends the job (scancel, walltime): SIGTERM to all of it.
        os.kill(state.watchdog_pid, signal.SIGTERM)
        os.killpg(state.pgid, signal.SIGTERM)
        wait_until(
            lambda: not scratch.exists() and read_state(paths) is None,
            lambda: f"the removal of {scratch} and of the state (still: {read_state(paths)})",
            timeout_s=watchdog.ENDING_S,
        )
    finally:
        node_runtime.stop_server(ServerSpec.from_dict(spec))


def test_a_watchdog_told_to_end_leaves_a_live_server_running(
    tmp_path: Path, node_tmp: Path, started: list[Spec]
) -> None:
    spec = fake_vllm_spec(tmp_path)
    _, state = start_fake_vllm(started, spec)
    os.kill(state.watchdog_pid, signal.SIGTERM)
    wait_until(
        lambda: not procs.is_alive(state.watchdog_pid, state.watchdog_ticks),
        "the watchdog's exit",
        timeout_s=watchdog.ENDING_S + 10,
    )
    assert procs.is_alive(state.pid, state.pid_ticks)
    assert runtime_folder(state.server_id).exists()
    assert not node_runtime.ensure_server(ServerSpec.from_dict(spec)).started  # new watchdog
    assert node_runtime.stop_server(ServerSpec.from_dict(spec))
    assert scratch_folders(node_tmp) == []
