"""What every API area shares: who is calling, the request's body, the cluster a URL names."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route as HTTPRoute

from inference_bundle.router import jsonsafe
from inference_bundle.router.api.body_reading import read_limited
from inference_bundle.router.api.multipart_form import Form, parse_form
from inference_bundle.router.auth import Authenticator, Caller
from inference_bundle.router.errors import APIError, unknown_cluster
from inference_bundle.router.routes import RouteTable

Owner = TypeVar("Owner")
# Batch create bodies are small JSON objects; the input itself comes as a file.
JSON_OBJECT_LIMIT = 1024 * 1024


def bound_route(
    path: str,
    handler: Callable[[Owner, Request], Awaitable[Response]],
    owner: Owner,
    methods: list[str],
) -> HTTPRoute:
    """A route whose requests go to ``handler(owner, request)``, named after the handler."""
    endpoint = functools.partial(handler, owner)
    return HTTPRoute(path, endpoint, methods=methods, name=handler.__name__)


async def authenticate(authenticator: Authenticator, request: Request) -> Caller:
    """The caller the Authorization header names, or the authenticator's 401.

    Anthropic's SDK sends its key as ``X-Api-Key: <key>``: with no Authorization header, that
    header is taken as ``Bearer <key>``, so the same token or key works from either SDK.
    """
    header = request.headers.get("authorization")
    if header is None and (api_key := request.headers.get("x-api-key")):
        header = f"Bearer {api_key}"
    # A known key or a cached token is answered on the event loop: a thread hop per
    # request would cost the router a third of its throughput.
    known = authenticator.authenticate_at_once(header)
    if known is not None:
        return known
    caller: Caller = await run_in_threadpool(authenticator.authenticate, header)
    return caller


def require_cluster(table: RouteTable, cluster: str) -> None:
    """Raise the unknown-cluster 404 unless this router serves ``cluster``."""
    if cluster not in table.clusters:
        raise unknown_cluster(cluster, table.clusters)


async def read_json(request: Request, limit: int) -> Any:
    """An OpenAI operation's JSON body (any JSON value), at most ``limit`` bytes."""
    too_large = APIError(
        413,
        f"The request body is larger than {_size(limit)}; send less per request "
        "or use the batch API.",
        code="request_too_large",
    )
    return _parsed(await read_limited(request, limit, too_large))


async def read_form(request: Request, limit: int) -> Form:
    """An operation's multipart/form-data body, at most ``limit`` bytes, parsed."""
    too_large = APIError(
        413,
        f"The request body is larger than {_size(limit)}; send less per request.",
        code="request_too_large",
    )
    raw = await read_limited(request, limit, too_large)
    return parse_form(request.headers.get("content-type", ""), raw)


async def read_json_object(request: Request) -> dict[str, Any]:
    """A batch create body: one JSON object of at most ``JSON_OBJECT_LIMIT`` bytes."""
    body = _parsed(await read_upload(request, JSON_OBJECT_LIMIT))
    if not isinstance(body, dict):
        raise APIError(400, "The request body must be a JSON object.")
    return body


async def read_upload(request: Request, limit: int) -> bytes:
    """The raw body of a batch or file request, or a 413 past ``limit`` bytes."""
    too_large = APIError(
        413, f"The upload is larger than {_size(limit)}.", code="request_too_large"
    )
    return await read_limited(request, limit, too_large)


def _parsed(body: bytes) -> Any:
    # Parsed on the loop, as before: bodies are capped, and a thread hop per request would
    # cost the router throughput. jsonsafe bounds the nesting and refuses lone surrogates,
    # which would otherwise fail later, when the body is answered, stored or forwarded.
    try:
        return jsonsafe.parse(body)
    except jsonsafe.JSONProblem as problem:
        raise APIError(400, f"The request body {problem}.", code="invalid_json") from None


def _size(limit: int) -> str:
    """A byte limit as people say it: 10 MB, 64 KB."""
    if limit >= 2**20 and limit % 2**20 == 0:
        return f"{limit // 2**20} MB"
    if limit >= 2**10 and limit % 2**10 == 0:
        return f"{limit // 2**10} KB"
    return f"{limit:,} bytes"
