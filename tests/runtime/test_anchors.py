"""Server roles and anchors, without a model: folders per role, the watchdog's anchor set."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from node_runtime import ServerSpec, SpecError, procs, watchdog
from node_runtime.server_files import (
    ServerPaths,
    model_key,
    read_state,
    stamp_use,
)

from .fake_server import Anchors, fake_server
from .local_backends import vllm_spec


def test_a_batch_server_has_its_own_folder_next_to_the_interactive_one(tmp_path: Path) -> None:
    interactive = ServerPaths.for_model(str(tmp_path), "org/model:v1")
    batch = ServerPaths.for_model(str(tmp_path), "org/model:v1", "batch")
    assert interactive.root != batch.root
    assert interactive.root.parent == batch.root.parent  # same host folder
    # the interactive key is the one runtime 0.1 used, so running servers are found again
    assert interactive.root.name == model_key("org/model:v1")


def test_the_spec_reads_and_checks_its_role(tmp_path: Path) -> None:
    spec = vllm_spec("m", tmp_path, require=False)
    assert ServerSpec.from_dict(spec).role == "interactive"
    batch = ServerSpec.from_dict({**spec, "role": "batch"})
    assert batch.role == "batch"
    assert ServerSpec.from_dict(batch.to_dict()) == batch
    # the role picks the folder, not the process: the same process hash
    assert batch.process_hash() == ServerSpec.from_dict(spec).process_hash()
    with pytest.raises(SpecError, match="'role' is 'offline': use one of interactive, batch"):
        ServerSpec.from_dict({**spec, "role": "offline"})


@pytest.fixture
def jobs(tmp_path: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Stand-ins for scheduler jobs (anchors); each is killed at the end."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for job in started:
        job.kill()
        job.wait(timeout=10)


def _job(jobs: list[subprocess.Popen[bytes]]) -> tuple[int, int | None]:
    job = subprocess.Popen(["sleep", "300"])
    jobs.append(job)
    return job.pid, procs.start_ticks(job.pid)


def _server(tmp_path: Path, anchors: Anchors) -> ServerPaths:
    paths, _state = fake_server(tmp_path, anchors=anchors, role="batch")
    stamp_use(paths)  # just used: only the anchors may stop it
    return paths


def _end(jobs: list[subprocess.Popen[bytes]], index: int) -> None:
    jobs[index].kill()
    jobs[index].wait(timeout=10)


def test_a_server_stops_only_once_every_job_that_used_it_is_gone(
    tmp_path: Path, jobs: list[subprocess.Popen[bytes]]
) -> None:
    first, second = _job(jobs), _job(jobs)
    paths = _server(tmp_path, (first, second))
    server = read_state(paths)
    assert server is not None

    _end(jobs, 0)
    assert watchdog.check_once(paths, "s1")[0] is True
    kept = read_state(paths)
    assert kept is not None and kept.anchors == (second,)  # the dead anchor is dropped
    assert procs.is_alive(server.pid, server.pid_ticks)

    _end(jobs, 1)
    assert watchdog.check_once(paths, "s1") == (False, 0.0)
    assert read_state(paths) is None
    assert not procs.is_alive(server.pid, server.pid_ticks)
    assert "every caller's parent" in (paths.root / "events.log").read_text()


def test_a_reused_pid_does_not_keep_a_server(
    tmp_path: Path, jobs: list[subprocess.Popen[bytes]]
) -> None:
    pid, ticks = _job(jobs)
    assert ticks is not None
    # the anchor's pid lives, but it is another process than the recorded one
    paths = _server(tmp_path, ((pid, ticks - 1),))
    assert watchdog.check_once(paths, "s1") == (False, 0.0)
    assert read_state(paths) is None


def test_a_state_written_by_runtime_0_1_is_read_with_its_one_anchor(tmp_path: Path) -> None:
    paths = _server(tmp_path, ((os.getpid(), None),))
    data = json.loads(paths.state.read_text())
    data.pop("anchors")
    data.pop("role")
    data["anchor_pid"] = 4242
    paths.state.write_text(json.dumps(data))
    state = read_state(paths)
    assert state is not None
    assert (state.anchors, state.role) == (((4242, None),), "interactive")
    procs.stop_group(state.pgid, 1.0)


def test_each_replica_has_a_server_folder_of_its_own(tmp_path: Path) -> None:
    first = ServerPaths.for_model(str(tmp_path), "org/model:v1")
    second = ServerPaths.for_model(str(tmp_path), "org/model:v1", replica=1)
    assert first.root.name == model_key("org/model:v1")  # replica 0: as before replicas
    assert second.root != first.root and second.root.parent == first.root.parent
    spec = vllm_spec("org/model:v1", tmp_path, require=False)
    assert ServerSpec.from_dict({**spec, "replica": 3}).replica == 3
    for wrong in (-1, True, "1"):
        with pytest.raises(SpecError, match="field 'replica'"):
            ServerSpec.from_dict({**spec, "replica": wrong})
