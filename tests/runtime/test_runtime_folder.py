"""A server's scratch folder: its temporary files and vLLM's IPC sockets go there, and it goes
when the server ends, however it ends: a stop, a start that fails, the watchdog's stop, a
scheduler that signals the whole job, or a SIGKILL (then the next start on the node removes
it). The servers here are a small HTTP server posing as vLLM."""

from __future__ import annotations

import fcntl
import os
import signal
import stat
from pathlib import Path

import node_runtime
import pytest
from node_runtime import ServerStartError, procs
from node_runtime.launch import environment
from node_runtime.server import stop_recorded
from node_runtime.server_files import (
    ServerPaths,
    make_runtime_folder,
    read_state,
    remove_ended_runtime_folders,
    runtime_folder,
)
from node_runtime.spec import ServerSpec

from tests.waiting import wait_until

from .fake_server import fake_server, fake_vllm_spec, scratch_folders, start_fake_vllm
from .local_backends import Spec, vllm_spec


def test_a_servers_temporary_files_go_to_a_folder_of_its_own(
    tmp_path: Path, node_tmp: Path
) -> None:
    spec = ServerSpec.from_dict(vllm_spec("local/tiny-llama", tmp_path, require=False))
    env = environment(spec, tmp_path, "0123456789ab")
    scratch = runtime_folder("0123456789ab")
    assert scratch.parent == node_tmp
    assert env["VLLM_RPC_BASE_PATH"] == env["TMPDIR"] == str(scratch)
    # A socket's path must stay short: vLLM's are the folder plus a UUID.
    assert len(str(scratch / "2f1b3c4d-0000-4000-8000-123456789abc")) < 100
    told = ServerSpec.from_dict(
        vllm_spec("local/tiny-llama", tmp_path, require=False, env={"TMPDIR": "/scratch"})
    )
    assert environment(told, tmp_path, "0123456789ab")["TMPDIR"] == "/scratch"  # the spec's
    running = make_runtime_folder("0123456789ab")
    try:
        assert stat.S_IMODE(scratch.stat().st_mode) == 0o700
        assert remove_ended_runtime_folders() == []  # its lock is held
    finally:
        os.close(running)
    assert remove_ended_runtime_folders() == [scratch]  # nobody holds it now
    assert not scratch.exists()


def test_the_folder_goes_with_its_server(tmp_path: Path, node_tmp: Path) -> None:
    paths, state = fake_server(tmp_path)
    scratch = runtime_folder(state.server_id)
    scratch.mkdir(mode=0o700, exist_ok=True)
    (scratch / "ipc-socket-left-by-vllm").write_text("")
    stop_recorded(paths, state, "the test stops it")
    assert not scratch.exists()


def test_the_server_holds_its_folders_lock_and_a_stop_removes_the_folder(
    tmp_path: Path, node_tmp: Path, started: list[Spec]
) -> None:
    spec = fake_vllm_spec(tmp_path)
    _, state = start_fake_vllm(started, spec)
    marker = open(runtime_folder(state.server_id) / ".running")  # noqa: SIM115
    with marker, pytest.raises(BlockingIOError):
        fcntl.flock(marker, fcntl.LOCK_EX | fcntl.LOCK_NB)
    assert remove_ended_runtime_folders() == []
    assert node_runtime.stop_server(ServerSpec.from_dict(spec))
    assert scratch_folders(node_tmp) == []


def test_a_start_that_cannot_spawn_leaves_no_folder(tmp_path: Path, node_tmp: Path) -> None:
    not_a_program = tmp_path / "not-a-program"
    not_a_program.write_text("neither a shebang nor a binary")
    not_a_program.chmod(0o755)
    spec = ServerSpec.from_dict(fake_vllm_spec(tmp_path, python=str(not_a_program)))
    with pytest.raises(ServerStartError, match="could not start .*not-a-program"):
        node_runtime.ensure_server(spec)
    assert scratch_folders(node_tmp) == []
    assert read_state(ServerPaths.for_model(spec.state_dir, spec.name)) is None


def test_a_server_that_exits_while_starting_leaves_no_folder(
    tmp_path: Path, node_tmp: Path
) -> None:
    dies = tmp_path / "dies"
    dies.write_text('#!/bin/sh\ntouch "$TMPDIR/ipc-socket-of-vllm"\nexit 3\n')
    dies.chmod(0o755)
    spec = ServerSpec.from_dict(fake_vllm_spec(tmp_path, python=str(dies)))
    with pytest.raises(ServerStartError, match="exited while starting"):
        node_runtime.ensure_server(spec)
    assert scratch_folders(node_tmp) == []


def test_the_watchdogs_idle_stop_removes_the_folder(
    tmp_path: Path, node_tmp: Path, started: list[Spec]
) -> None:
    paths, _ = start_fake_vllm(started, fake_vllm_spec(tmp_path, idle_timeout_s=1))
    wait_until(lambda: read_state(paths) is None, "the watchdog's idle stop")
    assert scratch_folders(node_tmp) == []
    assert "idle for" in (paths.root / "events.log").read_text()


def test_a_job_that_ends_with_its_server_leaves_no_folder(
    tmp_path: Path, node_tmp: Path, started: list[Spec]
) -> None:
    # A scheduler ending a job (Slurm's scancel or walltime) signals all of its processes at
    # once: the watchdog too, which then stops the dying server as usual before it exits.
    paths, state = start_fake_vllm(started, fake_vllm_spec(tmp_path))
    os.kill(state.watchdog_pid, signal.SIGTERM)
    os.killpg(state.pgid, signal.SIGTERM)
    wait_until(lambda: read_state(paths) is None, "the watchdog's stop")
    assert scratch_folders(node_tmp) == []
    assert "watchdog found the server dead" in (paths.root / "events.log").read_text()
    wait_until(
        lambda: not procs.is_alive(state.watchdog_pid, state.watchdog_ticks),
        "the watchdog's exit",
    )


def test_a_server_killed_with_its_watchdog_has_its_folder_removed_by_the_next_start(
    tmp_path: Path, node_tmp: Path, started: list[Spec], monkeypatch: pytest.MonkeyPatch
) -> None:
    # SIGKILL (or the OOM killer) leaves no one to stop the server: the folder stays until
    # a start on this node, of any model and any state_dir, finds nobody holding its lock.
    _, killed = start_fake_vllm(started, fake_vllm_spec(tmp_path, name="killed"))
    _, running = start_fake_vllm(started, fake_vllm_spec(tmp_path, name="running"))
    os.kill(killed.watchdog_pid, signal.SIGKILL)
    os.killpg(killed.pgid, signal.SIGKILL)
    wait_until(lambda: procs.group_members(killed.pgid) == [], "the killed server's exit")
    older = node_tmp / "node-runtime-0a0b0c0d0e0f"  # an older runtime's: no lock, left alone
    older.mkdir()
    left = runtime_folder(killed.server_id)
    assert left.exists()
    with monkeypatch.context() as patched:
        patched.setattr(os, "geteuid", lambda: os.getuid() + 1)  # another user's: left alone
        assert remove_ended_runtime_folders() == []
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    _, third = start_fake_vllm(started, fake_vllm_spec(elsewhere, name="third"))
    assert not left.exists()
    assert scratch_folders(node_tmp) == sorted(
        [older.name, runtime_folder(running.server_id).name, runtime_folder(third.server_id).name]
    )
    for spec in started[1:]:
        assert node_runtime.stop_server(ServerSpec.from_dict(spec))
    assert scratch_folders(node_tmp) == [older.name]
