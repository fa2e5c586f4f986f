"""The HTTP face of the router: the guide's URLs, OpenAI's formats, no tracebacks.

Each part of the API is a module of ``router.api`` returning its routes; this module puts
them in order and answers every error in OpenAI's shape.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute

from inference_bundle.router.api import batches, files, health, listings, openai, status, usage
from inference_bundle.router.api.operation_entry import OperationsFirst
from inference_bundle.router.dataplane import connect_route
from inference_bundle.router.errors import APIError
from inference_bundle.router.limits.reload import LimitsWatcher
from inference_bundle.router.service import RouterService, replica_control, warm_keeper

log = logging.getLogger("router")


def create_app(service: RouterService) -> OperationsFirst:
    """The ASGI application for one router service: model operations straight to their
    handler (``api.operation_entry``), the rest through Starlette's routes."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        service.limiter.start()
        watcher = LimitsWatcher(service.config_path, service.table, service.limiter)
        watcher.start()
        # Batches a previous router left running go on.
        await run_in_threadpool(service.batches.runner.resume_unfinished)
        service.batches.runner.watch()
        settings = service.settings
        if settings.executor == "engine" and settings.batches.prestart_engines:
            service.batches.runner.prestart()
        keeper = warm_keeper(service)  # endpoints' keep_warm schedules
        keeper.start()
        control = replica_control(service)  # models' replicas, by demand and walltime
        control.start()
        yield
        await control.stop()
        await keeper.stop()
        watcher.stop()
        if service.dispatcher.plane is not None:
            service.dispatcher.plane.hub.close_all()
        await service.limiter.stop()
        await run_in_threadpool(service.shutdown)

    app = Starlette(
        routes=api_routes(service),
        exception_handlers={
            APIError: api_error,
            HTTPException: http_error,
            Exception: unexpected,
        },
        lifespan=lifespan,
    )
    handler = functools.partial(openai.operation, service)
    return OperationsFirst(app, handler, api_error, http_error, unexpected)


def api_routes(service: RouterService) -> list[BaseRoute]:
    """Every area's routes, in the order they are matched."""
    # Batch and file routes first: the operation routes take any path under /v1/, and the
    # operation routes before the model lists, whose 405s then name POST as before.
    plane = service.dispatcher.plane
    return [
        *(connect_route.routes(plane) if plane is not None else []),
        *batches.routes(service.batches),
        *files.routes(service.batches),
        *usage.routes(service),
        *status.routes(service),
        *openai.routes(service),
        *listings.routes(service),
        *health.routes(service),
    ]


async def api_error(request: Request, exc: Exception) -> Response:
    """An APIError as its status, headers and OpenAI-shaped body; a model request's error
    names its request id, as its access-log line does."""
    assert isinstance(exc, APIError)
    headers = dict(exc.headers)
    request_id = getattr(request.state, "request_id", None)
    if request_id is not None:
        headers.setdefault("X-Request-Id", request_id)
    return JSONResponse(exc.body(), status_code=exc.status, headers=headers)


async def http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own 404s and 405s, in OpenAI's shape."""
    assert isinstance(exc, HTTPException)
    message = f"{request.method} {request.url.path}: {exc.detail}."
    error = APIError(exc.status_code, message, code="not_found" if exc.status_code == 404 else None)
    return JSONResponse(error.body(), status_code=exc.status_code, headers=exc.headers)


async def unexpected(request: Request, exc: Exception) -> Response:
    """A 500 that names the request id; the traceback goes to the log only."""
    request_id = getattr(request.state, "request_id", "-")
    log.exception("unexpected error in request %s", request_id)
    body = APIError(
        500,
        f"The router failed on this request (request id {request_id}); "
        "the operators have the details.",
        type="server_error",
    ).body()
    return JSONResponse(body, status_code=500)
