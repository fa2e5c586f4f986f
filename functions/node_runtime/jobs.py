"""This bundle's jobs on the cluster's scheduler: the model each serves and how far it is.

Parsl names a block's job ``parsl.<executor label>.block-<n>.<submit time>``. A
GlobusComputeEngine labels its executor ``<engine label>-HighThroughputExecutor`` and the
rendered engines set the engine label to the endpoint's name, so a job's name gives its
endpoint; the caller maps endpoint names to the models they serve (the runtime reads no
catalog). Where the runtime's state directory is readable from here (a shared file system,
or this node), each running job is merged with the servers on its nodes.

Lifecycle states (what the router shows): ``queued`` (waiting in the scheduler; ``reason``
carries the scheduler's own words), ``starting`` (node held, server not yet ready),
``ready``, ``idle`` (no request for ``idle_after_s``, or the server already retired and the
engine is about to give the job back), ``running`` (running, but no server state readable),
``stopping``, ``stopped``, ``unknown``.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import re
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from . import procs
from .state import ServerPaths, idle_for, model_key, read_state

LISTING_VERSION = 1
SCHEDULERS = ("pbspro", "slurm", "local")
COMMAND_TIMEOUT_S = 30.0

# The scheduler's own states, each mapped once to queued/held/running/exiting/finished.
PBS_STATES = {
    "Q": "queued",
    "W": "queued",  # waiting for its start time
    "T": "queued",  # in transit
    "M": "queued",  # moved to another server
    "H": "held",
    "S": "held",  # suspended
    "U": "held",  # suspended while the workstation is busy
    "R": "running",
    "B": "running",  # an array job with subjobs started
    "E": "exiting",
    "F": "finished",
    "X": "finished",  # a finished subjob
}
SLURM_STATES = {
    "PENDING": "queued",
    "CONFIGURING": "queued",
    "REQUEUED": "queued",
    "REQUEUE_FED": "queued",
    "RESV_DEL_HOLD": "held",
    "REQUEUE_HOLD": "held",
    "SUSPENDED": "held",
    "STOPPED": "held",
    "RUNNING": "running",
    "RESIZING": "running",
    "SIGNALING": "running",
    "COMPLETING": "exiting",
    "STAGE_OUT": "exiting",
    "COMPLETED": "finished",
    "CANCELLED": "finished",
    "FAILED": "finished",
    "TIMEOUT": "finished",
    "NODE_FAIL": "finished",
    "PREEMPTED": "finished",
    "BOOT_FAIL": "finished",
    "DEADLINE": "finished",
    "OUT_OF_MEMORY": "finished",
    "SPECIAL_EXIT": "finished",
    "REVOKED": "finished",
}
_LIFECYCLE = {
    "queued": "queued",
    "held": "queued",
    "exiting": "stopping",
    "finished": "stopped",
    "unknown": "unknown",
}

_PARSL_NAME = re.compile(
    r"^parsl\.(?P<label>.+?)(?:-[A-Za-z]*Executor)?\.block-(?P<block>\d+)\.\d+(?:\.\d+)?$"
)
# Fields asked of squeue, in this order; the job name goes last (it may hold anything).
_SQUEUE_FIELDS = ("%i", "%T", "%r", "%D", "%M", "%l", "%S", "%P", "%N", "%j")
SQUEUE_FORMAT = "|".join(_SQUEUE_FIELDS)


class JobListingError(RuntimeError):
    """The scheduler could not be asked, or answered something unreadable."""


@dataclass(frozen=True, kw_only=True)
class SchedulerJob:
    """One job as the scheduler reports it, with the endpoint its name gives."""

    job_id: str
    name: str
    endpoint: str
    block: int
    scheduler_state: str  # queued, held, running, exiting, finished or unknown
    scheduler_code: str  # the scheduler's own word: Q, R, PENDING, ...
    reason: str | None  # why a queued or held job waits, in the scheduler's words
    queue: str | None
    nodes: tuple[str, ...]
    node_count: int | None
    walltime_used_s: int | None
    walltime_s: int | None
    started_at: float | None  # epoch seconds; None until it runs
    exit_status: int | None = None


@dataclass(frozen=True, kw_only=True)
class NodeServer:
    """One model server that the runtime's state file records on a node."""

    node: str
    model: str
    framework: str
    state: str  # starting, ready or idle
    port: int
    started_at: float
    ready_at: float | None
    idle_s: float | None
    idle_timeout_s: float


@dataclass(frozen=True)
class NodeServers:
    """What the state directory says about one node: servers, and models seen retired."""

    running: list[NodeServer] = field(default_factory=list)
    last_use: dict[str, float] = field(default_factory=dict)  # model key -> mtime


