"""PBS Pro: ``qstat -f -F json``, and its one-letter job states.

A queued job's ``estimated.start_time`` is the scheduler's plan for it (set when the server
runs with ``est_start_time_freq`` or the job is a top job); PBS prints it like its other
times (``Fri Dec  4 10:00:00 2026``, local time), some versions as epoch seconds. PBS gives
no queue position: the listing derives one from the same plan (see ``_positions``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from ..state_names import SchedulerState
from .base import Scheduler
from .common import JobListingError, SchedulerJob, epoch, parse_job_name, run, seconds, waits

_S = SchedulerState
_TIME_FORMAT = "%a %b %d %H:%M:%S %Y"  # PBS's ctime-style times, in the server's local time
# PBS Pro's own states, each mapped once.
PBS_STATES: dict[str, SchedulerState] = {
    "Q": _S.QUEUED,
    "W": _S.QUEUED,  # waiting for its start time
    "T": _S.QUEUED,  # in transit
    "M": _S.QUEUED,  # moved to another server
    "H": _S.HELD,
    "S": _S.HELD,  # suspended
    "U": _S.HELD,  # suspended while the workstation is busy
    "R": _S.RUNNING,
    "B": _S.RUNNING,  # an array job with subjobs started
    "E": _S.EXITING,
    "F": _S.FINISHED,
    "X": _S.FINISHED,  # a finished subjob
}


def parse_qstat_json(text: str) -> list[SchedulerJob]:
    """Parsl blocks in PBS Pro's ``qstat -f -F json`` answer (other jobs are left out)."""
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise JobListingError(f"qstat -f -F json answered text that is not JSON: {exc}") from exc
    listed = data.get("Jobs") or {}
    positions = _positions(listed)
    jobs = []
    for job_id, attrs in listed.items():
        parsed = parse_job_name(str(attrs.get("Job_Name", "")))
        if parsed is None:
            continue
        code = str(attrs.get("job_state", "?"))
        state = PBS_STATES.get(code, _S.UNKNOWN)
        resources = attrs.get("Resource_List") or {}
        used = attrs.get("resources_used") or {}
        nodect = resources.get("nodect")
        jobs.append(
            SchedulerJob(
                job_id=job_id,
                name=attrs["Job_Name"],
                endpoint=parsed[0],
                block=parsed[1],
                scheduler_state=state,
                scheduler_code=code,
                reason=attrs.get("comment") if waits(state) else None,
                queue=attrs.get("queue"),
                nodes=_hosts(attrs.get("exec_host")),
                node_count=int(nodect) if nodect is not None else None,
                walltime_used_s=seconds(used.get("walltime")),
                walltime_s=seconds(resources.get("walltime")),
                started_at=epoch(attrs.get("stime"), _TIME_FORMAT),
                exit_status=attrs.get("Exit_status"),
                estimated_start=_estimated_start(attrs) if waits(state) else None,
                queue_position=positions.get(job_id),
            )
        )
    return jobs


def _estimated_start(attrs: Mapping[str, Any]) -> float | None:
    """The job's ``estimated.start_time`` in epoch seconds; None if PBS gives none."""
    estimated = attrs.get("estimated")
    value = estimated.get("start_time") if isinstance(estimated, Mapping) else None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str) and value.strip().isdigit():
        return float(value)
    return epoch(value, _TIME_FORMAT)


def _positions(listed: Mapping[str, Any]) -> dict[str, int]:
    """Each queued job's place in its queue, in the order the scheduler plans to start them.

    Only jobs with an estimated start have a place; every user's queued jobs that qstat
    shows count (PBS lists them unless the server hides other users' jobs).
    """
    planned: dict[str, list[tuple[float, float, str]]] = {}
    for job_id, attrs in listed.items():
        if PBS_STATES.get(str(attrs.get("job_state")), _S.UNKNOWN) != _S.QUEUED:
            continue
        start = _estimated_start(attrs)
        if start is not None:
            submitted = epoch(attrs.get("qtime"), _TIME_FORMAT) or 0.0
            planned.setdefault(str(attrs.get("queue")), []).append((start, submitted, job_id))
    return {
        job_id: place
        for queue in planned.values()
        for place, (_, _, job_id) in enumerate(sorted(queue), start=1)
    }


def list_jobs() -> list[SchedulerJob]:
    """The Parsl blocks that qstat lists now (live jobs: no ``-x``)."""
    return parse_qstat_json(run(["qstat", "-f", "-F", "json"]))


def _hosts(exec_host: object) -> tuple[str, ...]:
    """Host names in PBS's ``host1/0*64+host2/0*64``, in order, once each."""
    if not isinstance(exec_host, str) or not exec_host:
        return ()
    hosts = (part.split("/")[0] for part in exec_host.split("+"))
    return tuple(dict.fromkeys(h for h in hosts if h))


SCHEDULER = Scheduler(name="pbspro", states=PBS_STATES, list_jobs=list_jobs)
