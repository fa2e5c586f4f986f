"""The requests the node runtime is sent, as the dispatcher shapes them for each path.

A request is ``{"method", "path", "body"}``, plus ``"raw"`` and ``"content_type"`` for a
form (a multipart body, which only a server's connection carries: a task carries JSON).
"""

from __future__ import annotations

import json
from typing import Any

# Keys only a connection carries: through a task the runtime answers whole.
STREAM_KEYS = ("stream", "stream_options")
# A task that only ensures the server (and hands it a credential): nothing is sent to it.
ENSURE = {"method": "GET", "path": "/v1/models", "body": None, "send": False}


def is_form(request: dict[str, Any]) -> bool:
    """Whether the request's body is a form (bytes only a connection carries)."""
    return request.get("raw") is not None


def whole(request: dict[str, Any]) -> dict[str, Any]:
    """The request as a task carries it: the runtime answers whole."""
    body = request.get("body")
    if isinstance(body, dict) and any(key in body for key in STREAM_KEYS):
        body = {k: v for k, v in body.items() if k not in STREAM_KEYS}
        return {**request, "body": body}
    return request


def media_type(request: dict[str, Any]) -> str:
    """The Content-Type the server is sent."""
    return str(request.get("content_type") or "application/json")


def body_bytes(request: dict[str, Any]) -> bytes:
    """The body as the server is sent it."""
    if request.get("raw") is not None:
        return bytes(request["raw"])  # a form, as the router wrote it again
    body = request.get("body")
    return b"" if body is None else json.dumps(body, separators=(",", ":")).encode()
