"""OpenAI's operations: chat completions, completions and embeddings, streamed or whole."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import BaseRoute

from inference_bundle.config.frameworks import FRAMEWORKS
from inference_bundle.router import streaming
from inference_bundle.router.accesslog import log_request
from inference_bundle.router.api.common import authenticate, bound_route, read_json
from inference_bundle.router.auth import allowed_routes, check_access
from inference_bundle.router.dispatch import Answer
from inference_bundle.router.errors import APIError
from inference_bundle.router.routes import Route, check_framework, check_operation
from inference_bundle.router.schemas import validate
from inference_bundle.router.service import RouterService
from inference_bundle.router.states import ModelStatus

# Every POST operation some framework serves (config/frameworks.py), by its URL tail.
OPERATION_PATHS = {
    path.removeprefix("/v1/"): path
    for info in FRAMEWORKS.values()
    for path in info.paths
    if path != "/v1/models"
}
# Keys the router handles itself: the runtime always answers whole (see streaming.py).
_STREAM_KEYS = ("stream", "stream_options")


def routes(service: RouterService) -> list[BaseRoute]:
    """The operations under a cluster and framework, and under the one base URL /v1."""
    ops = "{operation:path}"
    return [
        bound_route(
            f"/resource_server/{{cluster}}/{{framework}}/v1/{ops}", operation, service, ["POST"]
        ),
        bound_route(f"/v1/{ops}", operation, service, ["POST"]),
    ]


async def operation(service: RouterService, request: Request) -> Response:
    """POST an OpenAI operation: the model's answer, or a stream of it."""
    path = OPERATION_PATHS.get(request.path_params["operation"])
    if path is None:
        raise APIError(404, f"Unknown operation {request.url.path}.", code="not_found")
    return await _serve(service, request, path)


async def _serve(service: RouterService, request: Request, path: str) -> Response:
    began = time.monotonic()
    request_id = uuid.uuid4().hex[:16]
    request.state.request_id = request_id
    caller = await authenticate(service.authenticator, request)
    cluster = request.path_params.get("cluster")
    framework = request.path_params.get("framework")
    body = await read_json(request, service.settings.max_body_bytes)
    parsed = validate(path, body)
    auth = service.settings.auth
    # Access before any word on where the model is served: a caller who may not use it
    # learns nothing more than its name, which they typed.
    route = service.table.lookup(parsed.model, cluster, None, allowed_routes(caller, auth))
    check_access(caller, auth, route.cluster, route.entry.endpoint.groups)
    check_operation(route, parsed.model, path)
    if framework is not None:
        check_framework(route, parsed.model, framework)
    check_n(body, service.settings.limits.max_n)
    # The backend serves the model under its served name only; an alias is the router's.
    forward = {k: v for k, v in body.items() if k not in _STREAM_KEYS}
    forward["model"] = route.model
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
        events = _stream(
            service, route, runtime_request, path, include_usage, began, context, parsed.model
        )
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
        _answer_body(answer, parsed.model),
        status_code=answer.status,
        headers={"X-Request-Id": request_id},
    )


async def _stream(
    service: RouterService,
    route: Route,
    runtime_request: dict[str, Any],
    path: str,
    include_usage: bool,
    began: float,
    context: dict[str, Any],
    asked: str,
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
    body = _answer_body(answer, asked)
    if answer.status >= 400:
        yield streaming.event(body)
    else:
        for chunk in streaming.chunks(path, body, include_usage):
            yield streaming.event(chunk)
    yield streaming.DONE


def check_n(body: dict[str, Any], max_n: int) -> None:
    """The 400 for more choices than the router's limits.max_n, or an n that is no count."""
    n = body.get("n")
    if n is None:
        return
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise APIError(
            400, f"'n' must be a whole number from 1 to {max_n}.", param="n", code="invalid_value"
        )
    if n > max_n:
        raise APIError(
            400,
            f"'n' is {n}, above this router's limit of {max_n} choices a request; ask for at "
            f"most {max_n}, or send several requests.",
            param="n",
            code="invalid_value",
        )


def _answer_body(answer: Answer, asked: str) -> Any:
    """The backend's body, named as the user asked; errors always in OpenAI's shape."""
    body = answer.body
    if answer.status < 400:
        # The served name went to the backend; an alias comes back as the user wrote it.
        if isinstance(body, dict) and "model" in body:
            return {**body, "model": asked}
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
