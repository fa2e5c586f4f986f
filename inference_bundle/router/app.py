"""The HTTP face of the router: the guide's URLs, OpenAI's formats, no tracebacks."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route as HTTPRoute

from inference_bundle.router import streaming
from inference_bundle.router.accesslog import log_request
from inference_bundle.router.auth import Caller, check_access, may_use
from inference_bundle.router.batches.api import batch_routes
from inference_bundle.router.bodies import read_limited
from inference_bundle.router.dispatch import Answer
from inference_bundle.router.errors import APIError
from inference_bundle.router.routes import FRAMEWORK_PATHS, Route
from inference_bundle.router.schemas import OPERATIONS, validate
from inference_bundle.router.service import RouterService
from inference_bundle.router.states import ModelState, ModelStatus

log = logging.getLogger("router")
OPERATION_PATHS = {
    "chat/completions": "/v1/chat/completions",
    "completions": "/v1/completions",
    "embeddings": "/v1/embeddings",
}
# Keys the router handles itself: the runtime always answers whole (see streaming.py).
_STREAM_KEYS = ("stream", "stream_options")


def create_app(service: RouterService) -> Starlette:
    """The ASGI application for one router service."""

    async def operation(request: Request) -> Response:
        path = OPERATION_PATHS.get(request.path_params["operation"])
        if path is None:
            raise APIError(404, f"Unknown operation {request.url.path}.", code="not_found")
        return await _operation(service, request, path)

    async def models(request: Request) -> Response:
        caller = await _authenticate(service, request)
        cluster = request.path_params.get("cluster")
        framework = request.path_params.get("framework")
        if cluster is not None and cluster not in service.table.clusters:
            service.table.lookup("", cluster)  # raises the unknown-cluster 404
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

    async def list_endpoints(request: Request) -> Response:
        caller = await _authenticate(service, request)
        clusters: dict[str, Any] = {}
        for route in service.table.routes():
            if not _allowed(service, caller, route):
                continue
            base = f"/resource_server/{route.cluster}"
            cluster = clusters.setdefault(route.cluster, {"base_url": base, "frameworks": {}})
            framework = cluster["frameworks"].setdefault(
                route.framework,
                {
                    "models": [],
                    "endpoints": {
                        p.removeprefix("/v1/").replace("/", "_"): f"{base}/{route.framework}{p}"
                        for p in FRAMEWORK_PATHS[route.framework]
                    },
                },
            )
            framework["models"].append(_model_entry(service, route))
        return JSONResponse({"clusters": clusters})

    async def jobs(request: Request) -> Response:
        caller = await _authenticate(service, request)
        cluster = request.path_params["cluster"]
        if cluster not in service.table.clusters:
            service.table.lookup("", cluster)
        listing = await service.job_listing.jobs(cluster)
        return JSONResponse({"cluster": cluster, **_group_jobs(service, caller, cluster, listing)})

    async def metrics(request: Request) -> Response:
        return Response(generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def health(request: Request) -> Response:
        body = {"status": "ok"}
        if (engines := service.batches.runner.engines_state()) is not None:
            body["batch_engines"] = engines  # started ahead, with the router (no job yet)
        return JSONResponse(body)

    async def api_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, APIError)
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        message = f"{request.method} {request.url.path}: {exc.detail}."
        error = APIError(
            exc.status_code, message, code="not_found" if exc.status_code == 404 else None
        )
        return JSONResponse(error.body(), status_code=exc.status_code, headers=exc.headers)

    async def unexpected(request: Request, exc: Exception) -> Response:
        request_id = getattr(request.state, "request_id", "-")
        log.exception("unexpected error in request %s", request_id)
        body = APIError(
            500,
            f"The router failed on this request (request id {request_id}); "
            "the operators have the details.",
            type="server_error",
        ).body()
        return JSONResponse(body, status_code=500)

    ops = "{operation:path}"
    # Batch and file routes first: the operation routes below would take their paths.
    routes = batch_routes(service.batches)
    routes += [
        HTTPRoute(
            f"/resource_server/{{cluster}}/{{framework}}/v1/{ops}", operation, methods=["POST"]
        ),
        HTTPRoute("/resource_server/{cluster}/{framework}/v1/models", models, methods=["GET"]),
        HTTPRoute("/resource_server/{cluster}/jobs", jobs, methods=["GET"]),
        HTTPRoute("/resource_server/list-endpoints", list_endpoints, methods=["GET"]),
        HTTPRoute(f"/v1/{ops}", operation, methods=["POST"]),
        HTTPRoute("/v1/models", models, methods=["GET"]),
        HTTPRoute("/metrics", metrics, methods=["GET"]),
        HTTPRoute("/health", health, methods=["GET"]),
    ]

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # Batches a previous router left running go on.
        await run_in_threadpool(service.batches.runner.resume_unfinished)
        settings = service.settings
        if settings.executor == "engine" and settings.batches.prestart_engines:
            service.batches.runner.prestart()
        yield
        if service.dispatcher.direct is not None:
            await service.dispatcher.direct.close()
        await run_in_threadpool(service.shutdown)

    return Starlette(
        routes=routes,
        exception_handlers={
            APIError: api_error,
            HTTPException: http_error,
            Exception: unexpected,
        },
        lifespan=lifespan,
    )


async def _authenticate(service: RouterService, request: Request) -> Caller:
    header = request.headers.get("authorization")
    known = service.authenticator.authenticate_at_once(header)
    if known is not None:
        return known
    caller: Caller = await run_in_threadpool(service.authenticator.authenticate, header)
    return caller


def _allowed(service: RouterService, caller: Caller, route: Route) -> bool:
    return may_use(caller, service.settings.auth, route.cluster, route.entry.endpoint.groups)


async def _read_json(service: RouterService, request: Request) -> Any:
    limit = service.settings.max_body_bytes
    too_large = APIError(
        413,
        f"The request body is larger than {limit // (1024 * 1024)} MB; send less per request "
        "or use the batch API.",
        code="request_too_large",
    )
    body = await read_limited(request, limit, too_large)
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as err:
        raise APIError(400, f"The request body is not valid JSON: {err}.") from None
    except RecursionError:
        raise APIError(400, "The request body is nested too deeply to read.") from None


async def _operation(service: RouterService, request: Request, path: str) -> Response:
    if path not in OPERATIONS:
        raise APIError(404, f"Unknown operation {request.url.path}.", code="not_found")
    began = time.monotonic()
    request_id = uuid.uuid4().hex[:16]
    request.state.request_id = request_id
    caller = await _authenticate(service, request)
    cluster = request.path_params.get("cluster")
    framework = request.path_params.get("framework")
    body = await _read_json(service, request)
    parsed = validate(path, body)
    route = service.table.lookup(parsed.model, cluster, framework)
    if path not in FRAMEWORK_PATHS[route.framework]:
        raise APIError(
            400, f"{route.framework} does not serve {path}.", param="model", code="wrong_framework"
        )
    check_access(caller, service.settings.auth, route.cluster, route.entry.endpoint.groups)
    forward = {k: v for k, v in body.items() if k not in _STREAM_KEYS}
    runtime_request = {"method": "POST", "path": path, "body": forward}
    context = {
        "request_id": request_id,
        "user": caller.user,
        "model": route.model,
        "cluster": route.cluster,
        "operation": path,
        "stream": parsed.stream,
    }
    if service.settings.log_prompts:
        context["body"] = forward
    if parsed.stream:
        include_usage = bool((parsed.stream_options or {}).get("include_usage"))
        events = _stream(service, route, runtime_request, path, include_usage, began, context)
        return StreamingResponse(
            events,
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Request-Id": request_id},
        )
    try:
        answer = await service.dispatcher.send(route, runtime_request, on_wait=None)
    except APIError as err:
        _record(service, context, err.status, began, None)
        raise
    _record(service, context, answer.status, began, answer)
    return JSONResponse(
        _answer_body(answer), status_code=answer.status, headers={"X-Request-Id": request_id}
    )


async def _stream(
    service: RouterService,
    route: Route,
    runtime_request: dict[str, Any],
    path: str,
    include_usage: bool,
    began: float,
    context: dict[str, Any],
) -> AsyncIterator[str]:
    notes: asyncio.Queue[str] = asyncio.Queue()

    async def on_wait(status: ModelStatus, waited: float) -> None:
        await notes.put(
            streaming.comment(f"{route.model} is {status.state}, waited {waited:.0f} s")
        )

    task = asyncio.create_task(service.dispatcher.send(route, runtime_request, on_wait))
    while not task.done() or not notes.empty():
        note = asyncio.ensure_future(notes.get())
        done, _ = await asyncio.wait({task, note}, return_when=asyncio.FIRST_COMPLETED)
        if note in done:
            yield note.result()
        else:
            note.cancel()
    try:
        answer = task.result()
    except APIError as err:
        _record(service, context, err.status, began, None)
        yield streaming.event(err.body())
        yield streaming.DONE
        return
    _record(service, context, answer.status, began, answer)
    body = _answer_body(answer)
    if answer.status >= 400:
        yield streaming.event(body)
    else:
        for chunk in streaming.chunks(path, body, include_usage):
            yield streaming.event(chunk)
    yield streaming.DONE


def _answer_body(answer: Answer) -> Any:
    """The backend's body; errors always in OpenAI's shape, whatever the backend sent."""
    body = answer.body
    if answer.status < 400:
        return body
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        return body
    message = body.get("message") if isinstance(body, dict) else None
    return APIError(
        answer.status,
        str(message or body or "The model server returned an error."),
        type=str(body.get("type", "invalid_request_error"))
        if isinstance(body, dict)
        else "invalid_request_error",
    ).body()


def _record(
    service: RouterService,
    context: dict[str, Any],
    status: int,
    began: float,
    answer: Answer | None,
) -> None:
    latency = time.monotonic() - began
    metrics = service.metrics
    metrics.requests.labels(context["operation"], context["model"], str(status)).inc()
    via = answer.via if answer is not None else "none"
    metrics.paths.labels(via).inc()
    metrics.latency.labels(context["operation"]).observe(latency)
    start_wait = answer.start_wait_s if answer else 0.0
    if answer is not None and answer.cold_start:
        metrics.cold_starts.labels(context["model"]).inc()
        metrics.start_wait.observe(answer.waited_s)
    log_request(
        **context,
        status=status,
        latency_ms=round(latency * 1000, 2),
        start_wait_s=round(start_wait, 3),
        via=via,
    )


# The lifecycle states of node_runtime.jobs, grouped as the guide's /jobs shows them.
_JOB_GROUPS = {"queued": "queued", "held": "queued", "starting": "running", "ready": "running"}
_JOB_GROUPS |= {"idle": "running", "running": "running", "stopping": "others"}


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
            }
        )
    return grouped


def _model_entry(service: RouterService, route: Route) -> dict[str, Any]:
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
    return entry


def _iso(moment: float | None) -> str | None:
    return None if moment is None else datetime.fromtimestamp(moment, UTC).isoformat()
