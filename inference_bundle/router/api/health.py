"""For the operators: whether the router is up, and its Prometheus metrics."""

from __future__ import annotations

import hmac
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute

from inference_bundle.router.api.common import bound_route
from inference_bundle.router.errors import APIError
from inference_bundle.router.service import RouterService


def routes(service: RouterService) -> list[BaseRoute]:
    """/metrics (as the settings' metrics.access says) and /health (open)."""
    return [
        bound_route("/metrics", metrics, service, ["GET"]),
        bound_route("/health", health, service, ["GET"]),
    ]


async def metrics(service: RouterService, request: Request) -> Response:
    """The router's metrics in Prometheus' text format, for whom metrics.access allows."""
    access = service.settings.metrics.access
    if access == "off":
        raise APIError(
            404,
            "GET /metrics is turned off on this router (metrics.access: off).",
            code="not_found",
        )
    if access == "key":
        token = service.metrics_token or ""
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        # The metrics token only, never a user's key: metrics name every model and its use.
        matches = hmac.compare_digest(given.encode("latin-1"), token.encode())
        if scheme.lower() != "bearer" or not token or not matches:
            raise APIError(
                401,
                "GET /metrics needs the router's metrics token: send "
                "'Authorization: Bearer <token>' with the token from the file that the "
                "router settings' metrics.token_file names (in the router's state folder).",
                code="invalid_metrics_token",
                headers={"WWW-Authenticate": "Bearer"},
            )
    return Response(generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST)


async def health(service: RouterService, request: Request) -> Response:
    """ok, the state of the batch engines when the router starts them ahead, and usage
    records waiting for a database that does not answer (no database call: it stays fast)."""
    body: dict[str, Any] = {"status": "ok"}
    if (engines := service.batches.runner.engines_state()) is not None:
        body["batch_engines"] = engines  # started ahead, with the router (no job yet)
    limiter = service.limiter
    if limiter.unsettled_since is not None:
        body["store"] = {
            "status": "unavailable",
            "since": round(limiter.unsettled_since),
            "usage_records_waiting": limiter.pending,
        }
    return JSONResponse(body)
