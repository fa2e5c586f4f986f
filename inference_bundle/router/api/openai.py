"""The model operations: OpenAI's chat, completions, Responses and embeddings, Anthropic's
Messages, rerank and score, and the tokenizer; streamed or whole.

Streams are ``streams.py``'s; how an answer is named, shaped and recorded, ``answers.py``'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Awaitable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import BaseRoute

from inference_bundle.config.frameworks import FRAMEWORKS
from inference_bundle.router.api import placing, streams
from inference_bundle.router.api.answers import (
    CLIENT_CLOSED,
    TICKET,
    USAGE_STREAMS,
    answer_body,
    record,
)
from inference_bundle.router.api.common import authenticate, bound_route, read_json
from inference_bundle.router.auth import allowed_routes, check_access
from inference_bundle.router.dispatch import Answer
from inference_bundle.router.errors import APIError
from inference_bundle.router.limits.limiter import Ticket
from inference_bundle.router.media import media_urls
from inference_bundle.router.routes import check_framework, check_operation
from inference_bundle.router.schemas import validate
from inference_bundle.router.service import RouterService

# Every POST operation some framework serves (config/frameworks.py), by its URL tail after a
# base URL's /v1: "chat/completions", and "tokenize" for the tokenizer at vLLM's root.
OPERATION_PATHS = {
    path.removeprefix("/v1/").lstrip("/"): path
    for info in FRAMEWORKS.values()
    for path in info.paths
    if path != "/v1/models"
}


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
    framework = request.path_params.get("framework")
    body = await read_json(request, service.settings.max_body_bytes)
    parsed = validate(path, body)
    # Before a model is placed or started for it: media vLLM would fail on is a 400.
    urls = media_urls(body)
    if urls and service.settings.check_media_hosts:
        await service.media_hosts.check(urls)
    auth = service.settings.auth
    # Access before any word on where the model is served: a caller who may not use it
    # learns nothing more than its name, which they typed.
    # The cluster the URL or the pin header names; on /v1, the best of those serving it.
    placed = await placing.place(service, request, parsed.model, path, allowed_routes(caller, auth))
    route = placed.route
    check_access(caller, auth, route.cluster, route.entry.endpoint.groups)
    check_operation(route, parsed.model, path)
    if framework is not None:
        check_framework(route, parsed.model, framework)
    check_n(body, service.settings.limits.max_n)
    context: dict[str, Any] = {
        "request_id": request_id,
        "user": caller.user,
        "model": route.model,
        "cluster": route.cluster,
        "operation": path,
        "stream": parsed.stream,
        "group": service.limiter.rules.group_of(route.cluster, caller.groups),
    }
    try:
        ticket = await service.limiter.admit(
            request_id, caller.user, caller.groups, route.cluster, route.model, path, body
        )
    except APIError as err:
        if err.status == 429:
            service.metrics.refusals.labels(err.extra.get("limit", "")).inc()
            # A usage record of its own (no tokens): who was refused, and when.
            context[TICKET] = Ticket(
                request_id, caller.user, context["group"], route.model, route.cluster, path,
                cost=None, counters=(),
            )  # fmt: skip
        err.headers.setdefault("X-Request-Id", request_id)
        err.headers.setdefault(placing.CLUSTER_HEADER, route.cluster)
        record(service, context, err.status, began, None)
        raise
    context[TICKET] = ticket
    # The backend serves the model under its served name only; an alias is the router's.
    forward = {**body, "model": route.model}
    include_usage = bool((parsed.stream_options or {}).get("include_usage"))
    if parsed.stream and path in USAGE_STREAMS:
        # The usage to charge comes in a stream's last chunk, sent only when asked for;
        # the relay takes it out again when the client did not ask (api/streams.py).
        forward["stream_options"] = {**(parsed.stream_options or {}), "include_usage": True}
    runtime_request = {"method": "POST", "path": path, "body": forward}
    if service.settings.log_prompts:
        context["body"] = forward
    # The placement moves the request on while nothing was answered; headers then follow.
    headers = {"X-Request-Id": request_id, placing.CLUSTER_HEADER: route.cluster}
    if parsed.stream:
        try:
            # Connected: the server's own status and events, nothing to wait for.
            outcome = await placed.stream(runtime_request, context, headers)
        except APIError as err:
            record(service, context, err.status, began, None)
            raise
        route, runtime_request = placed.route, placed.request_for(runtime_request)
        if outcome is not None:
            return placed.watched(
                await streams.streamed_response(
                    service, outcome, path, include_usage, began, context, parsed.model, headers
                )
            )
        events = streams.waiting_stream(
            service, route, runtime_request, path, include_usage, began, context, parsed.model
        )
        return placed.watched(
            StreamingResponse(
                events,
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", **headers},
            )
        )
    try:
        answer = await _unless_client_leaves(
            request, placed.send(runtime_request, context, headers)
        )
        route = placed.route
    except APIError as err:
        record(service, context, err.status, began, None)
        raise
    except ClientLeft:
        record(service, context, CLIENT_CLOSED, began, None)
        return Response(status_code=CLIENT_CLOSED)
    record(service, context, answer.status, began, answer)
    if answer.raw is not None and answer.status < 400 and parsed.model == route.model:
        return Response(
            answer.raw, status_code=answer.status, media_type="application/json", headers=headers
        )
    return JSONResponse(
        answer_body(answer.decoded(), parsed.model), status_code=answer.status, headers=headers
    )


class ClientLeft(Exception):
    """The client closed its connection before the answer."""


async def _unless_client_leaves(request: Request, work: Awaitable[Answer]) -> Answer:
    """``work``'s answer; if the client hangs up first, ``work`` is cancelled (and with it
    the generation at the server, when it rides a connection)."""
    answering = asyncio.ensure_future(work)
    leaving = asyncio.ensure_future(_client_leaves(request))
    done, _ = await asyncio.wait({answering, leaving}, return_when=asyncio.FIRST_COMPLETED)
    if answering in done:
        leaving.cancel()
        return answering.result()
    answering.cancel()
    with contextlib.suppress(asyncio.CancelledError, APIError):
        await answering
    raise ClientLeft


async def _client_leaves(request: Request) -> None:
    # The body is read: what is left to receive is the client's disconnect.
    while (await request.receive())["type"] != "http.disconnect":
        pass


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
