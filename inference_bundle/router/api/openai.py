"""The model operations: OpenAI's chat, completions, Responses and embeddings, Anthropic's
Messages, rerank and score, and the tokenizer; streamed or whole.

Streams are ``stream_response.py``'s; how an answer is named, shaped and recorded, ``answers.py``'s.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import BaseRoute

from inference_bundle.config.operation_bodies import RequestBody
from inference_bundle.config.operations import Operation, by_user_path
from inference_bundle.router import tracing
from inference_bundle.router.api import failover, stream_response
from inference_bundle.router.api.body_checks import validate
from inference_bundle.router.api.common import authenticate, bound_route, read_form, read_json
from inference_bundle.router.api.media_checks import media_urls
from inference_bundle.router.api.multipart_form import Form
from inference_bundle.router.api.prefix_cache import cache_salt
from inference_bundle.router.api.records import CLIENT_CLOSED, answer_body, record
from inference_bundle.router.api.request_context import RequestContext, session_of
from inference_bundle.router.auth import allowed_routes, check_access
from inference_bundle.router.auth.callers import Caller
from inference_bundle.router.dispatch.answers import Answer
from inference_bundle.router.errors import APIError
from inference_bundle.router.limits.limiter import Ticket
from inference_bundle.router.routes import check_framework, check_operation
from inference_bundle.router.service import RouterService


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
    found = by_user_path(request.path_params["operation"])
    if found is None:
        raise APIError(404, f"Unknown operation {request.url.path}.", code="not_found")
    request_trace = service.tracing.begin(found.path, request.headers)
    try:
        return await _serve(service, request, found, request_trace)
    except BaseException as err:  # refused before its answer was recorded (a 401, a 404)
        tracing.end_request(request_trace, err, getattr(request.state, "request_id", None))
        raise


async def _serve(
    service: RouterService,
    request: Request,
    op: Operation,
    request_trace: tracing.RequestTrace | None,
) -> Response:
    """Authenticate, read and check the body, place it, admit it, send it; each step records
    what it refuses (and is a span of the request's trace, when it is traced)."""
    request_id = os.urandom(8).hex()
    request.state.request_id = request_id
    with tracing.steps(request_trace) as steps:
        steps.begin("authenticate")
        caller = await authenticate(service.authenticator, request)
        steps.begin("check")
        body, parsed, form = await _read(service, request, op)
        steps.begin("place")
        placed = await _place(service, request, caller, op, parsed)
        route = placed.route
        ctx = RequestContext(
            op,
            caller,
            parsed.model,
            route,
            group=service.limiter.rules.group_of(route.cluster, caller.groups),
            stream=parsed.stream,
            include_usage=bool((parsed.stream_options or {}).get("include_usage")),
            request_id=request_id,
            headers={"X-Request-Id": request_id, failover.CLUSTER_HEADER: route.cluster},
            session=session_of(request.headers, caller.user, body),
            trace=request_trace,
        )
        steps.begin("limits")
        await _admit(service, ctx, body)
    runtime_request = _runtime_request(service, ctx, body, form)
    if ctx.stream:
        return await _send_stream(service, placed, ctx, runtime_request)
    return await _send_whole(service, request, placed, ctx, runtime_request)


async def _read(
    service: RouterService, request: Request, op: Operation
) -> tuple[dict[str, Any], RequestBody, Form | None]:
    """The body, read as its operation says (JSON, or a form whose text fields are checked
    alike) and checked; media vLLM would fail on is a 400 here, before a model is placed or
    started for it."""
    limit = service.settings.max_body_bytes
    form = await read_form(request, limit) if op.body == "multipart" else None
    body = form.fields() if form is not None else await read_json(request, limit)
    parsed = validate(op, body)
    urls = media_urls(body)
    if urls and service.settings.check_media_hosts:
        await service.media_hosts.check(urls)
    return body, parsed, form


async def _place(
    service: RouterService, request: Request, caller: Caller, op: Operation, parsed: RequestBody
) -> failover.Placed:
    """The routes to try, best first: the cluster the URL or the pin header names; on /v1,
    the best of those serving it. Access is checked before any word on where the model is
    served: a caller who may not use it learns nothing more than its name, which they typed."""
    auth = service.settings.auth
    placed = await failover.place(
        service, request, parsed.model, op.path, allowed_routes(caller, auth)
    )
    route = placed.route
    check_access(caller, auth, route.cluster, route.entry.endpoint.groups)
    check_operation(route, parsed.model, op.path)
    framework = request.path_params.get("framework")
    if framework is not None:
        check_framework(route, parsed.model, framework)
    check_n(parsed.model_extra or {}, service.settings.limits.max_n)
    return placed


async def _admit(service: RouterService, ctx: RequestContext, body: dict[str, Any]) -> None:
    """Hold the request's cost on its limits; a refusal is recorded (no tokens) and raised."""
    route, caller = ctx.route, ctx.caller
    try:
        ctx.ticket = await service.limiter.admit(
            ctx.request_id, caller.user, caller.groups, route.cluster, route.model, ctx.path, body
        )
    except APIError as err:
        if err.status == 429:
            service.metrics.refusals.labels(err.extra.get("limit", "")).inc()
            # A usage record of its own (no tokens): who was refused, and when.
            ctx.ticket = Ticket(
                ctx.request_id, caller.user, ctx.group, route.model, route.cluster,
                ctx.path, cost=None, counters=(),
            )  # fmt: skip
        err.headers.setdefault("X-Request-Id", ctx.request_id)
        err.headers.setdefault(failover.CLUSTER_HEADER, route.cluster)
        record(service, ctx, err.status, None)
        raise


def _runtime_request(
    service: RouterService, ctx: RequestContext, body: dict[str, Any], form: Form | None
) -> dict[str, Any]:
    """What the server is sent: the body under the served name (an alias is the router's),
    asking for a stream's usage when the router charges it. A form travels as its bytes
    (``raw``), which only a server's connection carries."""
    forward = {**body, "model": ctx.model}
    if ctx.operation.cache_salt:
        isolation = ctx.route.entry.endpoint.cache_isolation
        salt = cache_salt(service.cache_salt_key, isolation, ctx.caller.user, ctx.group, ctx.model)
        if salt is not None:
            forward["cache_salt"] = salt  # whatever the client sent
    if ctx.stream and ctx.operation.usage_in_stream:
        # The usage to charge comes in a stream's last chunk, sent only when asked for;
        # the relay takes it out again when the client did not ask (api/stream_response.py).
        asked = forward.get("stream_options")
        forward["stream_options"] = {**(asked or {}), "include_usage": True}
    if service.settings.log_prompts:
        ctx.logged_body = forward
    request: dict[str, Any] = {"method": "POST", "path": ctx.path, "body": forward}
    if form is not None:
        named = form.with_field("model", ctx.model)
        request.update(raw=named.encode(), content_type=named.content_type())
    return request


async def _send_stream(
    service: RouterService,
    placed: failover.Placed,
    ctx: RequestContext,
    runtime_request: dict[str, Any],
) -> Response:
    """A stream: the connected server's own status and events, or a stream that begins at
    once and says the model's state while it starts."""
    try:
        # The placement moves the request on while nothing was answered.
        outcome = await placed.stream(runtime_request, ctx)
    except APIError as err:
        record(service, ctx, err.status, None)
        raise
    if outcome is not None:
        return placed.watched(await stream_response.streamed_response(service, outcome, ctx))
    events = stream_response.waiting_stream(
        service, placed.route, placed.request_for(runtime_request), ctx
    )
    return placed.watched(
        StreamingResponse(
            events,
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", **ctx.headers},
        )
    )


async def _send_whole(
    service: RouterService,
    request: Request,
    placed: failover.Placed,
    ctx: RequestContext,
    runtime_request: dict[str, Any],
) -> Response:
    """A whole answer, as the server wrote it when nothing needs renaming."""
    try:
        answer = await _unless_client_leaves(request, placed.send(runtime_request, ctx))
    except APIError as err:
        record(service, ctx, err.status, None)
        raise
    except ClientLeft:
        record(service, ctx, CLIENT_CLOSED, None)
        return Response(status_code=CLIENT_CLOSED)
    record(service, ctx, answer.status, answer)
    if answer.raw is not None and answer.status < 400 and ctx.asked == ctx.model:
        return Response(
            answer.raw,
            status_code=answer.status,
            media_type="application/json",
            headers=ctx.headers,
        )
    return JSONResponse(
        answer_body(answer.decoded(), ctx.asked), status_code=answer.status, headers=ctx.headers
    )


class ClientLeft(Exception):
    """The client closed its connection before the answer."""


async def _unless_client_leaves(request: Request, work: Awaitable[Answer]) -> Answer:
    """``work``'s answer; if the client hangs up first, ``work`` is cancelled (and with it
    the generation at the server, when it rides a connection). ``work`` runs in this task:
    only the watch for the client's hang-up is a task of its own."""
    this = asyncio.current_task()
    assert this is not None
    answered = False

    def on_leaving(watch: asyncio.Future[None]) -> None:
        if not answered and not watch.cancelled():
            this.cancel()

    leaving = asyncio.ensure_future(_client_leaves(request))
    leaving.add_done_callback(on_leaving)
    try:
        return await work
    except (asyncio.CancelledError, APIError):
        if leaving.done() and not leaving.cancelled():
            this.uncancel()
            raise ClientLeft from None
        raise
    finally:
        answered = True
        leaving.cancel()


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
