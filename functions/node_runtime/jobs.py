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
``stopping``, ``stopped``, ``unknown`` (``JobState``). Each scheduler's module
(``node_runtime.schedulers``) asks its scheduler and maps its states. A queued job carries
the scheduler's ``estimated_start`` (epoch seconds) and ``queue_position`` where it gives
them, None otherwise.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from . import procs, schedulers
from .schedulers import JobListingError, SchedulerJob, parse_job_name
from .server_files import ServerPaths, idle_for, model_key, read_state
from .state_names import JobState, ModelState, SchedulerState

__all__ = [
    "LISTING_VERSION",
    "JobListingError",
    "NodeServer",
    "NodeServers",
    "SchedulerJob",
    "list_bundle_jobs",
    "list_jobs",
    "parse_job_name",
    "read_node_servers",
]

LISTING_VERSION = 1

# A job the scheduler does not report running has the lifecycle state its own state gives.
_LIFECYCLE = {
    SchedulerState.QUEUED: JobState.QUEUED,
    SchedulerState.HELD: JobState.QUEUED,
    SchedulerState.EXITING: JobState.STOPPING,
    SchedulerState.FINISHED: JobState.STOPPED,
    SchedulerState.UNKNOWN: JobState.UNKNOWN,
}


@dataclass(frozen=True, kw_only=True)
class NodeServer:
    """One model server that the runtime's state file records on a node."""

    node: str
    model: str
    framework: str
    state: ModelState  # starting, ready or idle
    port: int
    started_at: float
    ready_at: float | None
    idle_s: float | None
    idle_timeout_s: float
    role: str = "interactive"  # a batch job's own server says "batch"


@dataclass(frozen=True)
class NodeServers:
    """What the state directory says about one node: servers, and models seen retired."""

    running: list[NodeServer] = field(default_factory=list)
    last_use: dict[str, float] = field(default_factory=dict)  # model key -> mtime


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
                    role=state.role,
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
    chosen = schedulers.scheduler(scheduler)
    readable = state_dir is not None and os.path.isdir(state_dir)
    if chosen.list_jobs is None:  # no scheduler: this host's servers stand for the jobs
        entries = _local_entries(endpoints, state_dir if readable else None, idle_after_s)
    else:
        found = chosen.list_jobs()
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
    if state_dir is not None and job.scheduler_state == SchedulerState.RUNNING:
        for node in job.nodes:
            seen = read_node_servers(state_dir, node, idle_after_s)
            # The listed endpoints serve users; a batch job's own server is not theirs.
            servers += [s for s in seen.running if s.model == model and s.role == "interactive"]
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
        if server.model not in by_model or server.role != "interactive":
            continue
        entries.append(
            {
                "job_id": None,
                "name": None,
                "endpoint": by_model[server.model],
                "block": None,
                "scheduler_state": SchedulerState.RUNNING,
                "scheduler_code": "local",
                "reason": None,
                "queue": None,
                "nodes": [node],
                "node_count": 1,
                "walltime_used_s": None,
                "walltime_s": None,
                "started_at": server.started_at,
                "exit_status": None,
                "estimated_start": None,
                "queue_position": None,
                "model": server.model,
                "state": JobState(server.state.value),
                "servers": [asdict(server)],
            }
        )
    return entries


def _job_state(
    scheduler_state: SchedulerState, servers: Sequence[NodeServer], readable: bool, retired: bool
) -> JobState:
    if scheduler_state != SchedulerState.RUNNING:
        return _LIFECYCLE[scheduler_state]
    if not readable:
        return JobState.RUNNING
    states = {s.state for s in servers}
    for state in (ModelState.READY, ModelState.STARTING, ModelState.IDLE):
        if state in states:
            return JobState(state.value)
    return JobState.IDLE if retired else JobState.STARTING


def _server_state(ready_at: float, idle: float | None, idle_after_s: float) -> ModelState:
    if not ready_at:
        return ModelState.STARTING
    return ModelState.IDLE if idle is not None and idle >= idle_after_s else ModelState.READY


def _host_dirs(state_dir: Path, node: str) -> list[Path]:
    """Host folders under state_dir for node, whether named short or fully qualified."""
    short = node.split(".")[0]
    try:
        return sorted(
            p for p in state_dir.iterdir() if p.is_dir() and p.name.split(".")[0] == short
        )
    except OSError:
        return []


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