def parse_job_name(name: str) -> tuple[str, int] | None:
    """The endpoint name and block number in a Parsl block's job name, or None."""
    match = _PARSL_NAME.match(name)
    if match is None:
        return None
    return match["label"], int(match["block"])


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
        state = PBS_STATES.get(code, "unknown")
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
                reason=attrs.get("comment") if state in ("queued", "held") else None,
                queue=attrs.get("queue"),
                nodes=_pbs_hosts(attrs.get("exec_host")),
                node_count=int(nodect) if nodect is not None else None,
                walltime_used_s=_seconds(used.get("walltime")),
                walltime_s=_seconds(resources.get("walltime")),
                started_at=_epoch(attrs.get("stime"), "%a %b %d %H:%M:%S %Y"),
                exit_status=attrs.get("Exit_status"),
            )
        )
    return jobs


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
        state = SLURM_STATES.get(code.split()[0].rstrip("+"), "unknown")
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
                reason=reason if state in ("queued", "held") and reason != "None" else None,
                queue=partition or None,
                nodes=tuple(nodes),
                node_count=int(count) if count.isdigit() else None,
                walltime_used_s=_seconds(used),
                walltime_s=_seconds(limit),
                started_at=_epoch(start, "%Y-%m-%dT%H:%M:%S") if state != "queued" else None,
            )
        )
    return jobs


def read_node_servers(state_dir: str, node: str, idle_after_s: float) -> NodeServers:
    """The servers the runtime records for one node under state_dir (see state.py)."""
    servers = NodeServers()
    local = node.split(".")[0] == socket.gethostname().split(".")[0]
    for host_dir in _host_dirs(Path(state_dir), node):
        for model_dir in sorted(p for p in host_dir.iterdir() if p.is_dir()):
            paths = ServerPaths(model_dir)
            with contextlib.suppress(OSError):
                servers.last_use[model_dir.name] = paths.last_use.stat().st_mtime
            state = read_state(paths)
            if state is None or (local and not procs.is_alive(state.pid, state.pid_ticks)):
                continue  # a dead server's file stays until the next call; seen only here
            idle = idle_for(paths) if state.ready_at else None
            servers.running.append(
                NodeServer(
                    node=node,
                    model=state.name,
                    framework=state.framework,
                    state=_server_state(state.ready_at, idle, idle_after_s),
                    port=state.port,
                    started_at=state.started_at,
                    ready_at=state.ready_at or None,
                    idle_s=None if idle is None or idle == float("inf") else round(idle, 1),
                    idle_timeout_s=state.idle_timeout_s,
                )
            )
    return servers


def list_jobs(
    scheduler: str,
    endpoints: Mapping[str, str],
    state_dir: str | None = None,
    *,
    idle_after_s: float = 60.0,
) -> dict[str, Any]:
    """This bundle's live jobs (those of ``endpoints``: endpoint name -> model), with states.

    Live means what the scheduler lists by default: queued, held, running or exiting;
    finished jobs drop out (PBS Pro's ``qstat`` without ``-x``, Slurm's ``squeue``).

    Returns ``{"listing_version", "scheduler", "listed_at", "jobs": [...]}``; each job is a
    SchedulerJob as a dict plus ``model``, ``state`` (the lifecycle state) and ``servers``
    (NodeServer dicts of that model on the job's nodes). With ``scheduler="local"`` (no
    scheduler: the engine's LocalProvider) each server found on this host is one entry
    with ``job_id`` None.
    """
    if scheduler not in SCHEDULERS:
        raise JobListingError(
            f"unknown scheduler {scheduler!r}: use one of {', '.join(SCHEDULERS)}"
        )
    readable = state_dir is not None and os.path.isdir(state_dir)
    if scheduler == "local":
        entries = _local_entries(endpoints, state_dir if readable else None, idle_after_s)
    else:
        found = _pbs_jobs() if scheduler == "pbspro" else _slurm_jobs()
        entries = [
            _entry(job, endpoints[job.endpoint], state_dir if readable else None, idle_after_s)
            for job in found
            if job.endpoint in endpoints
        ]
    return {
        "listing_version": LISTING_VERSION,
        "scheduler": scheduler,
        "listed_at": time.time(),
        "jobs": entries,
    }


def _entry(
    job: SchedulerJob, model: str, state_dir: str | None, idle_after_s: float
) -> dict[str, Any]:
    servers: list[NodeServer] = []
    retired = False
    if state_dir is not None and job.scheduler_state == "running":
        for node in job.nodes:
            seen = read_node_servers(state_dir, node, idle_after_s)
            servers += [s for s in seen.running if s.model == model]
            used = seen.last_use.get(model_key(model))
            retired |= used is not None and used >= (job.started_at or float("inf"))
    return {
        **_plain(asdict(job)),
        "model": model,
        "state": _job_state(job.scheduler_state, servers, state_dir is not None, retired),
        "servers": [asdict(s) for s in servers],
    }


