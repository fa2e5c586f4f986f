"""PBS Pro: ``qstat -f -F json``, and its one-letter job states."""

from __future__ import annotations

import json

from ..states import SchedulerState
from . import Scheduler
from .common import JobListingError, SchedulerJob, epoch, parse_job_name, run, seconds, waits

_S = SchedulerState
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
    jobs = []
    for job_id, attrs in (data.get("Jobs") or {}).items():
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
                started_at=epoch(attrs.get("stime"), "%a %b %d %H:%M:%S %Y"),
                exit_status=attrs.get("Exit_status"),
            )
        )
    return jobs


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
