"""The scheduler's estimated start and queue position, from captured output shapes.

No scheduler runs here: tests/fixtures/qstat/estimated.json is PBS Pro's `qstat -f -F json`
shape with `estimated.start_time`; squeue lines are literal (`%S` is a pending job's
expected start). The live Slurm test is in test_eta_e2e.py.
"""

from __future__ import annotations

import json
import os
from datetime import datetime
from pathlib import Path

import pytest
from node_runtime.jobs import list_jobs
from node_runtime.schedulers.pbspro import parse_qstat_json
from node_runtime.schedulers.slurm import parse_squeue

from .test_jobs import ENDPOINTS, LLAMA_8B, LLAMA_405B, qstat_fixture

BLOCK = "parsl.polaris-llama-HighThroughputExecutor.block-0.1732700000.1"


def local(year: int, month: int, day: int, hour: int, minute: int, second: int) -> float:
    """Epoch seconds of a local time, as the scheduler prints it."""
    return datetime(year, month, day, hour, minute, second).timestamp()  # naive: local


@pytest.fixture
def fake_qstat(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A `qstat` on PATH that prints the file this returns."""
    answer = tmp_path / "answer.json"
    script = tmp_path / "qstat"
    script.write_text(f"#!/bin/sh\ncat {answer}\n")
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    return answer


def test_pbs_gives_the_estimated_start_and_the_place_in_its_queue() -> None:
    jobs = {job.endpoint: job for job in parse_qstat_json(qstat_fixture("estimated.json"))}
    assert set(jobs) == {LLAMA_8B, LLAMA_405B}  # the others' jobs count only for the order
    small = jobs[LLAMA_8B]
    # "Fri Dec  4 10:00:00 2026": ctime's padded day.
    assert small.estimated_start == local(2026, 12, 4, 10, 0, 0)
    # alice's job is planned at 09:30, before it; bob's at 12:15 comes after.
    assert small.queue_position == 2
    assert (small.scheduler_state, small.started_at) == ("queued", None)
    big = jobs[LLAMA_405B]
    assert (big.estimated_start, big.queue_position) == (None, None)  # no plan for it yet


def test_the_single_queued_capture_has_its_estimate() -> None:
    [job] = parse_qstat_json(qstat_fixture("queued.json"))
    assert job.estimated_start == local(2024, 11, 27, 21, 40, 0)
    assert job.queue_position == 1


def test_running_and_held_pbs_jobs_have_no_estimate() -> None:
    jobs = parse_qstat_json(qstat_fixture("several.json"))
    for job in jobs:
        if job.scheduler_state != "queued":
            assert (job.estimated_start, job.queue_position) == (None, None), job.job_id


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("Fri Dec  4 10:00:00 2026", local(2026, 12, 4, 10, 0, 0)),
        ("Fri Dec 11 10:00:00 2026", local(2026, 12, 11, 10, 0, 0)),
        (1796378400, 1796378400.0),  # some versions print epoch seconds
        ("1796378400", 1796378400.0),
        ("soon", None),
        (None, None),
    ],
)
def test_pbs_estimated_start_time_forms(value: object, expected: float | None) -> None:
    capture = json.loads(qstat_fixture("queued.json"))
    [attrs] = capture["Jobs"].values()
    attrs["estimated"]["start_time"] = value
    [job] = parse_qstat_json(json.dumps(capture))
    assert job.estimated_start == expected


def test_a_pbs_job_without_an_estimated_block_has_none() -> None:
    capture = json.loads(qstat_fixture("queued.json"))
    [attrs] = capture["Jobs"].values()
    del attrs["estimated"]
    [job] = parse_qstat_json(json.dumps(capture))
    assert (job.estimated_start, job.queue_position) == (None, None)


def test_squeue_start_time_is_a_pending_jobs_estimate() -> None:
    text = "\n".join(
        [
            f"77|PENDING|Resources|1|0:00|1-00:00:00|2026-12-04T10:00:00|gpu||{BLOCK}",
            f"78|PENDING|Priority|1|0:00|1-00:00:00|N/A|gpu||{BLOCK}",
            f"79|RUNNING|None|1|1:00|1-00:00:00|2026-12-04T09:00:00|gpu|nid001|{BLOCK}",
        ]
    )
    planned, unknown, running = parse_squeue(text)
    assert (planned.estimated_start, planned.started_at) == (local(2026, 12, 4, 10, 0, 0), None)
    assert unknown.estimated_start is None  # N/A: the scheduler has no plan yet
    assert (running.estimated_start, running.started_at) == (None, local(2026, 12, 4, 9, 0, 0))
    assert {job.queue_position for job in (planned, unknown, running)} == {None}


def test_the_listing_carries_estimate_and_position(fake_qstat: Path) -> None:
    fake_qstat.write_text(qstat_fixture("estimated.json"))
    listing = list_jobs("pbspro", ENDPOINTS)
    json.dumps(listing)  # travels as a task result
    jobs = {job["endpoint"]: job for job in listing["jobs"]}
    assert jobs[LLAMA_8B]["estimated_start"] == local(2026, 12, 4, 10, 0, 0)
    assert jobs[LLAMA_8B]["queue_position"] == 2
    assert jobs[LLAMA_8B]["state"] == "queued"
    assert (jobs[LLAMA_405B]["estimated_start"], jobs[LLAMA_405B]["queue_position"]) == (
        None,
        None,
    )


def test_local_entries_have_the_same_fields(tmp_path: Path) -> None:
    import socket

    from .test_jobs import _record_server

    _record_server(tmp_path, socket.gethostname(), "tiny-llama", ready=True, idle_s=1)
    [entry] = list_jobs("local", {"local-tiny-llama": "tiny-llama"}, str(tmp_path))["jobs"]
    assert (entry["estimated_start"], entry["queue_position"]) == (None, None)