def _local_entries(
    endpoints: Mapping[str, str], state_dir: str | None, idle_after_s: float
) -> list[dict[str, Any]]:
    if state_dir is None:
        return []
    by_model = {model: name for name, model in endpoints.items()}
    node = socket.gethostname()
    entries = []
    for server in read_node_servers(state_dir, node, idle_after_s).running:
        if server.model not in by_model:
            continue
        entries.append(
            {
                "job_id": None,
                "name": None,
                "endpoint": by_model[server.model],
                "block": None,
                "scheduler_state": "running",
                "scheduler_code": "local",
                "reason": None,
                "queue": None,
                "nodes": [node],
                "node_count": 1,
                "walltime_used_s": None,
                "walltime_s": None,
                "started_at": server.started_at,
                "exit_status": None,
                "model": server.model,
                "state": server.state,
                "servers": [asdict(server)],
            }
        )
    return entries


def _job_state(
    scheduler_state: str, servers: Sequence[NodeServer], readable: bool, retired: bool
) -> str:
    if scheduler_state != "running":
        return _LIFECYCLE[scheduler_state]
    if not readable:
        return "running"
    states = {s.state for s in servers}
    for state in ("ready", "starting", "idle"):
        if state in states:
            return state
    return "idle" if retired else "starting"


def _server_state(ready_at: float, idle: float | None, idle_after_s: float) -> str:
    if not ready_at:
        return "starting"
    return "idle" if idle is not None and idle >= idle_after_s else "ready"


def _pbs_jobs() -> list[SchedulerJob]:
    return parse_qstat_json(_run(["qstat", "-f", "-F", "json"]))


def _slurm_jobs() -> list[SchedulerJob]:
    user = _user()
    text = _run(["squeue", "-h", "-u", user, "-o", SQUEUE_FORMAT])
    return parse_squeue(text, expand=_slurm_hostnames)


def _slurm_hostnames(nodelist: str) -> list[str]:
    return _run(["scontrol", "show", "hostnames", nodelist]).split()


def _run(argv: list[str]) -> str:
    """Run a scheduler client command; its stdout, or a JobListingError that says why."""
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S, check=False
        )
    except FileNotFoundError:
        raise JobListingError(
            f"`{argv[0]}` is not on PATH on {socket.gethostname()}: run the job listing "
            "where the scheduler's client commands are (the login node's endpoint)"
        ) from None
    except subprocess.TimeoutExpired:
        raise JobListingError(
            f"`{' '.join(argv)}` did not answer within {COMMAND_TIMEOUT_S:g} s"
        ) from None
    if done.returncode != 0:
        raise JobListingError(
            f"`{' '.join(argv)}` failed with exit status {done.returncode}: "
            f"{done.stderr.strip()[-2000:]}"
        )
    return done.stdout


def _user() -> str:
    return pwd.getpwuid(os.getuid()).pw_name


def _host_dirs(state_dir: Path, node: str) -> list[Path]:
    """Host folders under state_dir for node, whether named short or fully qualified."""
    short = node.split(".")[0]
    try:
        return sorted(
            p for p in state_dir.iterdir() if p.is_dir() and p.name.split(".")[0] == short
        )
    except OSError:
        return []


def _pbs_hosts(exec_host: object) -> tuple[str, ...]:
    """Host names in PBS's ``host1/0*64+host2/0*64``, in order, once each."""
    if not isinstance(exec_host, str) or not exec_host:
        return ()
    hosts = (part.split("/")[0] for part in exec_host.split("+"))
    return tuple(dict.fromkeys(h for h in hosts if h))


def _seconds(value: object) -> int | None:
    """Seconds in ``[D-]HH:MM:SS``, ``MM:SS`` or a number; None for UNLIMITED, N/A, ..."""
    if isinstance(value, int | float):
        return int(value)
    if not isinstance(value, str) or not re.fullmatch(r"(\d+-)?\d+(:\d+){0,2}", value):
        return None
    days, _, rest = value.rpartition("-")
    total = 0
    for part in rest.split(":"):
        total = total * 60 + int(part)
    return total + int(days or 0) * 86400


def _epoch(value: object, fmt: str) -> float | None:
    if not isinstance(value, str):
        return None
    try:
        return time.mktime(time.strptime(value, fmt))
    except ValueError:
        return None


def _plain(data: dict[str, Any]) -> dict[str, Any]:
    """Tuples to lists, so that the dict reads the same after a JSON round trip."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in data.items()}


def list_bundle_jobs(
    expected_runtime_version: str,
    scheduler: str,
    endpoints: dict[str, str],
    state_dir: str | None = None,
) -> dict[str, object]:
    """Registered entry point: list_jobs() after the same version check as ``serve``.

    Self-contained (source-serialized): it imports the runtime installed on the node that
    runs it, which must have the scheduler's client commands (the login node's endpoint).
    """
    import node_runtime
    from node_runtime import jobs

    if node_runtime.__version__ != expected_runtime_version:
        raise RuntimeError(
            f"node runtime version mismatch: the router expects {expected_runtime_version}, "
            f"but this node's environment has inference-node-runtime "
            f"{node_runtime.__version__} ({node_runtime.__file__}); install the matching "
            "version into the cluster environment (make deploy) or re-register the functions"
        )
    return jobs.list_jobs(scheduler, endpoints, state_dir)
