"""Reading a request body within a size limit, without holding more than the limit."""

from __future__ import annotations

from starlette.requests import Request

from inference_bundle.router.errors import APIError


async def read_limited(request: Request, limit: int, too_large: APIError) -> bytes:
    """The whole body, or ``too_large`` (a 413) as soon as it is known to exceed ``limit``."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_large
    body = bytearray()
    async for part in request.stream():
        body += part
        if len(body) > limit:
            raise too_large
    return bytes(body)
