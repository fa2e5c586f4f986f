"""What every API area shares: who is calling, the request's body, the cluster a URL names."""

from __future__ import annotations

import email.parser
import email.policy
import functools
import json
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route as HTTPRoute

from inference_bundle.router.auth import Authenticator, Caller
from inference_bundle.router.bodies import read_limited
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
    """The caller the Authorization header names, or the authenticator's 401."""
    header = request.headers.get("authorization")
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


async def read_json_object(request: Request) -> dict[str, Any]:
    """A batch create body: one JSON object of at most ``JSON_OBJECT_LIMIT`` bytes."""
    raw = await read_upload(request, JSON_OBJECT_LIMIT)
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise APIError(400, "The request body is not valid JSON.") from None
    if not isinstance(body, dict):
        raise APIError(400, "The request body must be a JSON object.")
    return body


async def read_upload(request: Request, limit: int) -> bytes:
    """The raw body of a batch or file request, or a 413 past ``limit`` bytes."""
    too_large = APIError(
        413, f"The upload is larger than {limit // 2**20} MB.", code="request_too_large"
    )
    return await read_limited(request, limit, too_large)


async def read_multipart(request: Request, limit: int) -> dict[str, tuple[str | None, bytes]]:
    """multipart/form-data fields: name -> (filename, bytes), read with the stdlib parser."""
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("multipart/form-data"):
        raise APIError(400, "Upload the file as multipart/form-data (purpose and file).")
    raw = await read_upload(request, limit)
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode()
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + raw)
    fields: dict[str, tuple[str | None, bytes]] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True)
        if isinstance(name, str) and isinstance(payload, bytes):
            fields[name] = (part.get_filename(), payload)
    return fields
