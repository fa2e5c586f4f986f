"""Slurm: ``squeue`` lines in a fixed format, and its job state names.

``%S`` is a running job's start and a pending job's expected start: what the backfill
scheduler plans, or the ``--begin`` time; ``N/A`` when it has no plan yet. squeue is asked
for this user's jobs only, so it gives no queue position.
"""

from __future__ import annotations

import os
import pwd
from collections.abc import Callable

from ..state_names import SchedulerState
from .base import Scheduler
from .common import SchedulerJob, epoch, parse_job_name, run, seconds, waits

_S = SchedulerState
# Slurm's own states, each mapped once.
SLURM_STATES: dict[str, SchedulerState] = {
    "PENDING": _S.QUEUED,
    "CONFIGURING": _S.QUEUED,
    "REQUEUED": _S.QUEUED,
    "REQUEUE_FED": _S.QUEUED,
    "RESV_DEL_HOLD": _S.HELD,
    "REQUEUE_HOLD": _S.HELD,
    "SUSPENDED": _S.HELD,
    "STOPPED": _S.HELD,
    "RUNNING": _S.RUNNING,
    "RESIZING": _S.RUNNING,
    "SIGNALING": _S.RUNNING,
    "COMPLETING": _S.EXITING,
    "STAGE_OUT": _S.EXITING,
    "COMPLETED": _S.FINISHED,
    "CANCELLED": _S.FINISHED,
    "FAILED": _S.FINISHED,
    "TIMEOUT": _S.FINISHED,
    "NODE_FAIL": _S.FINISHED,
    "PREEMPTED": _S.FINISHED,
    "BOOT_FAIL": _S.FINISHED,
    "DEADLINE": _S.FINISHED,
    "OUT_OF_MEMORY": _S.FINISHED,
    "SPECIAL_EXIT": _S.FINISHED,
    "REVOKED": _S.FINISHED,
}

# Fields asked of squeue, in this order; the job name goes last (it may hold anything).
_SQUEUE_FIELDS = ("%i", "%T", "%r", "%D", "%M", "%l", "%S", "%P", "%N", "%j")
SQUEUE_FORMAT = "|".join(_SQUEUE_FIELDS)
_TIME_FORMAT = "%Y-%m-%dT%H:%M:%S"  # squeue's times, in local time ("N/A": none)


def parse_squeue(text: str, expand: Callable[[str], list[str]] | None = None) -> list[SchedulerJob]:
    """Parsl blocks in ``squeue -h -o SQUEUE_FORMAT`` output (other jobs are left out).

    ``expand`` turns a compressed node list (``nid[001-004]``) into host names; without
    it such a list is kept as one entry.
    """
    jobs = []
    for line in text.splitlines():
        cols = line.split("|", len(_SQUEUE_FIELDS) - 1)
        if len(cols) != len(_SQUEUE_FIELDS):
            continue
        job_id, code, reason, count, used, limit, start, partition, nodelist, name = cols
        parsed = parse_job_name(name)
        if parsed is None:
            continue
        state = SLURM_STATES.get(code.split()[0].rstrip("+"), _S.UNKNOWN)
        nodes: list[str] = []
        if nodelist.strip() and nodelist not in ("(null)", "n/a"):
            nodes = expand(nodelist) if expand and "[" in nodelist else nodelist.split(",")
        jobs.append(
            SchedulerJob(
                job_id=job_id,
                name=name,
                endpoint=parsed[0],
                block=parsed[1],
                scheduler_state=state,
                scheduler_code=code,
                reason=reason if waits(state) and reason != "None" else None,
                queue=partition or None,
                nodes=tuple(nodes),
                node_count=int(count) if count.isdigit() else None,
                walltime_used_s=seconds(used),
                walltime_s=seconds(limit),
                started_at=epoch(start, _TIME_FORMAT) if state != _S.QUEUED else None,
                estimated_start=epoch(start, _TIME_FORMAT) if state == _S.QUEUED else None,
            )
        )
    return jobs


def list_jobs() -> list[SchedulerJob]:
    """This user's Parsl blocks that squeue lists now (live jobs)."""
    user = pwd.getpwuid(os.getuid()).pw_name
    text = run(["squeue", "-h", "-u", user, "-o", SQUEUE_FORMAT])
    return parse_squeue(text, expand=_hostnames)


def _hostnames(nodelist: str) -> list[str]:
    return run(["scontrol", "show", "hostnames", nodelist]).split()


SCHEDULER = Scheduler(name="slurm", states=SLURM_STATES, list_jobs=list_jobs)
