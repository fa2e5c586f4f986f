"""What a caller may see: the models, every cluster's endpoints, and the scheduler's jobs.

/jobs and /list-endpoints carry each waiting model's estimate (``router.fleet.estimates``):
``estimated_start``, ``estimated_ready_at`` (ISO 8601, UTC), ``estimated_wait_s``,
``estimate_basis``, ``queue_position`` and ``last_start_s``; None where unknown.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from node_runtime.state_names import JobState
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute

from inference_bundle.router.api.common import authenticate, bound_route, require_cluster
from inference_bundle.router.auth import Caller, may_use
from inference_bundle.router.dataplane.connections import server_label
from inference_bundle.router.dispatch.job_lookup import job_of
from inference_bundle.router.fleet.estimates import estimate
from inference_bundle.router.fleet.replicas import Phase
from inference_bundle.router.fleet.states import ModelState
from inference_bundle.router.routes import Route
from inference_bundle.router.service import RouterService


def routes(service: RouterService) -> list[BaseRoute]:
    """The listings under a cluster and framework, across clusters, and under /v1."""
    framework = "/resource_server/{cluster}/{framework}/v1/models"
    return [
        bound_route(framework, models, service, ["GET"]),
        bound_route("/resource_server/{cluster}/jobs", jobs, service, ["GET"]),
        bound_route("/resource_server/list-endpoints", list_endpoints, service, ["GET"]),
        bound_route("/v1/models", models, service, ["GET"]),
    ]


async def models(service: RouterService, request: Request) -> Response:
    """OpenAI's model list: the enabled models the caller may use, with their states."""
    caller = await authenticate(service.authenticator, request)
    cluster = request.path_params.get("cluster")
    framework = request.path_params.get("framework")
    if cluster is not None:
        require_cluster(service.table, cluster)
    data = [
        {
            "id": route.model,
            "object": "model",
            "created": 0,
            "owned_by": route.cluster,
            "framework": route.framework,
            "state": service.tracker.status(route.endpoint_name).state.value,
        }
        for route in service.table.routes(cluster)
        if route.entry.endpoint.enabled
        and (framework is None or route.framework == framework)
        and _allowed(service, caller, route)
    ]
    return JSONResponse({"object": "list", "data": data})


async def list_endpoints(service: RouterService, request: Request) -> Response:
    """Every cluster's frameworks, their URLs and models (disabled ones with the reason)."""
    caller = await authenticate(service.authenticator, request)
    clusters: dict[str, Any] = {}
    listed: dict[str, list[dict[str, Any]] | None] = {}
    for route in service.table.routes():
        if not _allowed(service, caller, route):
            continue
        if route.cluster not in listed:  # once a cluster; None when it does not answer
            listed[route.cluster] = await service.dispatcher.cluster_jobs(route.cluster)
        base = f"/resource_server/{route.cluster}"
        cluster = clusters.setdefault(route.cluster, {"base_url": base, "frameworks": {}})
        framework = cluster["frameworks"].setdefault(
            route.framework,
            {
                "models": [],
                "endpoints": {
                    p.removeprefix("/v1/").replace("/", "_"): f"{base}/{route.framework}{p}"
                    for p in route.framework_info.paths
                },
            },
        )
        framework["models"].append(_model_entry(service, route, listed[route.cluster]))
    maintenance = service.dispatcher.maintenance
    for name, cluster in clusters.items():  # its maintenance window, under way or next
        if maintenance is not None and (notice := maintenance.notice(name)) is not None:
            cluster["maintenance"] = notice
    return JSONResponse({"clusters": clusters})


async def jobs(service: RouterService, request: Request) -> Response:
    """A cluster's scheduler jobs, grouped running, queued and others."""
    caller = await authenticate(service.authenticator, request)
    cluster = request.path_params["cluster"]
    require_cluster(service.table, cluster)
    listing = await service.job_listing.jobs(cluster)
    return JSONResponse({"cluster": cluster, **_group_jobs(service, caller, cluster, listing)})


def _allowed(service: RouterService, caller: Caller, route: Route) -> bool:
    return may_use(caller, service.settings.auth, route.cluster, route.entry.endpoint.groups)


# The node runtime's job states, grouped as the guide's /jobs shows them.
_JOB_GROUPS = {
    JobState.QUEUED: "queued",
    JobState.STARTING: "running",
    JobState.READY: "running",
    JobState.IDLE: "running",
    JobState.RUNNING: "running",
    JobState.STOPPING: "others",
}


