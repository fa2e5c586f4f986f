"""For the operators: whether the router is up, and its Prometheus metrics."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute

from inference_bundle.router.api.common import bound_route
from inference_bundle.router.service import RouterService


def routes(service: RouterService) -> list[BaseRoute]:
    """/metrics and /health, open to anyone who reaches the router."""
    return [
        bound_route("/metrics", metrics, service, ["GET"]),
        bound_route("/health", health, service, ["GET"]),
    ]


async def metrics(service: RouterService, request: Request) -> Response:
    """The router's metrics in Prometheus' text format."""
    return Response(generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST)


async def health(service: RouterService, request: Request) -> Response:
    """ok, and the state of the batch engines when the router starts them ahead."""
    body = {"status": "ok"}
    if (engines := service.batches.runner.engines_state()) is not None:
        body["batch_engines"] = engines  # started ahead, with the router (no job yet)
    return JSONResponse(body)
