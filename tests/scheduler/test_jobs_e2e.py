"""The job listing against live schedulers: the local Slurm's squeue, and the PBS shim."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from node_runtime.jobs import list_jobs

from tests.waiting import wait_until

# The first test includes the local Slurm's start.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

ENDPOINT = f"local-demo{os.getpid()}"  # test sessions at once share the local Slurm
ENDPOINTS = {ENDPOINT: "demo-model"}


def block_name(block: int) -> str:
    return f"parsl.{ENDPOINT}-HighThroughputExecutor.block-{block}.{time.time()}"


def by_block(scheduler: str) -> dict[int, dict[str, Any]]:
    return {job["block"]: job for job in list_jobs(scheduler, ENDPOINTS)["jobs"]}


@pytest.fixture
def slurm_jobs(local_slurm: Path) -> Iterator[list[str]]:
    ids: list[str] = []
    yield ids
    if ids:
        subprocess.run(["scancel", *ids], check=False)


def sbatch(*args: str) -> str:
    out = subprocess.run(
        ["sbatch", "--parsable", "-o", "/dev/null", "-t", "5", *args],
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip().split(";")[0]


def test_squeue_lists_a_running_block_and_a_held_one_until_they_are_cancelled(
    slurm_jobs: list[str],
) -> None:
    slurm_jobs.append(running := sbatch("-J", block_name(3), "--wrap", "sleep 300"))
    slurm_jobs.append(held := sbatch("-H", "-J", block_name(4), "--wrap", "sleep 300"))
    slurm_jobs.append(sbatch("-J", "someone_else", "-H", "--wrap", "sleep 300"))

    jobs = wait_until(
        lambda: j if (j := by_block("slurm")).get(3, {}).get("state") == "running" else None,
        lambda: f"block 3 showing as running (listed: {by_block('slurm')})",
        timeout_s=20,
        every_s=0.2,
    )
    assert set(jobs) == {3, 4}
    assert jobs[3]["job_id"] == running
    assert jobs[3]["nodes"] == [socket.gethostname().split(".")[0]]
    assert (jobs[3]["walltime_s"], jobs[3]["model"]) == (300, "demo-model")
    assert (jobs[4]["job_id"], jobs[4]["state"]) == (held, "queued")
    assert jobs[4]["reason"] == "JobHeldUser"

    subprocess.run(["scancel", running, held], check=True)
    wait_until(
        lambda: by_block("slurm") == {},
        lambda: f"the cancelled jobs leaving the listing (still listed: {by_block('slurm')})",
        timeout_s=20,
        every_s=0.2,
    )


def test_the_pbs_shim_is_listed_like_pbs_pro(pbs_shim: Path, tmp_path: Path) -> None:
    script = tmp_path / "block.sh"
    script.write_text(
        f"#!/bin/bash\n#PBS -N {block_name(0)}\n#PBS -l walltime=00:10:00\nsleep 300\n"
    )
    job_id = subprocess.run(
        ["qsub", "-q", "by-node", "-A", "argonne_tpc", str(script)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    try:
        [job] = by_block("pbspro").values()
        assert (job["job_id"], job["state"], job["queue"]) == (job_id, "running", "by-node")
        assert (job["walltime_s"], job["nodes"]) == (600, [socket.gethostname()])
    finally:
        subprocess.run(["qdel", job_id], check=True)
    assert by_block("pbspro") == {}  # finished jobs need -x, which the listing does not ask
