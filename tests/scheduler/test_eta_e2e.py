"""The scheduler's estimated start, read from the real local Slurm's squeue.

Two ways a block waits with a planned start: a begin time in the future (``--begin``), and
a job behind another that holds the whole node (the backfill scheduler plans its start at
the first job's time limit). Both read through list_jobs, as the router's listing does.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from node_runtime.jobs import list_jobs

from tests.waiting import wait_until

# The first test includes the local Slurm's start; its backfill pass comes every 2 s
# (scripts/local-slurm.sh's bf_interval).
pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

ENDPOINT = f"local-eta{os.getpid()}"  # test sessions at once share the local Slurm
ENDPOINTS = {ENDPOINT: "demo-model"}


def block_name(block: int) -> str:
    return f"parsl.{ENDPOINT}-HighThroughputExecutor.block-{block}.{time.time()}"


def by_block() -> dict[int, dict[str, Any]]:
    return {job["block"]: job for job in list_jobs("slurm", ENDPOINTS)["jobs"]}


@pytest.fixture
def submitted(local_slurm: Path) -> Iterator[list[str]]:
    """Job ids to cancel at the end, whatever the test's outcome."""
    ids: list[str] = []
    yield ids
    if ids:
        subprocess.run(["scancel", *ids], check=False)


def sbatch(*args: str) -> str:
    out = subprocess.run(
        ["sbatch", "--parsable", "-o", "/dev/null", *args],
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip().split(";")[0]


def test_a_begin_time_is_the_estimated_start(submitted: list[str]) -> None:
    asked = time.time() + 3600
    submitted.append(sbatch("--begin=now+1hour", "-t", "5", "-J", block_name(0), "--wrap", "true"))
    job = wait_until(lambda: by_block().get(0), "the block showing in squeue", 20, 0.5)
    assert (job["state"], job["reason"]) == ("queued", "BeginTime")
    assert job["estimated_start"] == pytest.approx(asked, abs=60)
    assert (job["started_at"], job["queue_position"]) == (None, None)


def test_a_job_behind_another_gets_a_planned_start(submitted: list[str]) -> None:
    began = time.time()
    # The first takes the whole node for at most 3 minutes; the second must wait for it.
    submitted.append(sbatch("--exclusive", "-t", "3", "-J", "eta-blocker", "--wrap", "sleep 300"))
    submitted.append(sbatch("--exclusive", "-t", "5", "-J", block_name(1), "--wrap", "true"))
    job = wait_until(
        lambda: j if (j := by_block().get(1)) and j["estimated_start"] else None,
        lambda: f"a planned start (listed: {by_block()})",
        timeout_s=90,
        every_s=0.5,
    )
    assert job["state"] == "queued" and job["reason"] in ("Resources", "Priority")
    # Planned once the blocker's time limit runs out: later still if the blocker itself
    # waits behind other jobs on the shared node (other tests, other sessions).
    assert began + 120 <= job["estimated_start"] <= began + 3600