def _group_jobs(
    service: RouterService, caller: Caller, cluster: str, listing: dict[str, Any]
) -> dict[str, list[dict[str, Any]]]:
    """Scheduler jobs with their models' states, plus models waiting for a job to show."""
    routes = {r.endpoint_name: r for r in service.table.routes(cluster)}
    grouped: dict[str, list[dict[str, Any]]] = {"running": [], "queued": [], "others": []}
    listed = set()
    for job in listing.get("jobs", []):
        route = routes.get(job.get("endpoint") or "")
        if route is None or not _allowed(service, caller, route):
            continue
        listed.add(route.endpoint_name)
        status = service.tracker.status(route.endpoint_name)
        eta = estimate(status, job, time.time())
        grouped[_JOB_GROUPS.get(job["state"], "others")].append(
            {
                "model": route.model,
                "endpoint": route.endpoint_name,
                "job_id": job.get("job_id"),
                "job_state": job.get("scheduler_state"),
                "model_status": job["state"],
                "reason": job.get("reason"),
                "nodes": job.get("nodes", []),
                "walltime_used_s": job.get("walltime_used_s"),
                "walltime_s": job.get("walltime_s"),
                "requests_in_flight": status.in_flight,
                "last_used": _iso(status.last_used),
                "connected_servers": _servers(service, route),
                "replicas": _replicas(service, route, listing.get("jobs")),
                **eta.fields(),
            }
        )
    for name, route in routes.items():
        status = service.tracker.status(name)
        waiting = status.state in (ModelState.QUEUED, ModelState.STARTING)
        if name in listed or not waiting or not _allowed(service, caller, route):
            continue
        grouped["queued" if status.state == ModelState.QUEUED else "running"].append(
            {
                "model": route.model,
                "endpoint": name,
                "job_id": None,
                "job_state": None,
                "model_status": status.state.value,
                "reason": "requested; waiting for the scheduler",
                "nodes": [],
                "walltime_used_s": None,
                "walltime_s": None,
                "requests_in_flight": status.in_flight,
                "last_used": _iso(status.last_used),
                "connected_servers": _servers(service, route),
                "replicas": _replicas(service, route, listing.get("jobs")),
                **estimate(status, None, time.time()).fields(),
            }
        )
    return grouped


def _model_entry(
    service: RouterService, route: Route, jobs: list[dict[str, Any]] | None
) -> dict[str, Any]:
    ep = route.entry.endpoint
    status = service.tracker.status(route.endpoint_name)
    entry: dict[str, Any] = {
        "id": ep.name,
        "aliases": ep.aliases,
        "kind": ep.kind,
        "batch": ep.batch,
        "state": status.state.value if ep.enabled else "disabled",
    }
    if not ep.enabled:
        entry["disabled_reason"] = ep.disabled_reason
    else:
        entry["connected_servers"] = _servers(service, route)
        entry["replicas"] = _replicas(service, route, jobs)
        job = job_of(jobs, route.endpoint_name)
        entry["job"] = None if job is None else _job_summary(job)
        entry.update(estimate(status, job, time.time()).fields())
    return entry


def _job_summary(job: dict[str, Any]) -> dict[str, Any]:
    """A model's scheduler job as /list-endpoints shows it (/jobs has the whole of it)."""
    return {
        "job_id": job.get("job_id"),
        "state": job.get("state"),
        "scheduler_state": job.get("scheduler_state"),
        "reason": job.get("reason"),
        "nodes": job.get("nodes", []),
        "started_at": _iso(job.get("started_at")),
    }


def _servers(service: RouterService, route: Route) -> list[dict[str, Any]]:
    """The model's servers connected to this router (the data plane), each described."""
    plane = service.dispatcher.plane
    return [] if plane is None else plane.servers(route.endpoint_name)


def _replicas(
    service: RouterService, route: Route, jobs: list[dict[str, Any]] | None
) -> list[dict[str, Any]]:
    """The model's replicas as this router knows them (router.fleet.replicas): each one's
    node, phase, requests in flight, walltime left and whether it drains. A replica on its
    way has an estimate of when it serves: its job's planned start where the scheduler gives
    one (the endpoint's queued jobs, earliest plan to the oldest ask), else its ask, plus
    the model's last start."""
    plane = service.dispatcher.plane
    in_flight = {} if plane is None else plane.hub.in_flight(route.endpoint_name)
    replicas = service.dispatcher.replicas.of(route.endpoint_name).all()
    last_start = service.tracker.status(route.endpoint_name).last_start_s
    planned = sorted(
        job["estimated_start"]
        for job in jobs or []
        if job.get("endpoint") == route.endpoint_name
        and job.get("scheduler_state") != "running"
        and isinstance(job.get("estimated_start"), int | float)
    )
    starting = sorted((r for r in replicas if r.phase == Phase.STARTING), key=lambda r: r.asked_at)
    plans = {r.index: start for r, start in zip(starting, planned, strict=False)}
    now = time.time()
    shown = []
    for replica in replicas:
        described = replica.describe(now, route.walltime_s)
        described["in_flight"] = in_flight.get(replica.server_id or "", 0)
        described["server"] = server_label(replica.server_id) if replica.server_id else None
        described["asked_at"] = _iso(replica.asked_at)
        described["ready_at"] = _iso(replica.ready_at)
        if replica.phase == Phase.STARTING:
            start = plans.get(replica.index)
            described["estimated_start"] = _iso(start)
            begins = replica.asked_at if start is None else start
            ready = None if last_start is None else max(begins + last_start, now)
            described["estimated_ready_at"] = _iso(ready)
        shown.append(described)
    return shown


def _iso(moment: float | None) -> str | None:
    return None if moment is None else datetime.fromtimestamp(moment, UTC).isoformat()
