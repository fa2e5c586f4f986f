"""Batch servers against real vLLM: apart from the interactive one, stopped with their jobs.

A scheduler job is stood for by a shell that calls the runtime and then sleeps: the caller's
parent, which the runtime records as the server's anchor. Ending the job is killing it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import node_runtime
import pytest
from node_runtime import procs
from node_runtime.server_files import ServerPaths, ServerState, read_state

from tests.waiting import wait_until

from .conftest import chat
from .local_backends import Spec

# Starts a second vLLM server for the chat model (minutes on a loaded 2-core machine).
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def _state(spec: Spec, role: str = "interactive") -> ServerState | None:
    return read_state(ServerPaths.for_model(spec["state_dir"], spec["name"], role))


class _Jobs:
    """Stand-in scheduler jobs: each runs one call of the runtime, then stays alive."""

    def __init__(self, cwd: Path) -> None:
        self.cwd = cwd
        self.started: list[subprocess.Popen[bytes]] = []

    def run(self, spec: Spec, request: dict[str, Any]) -> subprocess.Popen[bytes]:
        """Start a job whose call has answered (its answer's status was 200)."""
        code = (
            "import node_runtime, sys; "
            f"e = node_runtime.handle({spec!r}, {request!r}); "
            "sys.exit(0 if e['status'] == 200 else 1)"
        )
        done = self.cwd / f"done-{len(self.started)}"
        script = f'"{sys.executable}" -I -c "$CODE"; echo $? > "{done}"; exec sleep 600'
        job = subprocess.Popen(
            ["sh", "-c", script],
            env={**os.environ, "CODE": code},
            cwd=self.cwd,
            start_new_session=True,
        )
        self.started.append(job)
        deadline = time.monotonic() + 600
        while not done.exists() or not done.read_text().strip():
            assert job.poll() is None and time.monotonic() < deadline, "the job's call hung"
            time.sleep(0.2)
        assert done.read_text().strip() == "0", "the job's call did not answer 200"
        return job

    def end(self, job: subprocess.Popen[bytes]) -> None:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
        job.wait(timeout=10)


@pytest.fixture
def jobs(tmp_path: Path) -> Iterator[_Jobs]:
    made = _Jobs(tmp_path)
    yield made
    for job in made.started:
        made.end(job)


def _wait_for(what: str, check: Any, limit_s: float) -> None:
    wait_until(check, what, limit_s, 0.25)


def test_a_batch_server_is_its_own_and_stops_once_all_its_jobs_are_gone(
    chat_spec: Spec, chat_first_calls: list[dict[str, Any]], jobs: _Jobs
) -> None:
    interactive = _state(chat_spec)
    assert interactive is not None
    # 60 s idle: the watchdog looks every 6 s, and idleness stops nothing in this test
    batch_spec = {**chat_spec, "role": "batch", "idle_timeout_s": 60}
    try:
        first = jobs.run(batch_spec, chat(chat_spec["name"], "batch one"))
        second = jobs.run(batch_spec, chat(chat_spec["name"], "batch two"))
        batch = _state(chat_spec, "batch")
        assert batch is not None and batch.role == "batch"
        # the same model on the same host: two processes, two ports, one server per role
        assert (batch.pid, batch.port) != (interactive.pid, interactive.port)
        assert {pid for pid, _ in batch.anchors} == {first.pid, second.pid}

        jobs.end(first)
        _wait_for(
            "the watchdog drops the ended job's anchor",
            lambda: (
                [a for a, _ in getattr(_state(chat_spec, "batch"), "anchors", [])] == [second.pid]
            ),
            60,
        )
        assert procs.is_alive(batch.pid, batch.pid_ticks)  # the other job still has it

        jobs.end(second)
        _wait_for("the batch server stops", lambda: _state(chat_spec, "batch") is None, 60)
        assert not procs.is_alive(batch.pid, batch.pid_ticks)
        assert procs.group_members(batch.pgid) == []
        events = ServerPaths.for_model(chat_spec["state_dir"], chat_spec["name"], "batch").root
        assert "every caller's parent" in (events / "events.log").read_text()

        # the interactive server never noticed: same process, answering at once
        after = _state(chat_spec)
        assert after is not None and after.pid == interactive.pid
        assert procs.is_alive(interactive.pid, interactive.pid_ticks)
        envelope = node_runtime.handle(chat_spec, chat(chat_spec["name"]))
        assert (envelope["status"], envelope["server"]) == (200, "reused")
    finally:
        node_runtime.stop_server(node_runtime.ServerSpec.from_dict(batch_spec))
