"""The cluster a model operation goes to, and the header that names it.

``X-Inference-Cluster`` is both ways: a request on the one base URL (``/v1/...``) may send
it to pin a cluster (then it is never moved, as under ``/resource_server/{cluster}/...``),
and every answer once a cluster was chosen carries it, naming the cluster that served it:
whole answers, streams, and errors. Unpinned, the clusters come in ``router.fleet.placement``'s
order, and a request whose cluster fails before anything was answered (its endpoint's task
failed, its executor could not start, its server went away, or a maintenance window began)
goes to the next one. A stream moves only while it has not begun: a connected model's stream
that breaks on opening moves; a stream that began (it waits for a cold model with SSE
comments, or had sent events) ends with its error event as before, and its cluster is
marked failing so that the next request goes elsewhere.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from inference_bundle.router.api.request_context import RequestContext
from inference_bundle.router.dispatch.answers import Answer, Streamed
from inference_bundle.router.errors import APIError, unknown_cluster
from inference_bundle.router.fleet.placement import FAILURE_CODES, MOVABLE_CODES
from inference_bundle.router.routes import Route, RouteTable
from inference_bundle.router.service import RouterService

__all__ = ["CLUSTER_HEADER", "Placed", "place"]

CLUSTER_HEADER = "X-Inference-Cluster"
log = logging.getLogger("router.placement")


async def place(
    service: RouterService,
    request: Request,
    model: str,
    path: str,
    allowed: Callable[[Route], bool],
) -> Placed:
    """The routes to try for ``model``, best first; lookup errors as ``RouteTable.lookup``'s.

    A cluster in the URL or the pin header gives that one route. On the one base URL the
    placement orders the clusters that serve the model and its operation, among those the
    caller may use; a model the caller may not use comes alone (its 403 follows).
    """
    table = service.table
    cluster = request.path_params.get("cluster")
    pinned = pinned_cluster(request, cluster, table)
    if cluster is not None:
        return Placed(service, [table.lookup(model, cluster, None, allowed)])
    if pinned is not None:
        return Placed(service, [_pinned_route(table, model, pinned, allowed)])
    first = table.lookup(model, None, None, allowed)
    routes = _serving(table, model, path, allowed)
    if not allowed(first) or not routes:
        return Placed(service, [first])  # the 403, or the 400 of an operation it lacks
    if len(routes) == 1:
        return Placed(service, routes)
    standings = await service.placement.order(routes)
    return Placed(service, [s.route for s in standings])


def pinned_cluster(request: Request, cluster: str | None, table: RouteTable) -> str | None:
    """The cluster the request pins with ``X-Inference-Cluster``; None if it pins none."""
    pin = request.headers.get(CLUSTER_HEADER, "").strip()
    if not pin:
        return None
    if pin not in table.clusters:
        err = unknown_cluster(pin, table.clusters)
        err.message = f"{CLUSTER_HEADER}: {err.message}"
        err.param = CLUSTER_HEADER
        raise err
    if cluster is not None and pin != cluster:
        raise APIError(
            400,
            f"The URL names cluster '{cluster}' and the {CLUSTER_HEADER} header '{pin}': "
            "send one of them (the header is for the one base URL, /v1).",
            param=CLUSTER_HEADER,
            code="cluster_conflict",
        )
    return pin


def _pinned_route(
    table: RouteTable, model: str, pinned: str, allowed: Callable[[Route], bool]
) -> Route:
    try:
        return table.lookup(model, pinned, None, allowed)
    except APIError as err:
        if err.code != "model_not_found":
            raise
        elsewhere = sorted({r.cluster for r in _serving(table, model, None, allowed)})
        if elsewhere:
            err.message = (
                f"The model '{model}' is not served on '{pinned}', the cluster the "
                f"{CLUSTER_HEADER} header pins. It is served on: {', '.join(elsewhere)}. "
                "Pin one of those, or leave the header out and the router chooses."
            )
        err.param = CLUSTER_HEADER
        raise


def _serving(
    table: RouteTable, model: str, path: str | None, allowed: Callable[[Route], bool]
) -> list[Route]:
    """The enabled routes of ``model`` the caller may use (that answer ``path``, if given)."""
    routes = []
    for cluster in table.clusters:
        try:
            route = table.lookup(model, cluster, None, allowed)
        except APIError:
            continue  # not served there, or disabled there
        if allowed(route) and (path is None or path in route.operations):
            routes.append(route)
    return routes


@dataclass
class Placed:
    """A request's routes in the order to try them; ``route`` is the one in use."""

    service: RouterService
    routes: list[Route]
    at: int = 0

    @property
    def route(self) -> Route:
        return self.routes[self.at]

    def request_for(self, request: dict[str, Any]) -> dict[str, Any]:
        """The runtime request with the route's served name (an alias is the router's)."""
        body = request.get("body")
        if isinstance(body, dict) and body.get("model") != self.route.model:
            return {**request, "body": {**body, "model": self.route.model}}
        return request

    async def send(self, request: dict[str, Any], ctx: RequestContext) -> Answer:
        """A whole answer from the first route that answers; the error of the last that
        failed, or of the first that failed in a way that does not move the request."""
        while True:
            try:
                answer = await self.service.dispatcher.send(
                    self.route, self.request_for(request), None, ctx.asker()
                )
            except APIError as err:
                if self._moved(err, ctx):
                    continue
                raise
            self.judge(answer.status)
            return answer

    async def stream(
        self, request: dict[str, Any], ctx: RequestContext
    ) -> Streamed | Answer | None:
        """A connected route's stream (moving on while none has begun); None when the route
        in use has no connection, or no place free on its servers: its stream must begin at
        once and wait (``stream_response.waiting_stream``)."""
        dispatcher = self.service.dispatcher
        while (
            dispatcher.plane is not None
            and dispatcher.plane.pick(self.route) is not None
            and not dispatcher.admission.would_wait(self.route.endpoint_name)
        ):
            try:
                return await dispatcher.stream(
                    self.route, self.request_for(request), None, ctx.asker()
                )
            except APIError as err:
                if not self._moved(err, ctx):
                    raise
        return None

    def watched(self, response: Response) -> Response:
        """``response``, its cluster marked failing if it fails (a stream: by its error
        event) and answering if it does not."""
        if isinstance(response, StreamingResponse):
            response.body_iterator = self._watch(response.body_iterator, self.route)
        else:
            self.judge(response.status_code)
        return response

    def judge(self, status: int) -> None:
        """An answer's status from the model server: a 5xx marks its cluster failing."""
        placement = self.service.placement
        if status >= 500:
            placement.failed(self.route, f"its server answered {status}")
        else:
            placement.answered(self.route)

    def _moved(self, err: APIError, ctx: RequestContext) -> bool:
        """After ``err`` from the route in use: mark a failure, and move to the next route
        if the error allows it and one is left. Not moved, ``err`` names the cluster."""
        failed = self.route
        if err.code in FAILURE_CODES:
            self.service.placement.failed(failed, str(err.code))
        if err.code not in MOVABLE_CODES or self.at + 1 >= len(self.routes):
            err.headers.setdefault(CLUSTER_HEADER, failed.cluster)
            return False
        self.at += 1
        log.warning(
            "%s: %s on %s (%s); trying %s",
            ctx.request_id,
            failed.model,
            failed.cluster,
            err.code,
            self.route.cluster,
        )
        ctx.route = self.route
        ctx.headers[CLUSTER_HEADER] = self.route.cluster
        return True

    async def _watch(self, events: Any, route: Route) -> AsyncIterator[Any]:
        try:
            async for chunk in events:
                if isinstance(chunk, bytes) and chunk.startswith(_ERROR_EVENTS):
                    code = _error_code(chunk)
                    if code in FAILURE_CODES:
                        self.service.placement.failed(route, code)
                yield chunk
        finally:
            # The client left: the stream's own cleanup (its record) runs now, not when
            # the stream is collected.
            await events.aclose()


# How a stream's error event begins: OpenAI's chunk streams, and the named events of
# Responses and Messages (router.api.sse_named_events).
_ERROR_EVENTS = (b'data: {"error"', b"event: error\n")


def _error_code(chunk: bytes) -> str:
    """The ``code`` of an SSE error event (``data: {"error": {...}}``, or a named error
    event whose code is its own or its error's); "" if none."""
    event_text = chunk.split(b"\n\n", 1)[0]
    data = next((line for line in event_text.split(b"\n") if line.startswith(b"data: ")), b"")
    try:
        event = json.loads(data[len(b"data: ") :])
    except ValueError:
        return ""
    if not isinstance(event, dict):
        return ""
    error = event.get("error")
    code = error.get("code") if isinstance(error, dict) else event.get("code")
    return code if isinstance(code, str) else ""
