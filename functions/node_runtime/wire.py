"""The data plane's wire format: what the router and a node's agent say on their WebSocket.

The node dials out (see ``node_runtime.dialout``); the router sends requests down the
connection and the node sends each answer back as it is made. WebSocket does the framing;
each binary message is one record: a 5-byte header (kind, stream id) and a payload. Records
of many requests interleave on one connection, told apart by their stream id.

    router -> node   REQUEST  JSON head {"method", "path"}, a newline, then the body bytes
                     CANCEL   (empty) the client went away: abort the request
    node -> router   START    JSON {"status", "content_type"}
                     BODY     bytes of the answer, as the server wrote them
                     END      (empty) the answer is complete
                     FAIL     UTF-8 text: the answer broke off (the server failed mid-way)

Text messages are control: the node sends ``{"type": "bye"}`` as its server stops, and
the router then forgets the server's credential.
"""

from __future__ import annotations

import json
import struct
from typing import Any

CONNECT_PATH = "/node/v1/connect"
# Handshake headers, beside "Authorization: Bearer <credential>".
ENDPOINT_HEADER = "X-Bundle-Endpoint"
SERVER_HEADER = "X-Bundle-Server"
HOST_HEADER = "X-Bundle-Host"
RUNTIME_HEADER = "X-Bundle-Runtime"
# The close code a refused node sees (4000 + HTTP's 403).
REFUSED = 4403

REQUEST = 1
CANCEL = 2
START = 3
BODY = 4
END = 5
FAIL = 6

_HEADER = struct.Struct("!BI")
HEADER_SIZE = _HEADER.size


class WireError(ValueError):
    """A record that does not follow this format."""


def pack(kind: int, stream: int, payload: bytes = b"") -> bytes:
    """One record."""
    return _HEADER.pack(kind, stream) + payload


def unpack(record: bytes) -> tuple[int, int, bytes]:
    """(kind, stream id, payload) of one record."""
    if len(record) < HEADER_SIZE:
        raise WireError(f"a record of {len(record)} bytes is shorter than its header")
    kind, stream = _HEADER.unpack_from(record)
    return kind, stream, record[HEADER_SIZE:]


def request_record(stream: int, method: str, path: str, body: bytes) -> bytes:
    """A REQUEST record."""
    head = json.dumps({"method": method, "path": path}, separators=(",", ":")).encode()
    return pack(REQUEST, stream, head + b"\n" + body)


def parse_request(payload: bytes) -> tuple[str, str, bytes]:
    """(method, path, body) of a REQUEST record's payload."""
    head, sep, body = payload.partition(b"\n")
    if not sep:
        raise WireError("a REQUEST record without its head line")
    fields: Any = json.loads(head)
    if not isinstance(fields, dict) or not isinstance(fields.get("path"), str):
        raise WireError("a REQUEST record's head must name a path")
    return str(fields.get("method", "POST")), fields["path"], body


def start_record(stream: int, status: int, content_type: str) -> bytes:
    """A START record."""
    head = json.dumps({"status": status, "content_type": content_type}, separators=(",", ":"))
    return pack(START, stream, head.encode())


def parse_start(payload: bytes) -> tuple[int, str]:
    """(status, content type) of a START record's payload."""
    fields: Any = json.loads(payload)
    return int(fields["status"]), str(fields.get("content_type") or "application/json")


def websocket_url(router_url: str) -> str:
    """Where a node dials, from the router's base URL (http -> ws, https -> wss)."""
    base = router_url.rstrip("/")
    if base.startswith("https://"):
        return "wss://" + base.removeprefix("https://") + CONNECT_PATH
    if base.startswith("http://"):
        return "ws://" + base.removeprefix("http://") + CONNECT_PATH
    raise WireError(f"the router's URL {router_url!r} must start with http:// or https://")
