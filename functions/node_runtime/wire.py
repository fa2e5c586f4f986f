"""The data plane's wire format: what the router and a node's agent say on their WebSocket.

The node dials out (see ``node_runtime.dialout``); the router sends requests down the
connection and the node sends each answer back as it is made. WebSocket does the framing;
each binary message is one record: a 5-byte header (kind, stream id) and a payload of at
most ``MAX_PAYLOAD`` bytes. Records of many requests interleave on one connection, told
apart by their stream id, so no body, however large, holds the line or exceeds a message
bound: the largest message either side takes is ``MAX_MESSAGE``.

    router -> node   REQUEST   JSON head {"method", "path", "length", "window",
                               "content_type"[, "trace"]}, a newline,
                               then the body's first bytes ("trace": the router's
                               span, when it traces the request: ``node_runtime.tracing``)
                     BODY      more of the request's body, until ``length`` bytes came
                     CANCEL    (empty) the client went away: abort the request
                     WINDOW    4-byte count: the node may send that many more answer bytes
    node -> router   START     JSON {"status", "content_type"}
                     BODY      bytes of the answer, as the server wrote them
                     END       (empty) the answer is complete
                     ANSWER    START's JSON, a newline, then the whole body: START, BODY
                               and END in one record, for an answer that fits one (0.10)
                     BATCH     (stream 0) records of any streams, each after its 4-byte
                               length: what the node had to send in one turn of its event
                               loop, as one message (0.10)
                     FAIL      UTF-8 text: the answer broke off (the server failed mid-way)
                     LOAD      (stream 0) JSON {"running", "waiting"}: the server's own
                               count of requests it runs and queues (vLLM's metrics), sent
                               with each heartbeat by a server that reports them (0.8)
    both ways        HEARTBEAT (empty, stream 0) sent by the node every ``HEARTBEAT_S``, echoed

Flow control is per stream: the node sends at most ``window`` answer bytes (the REQUEST
head's) beyond those the router has granted back with WINDOW records as its client took
them. A client that reads slowly holds back its own stream, never the line.

Liveness is any record heard: a busy line is never dropped for a late pong. Each side hangs
up on a line it has heard nothing from for ``SILENCE_S``.

ANSWER and BATCH go only to a router that names them in its handshake's answer
(``RECORDS_HEADER``): a router of 0.9 gets START, BODY and END, one message each.

Text messages are control: the node sends ``{"type": "bye"}`` as its server stops, and
the router then forgets the server's credential.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from .tracing import TraceRequest, trace_of

CONNECT_PATH = "/node/v1/connect"
# Handshake headers, beside "Authorization: Bearer <credential>".
ENDPOINT_HEADER = "X-Bundle-Endpoint"
SERVER_HEADER = "X-Bundle-Server"
HOST_HEADER = "X-Bundle-Host"
RUNTIME_HEADER = "X-Bundle-Runtime"
# The server's proof: the secret whose SHA-256 the node's task reported (dialout.node_key).
PROOF_HEADER = "X-Bundle-Proof"
# The router's handshake answer: the records of 0.10 it takes (ANSWER, BATCH).
RECORDS_HEADER = "X-Bundle-Records"
ROUTER_RECORDS = "answer batch"
# The close code a refused node sees (4000 + HTTP's 403).
REFUSED = 4403

REQUEST = 1
CANCEL = 2
START = 3
BODY = 4
END = 5
FAIL = 6
WINDOW = 7
HEARTBEAT = 8
LOAD = 9
ANSWER = 10
BATCH = 11

MAX_PAYLOAD = 64 * 1024
MAX_MESSAGE = 128 * 1024  # a record, its header and a REQUEST head, with room to spare
STREAM_WINDOW = 256 * 1024  # the default window: what one stream may have buffered unread
HEARTBEAT_S = 10.0
SILENCE_S = 60.0
_COUNT = struct.Struct("!I")

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


def records(kind: int, stream: int, data: bytes) -> Iterator[bytes]:
    """``data`` as records of ``kind``, each payload at most MAX_PAYLOAD bytes."""
    view = memoryview(data)
    for offset in range(0, len(view), MAX_PAYLOAD):
        yield _HEADER.pack(kind, stream) + view[offset : offset + MAX_PAYLOAD]


@dataclass(frozen=True)
class RequestHead:
    """What a REQUEST record says before the body: the call, the body's length, the window."""

    method: str
    path: str
    length: int
    window: int
    content_type: str = "application/json"
    trace: TraceRequest | None = None  # the router's span, when it traces the request


def request_records(
    stream: int,
    method: str,
    path: str,
    body: bytes,
    window: int = STREAM_WINDOW,
    content_type: str = "application/json",
    trace: dict[str, str] | None = None,
) -> list[bytes]:
    """A REQUEST record with as much of the body as fits, then BODY records for the rest."""
    fields: dict[str, Any] = {"method": method, "path": path, "length": len(body)}
    fields.update(window=window, content_type=content_type)
    if trace is not None:
        fields["trace"] = trace
    head = json.dumps(fields, separators=(",", ":")).encode() + b"\n"
    first = max(0, MAX_PAYLOAD - len(head))
    return [pack(REQUEST, stream, head + body[:first]), *records(BODY, stream, body[first:])]


def parse_request(payload: bytes) -> tuple[RequestHead, bytes]:
    """(head, the body's first bytes) of a REQUEST record's payload."""
    head, sep, body = payload.partition(b"\n")
    if not sep:
        raise WireError("a REQUEST record without its head line")
    try:
        fields: Any = json.loads(head)
    except ValueError:
        raise WireError("a REQUEST record's head is not JSON") from None
    if not isinstance(fields, dict) or not isinstance(fields.get("path"), str):
        raise WireError("a REQUEST record's head must name a path")
    length, window = fields.get("length", len(body)), fields.get("window", STREAM_WINDOW)
    if not isinstance(length, int) or length < len(body) or not isinstance(window, int):
        raise WireError("a REQUEST record's length and window must be whole numbers")
    method = str(fields.get("method", "POST"))
    content_type = fields.get("content_type")
    if not isinstance(content_type, str):
        content_type = "application/json"
    window = max(window, MAX_PAYLOAD)
    trace = trace_of(fields)
    return RequestHead(method, fields["path"], length, window, content_type, trace), body


def start_record(stream: int, status: int, content_type: str) -> bytes:
    """A START record."""
    return pack(START, stream, _start_head(status, content_type))


def answer_record(stream: int, status: int, content_type: str, body: bytes) -> bytes | None:
    """A whole answer as one ANSWER record; None when it does not fit in one."""
    head = _start_head(status, content_type)
    if len(head) + 1 + len(body) > MAX_PAYLOAD:
        return None
    return b"".join((_HEADER.pack(ANSWER, stream), head, b"\n", body))


def batches(records: list[bytes]) -> Iterator[bytes]:
    """``records`` as few messages as the bound allows: a lone record as it is, more in
    BATCH records of at most MAX_MESSAGE bytes."""
    room = MAX_MESSAGE - HEADER_SIZE
    group: list[bytes] = []
    size = 0
    for record in records:
        framed = _COUNT.size + len(record)
        if group and size + framed > room:
            yield _batch(group)
            group, size = [], 0
        group.append(record)
        size += framed
    if group:
        yield _batch(group)


def _batch(records: list[bytes]) -> bytes:
    if len(records) == 1:
        return records[0]
    parts = [_HEADER.pack(BATCH, 0)]
    for record in records:
        parts += (_COUNT.pack(len(record)), record)
    return b"".join(parts)


def unbatch(payload: bytes) -> Iterator[bytes]:
    """The records of a BATCH record's payload; WireError at one that overruns it."""
    view = memoryview(payload)
    offset = 0
    while offset < len(view):
        if offset + _COUNT.size > len(view):
            raise WireError("a BATCH record cut short in a length")
        (length,) = _COUNT.unpack_from(view, offset)
        offset += _COUNT.size
        if offset + length > len(view):
            raise WireError("a BATCH record cut short in a record")
        yield bytes(view[offset : offset + length])
        offset += length


def _start_head(status: int, content_type: str) -> bytes:
    fields = {"status": status, "content_type": content_type}
    return json.dumps(fields, separators=(",", ":")).encode()


def parse_start(payload: bytes) -> tuple[int, str]:
    """(status, content type) of a START record's payload; WireError when malformed."""
    try:
        fields: Any = json.loads(payload)
        status, content_type = fields["status"], fields.get("content_type")
    except (ValueError, TypeError, KeyError, AttributeError):
        raise WireError("a START record that is not {status, content_type}") from None
    if not isinstance(status, int) or not 100 <= status <= 599:
        raise WireError(f"a START record with status {status!r}")
    if content_type is not None and not isinstance(content_type, str):
        raise WireError("a START record whose content type is not a string")
    return status, content_type or "application/json"


def window_record(stream: int, count: int) -> bytes:
    """A WINDOW record: ``count`` more answer bytes may come on ``stream``."""
    return pack(WINDOW, stream, _COUNT.pack(count))


def parse_window(payload: bytes) -> int:
    """The count of a WINDOW record's payload."""
    if len(payload) != _COUNT.size:
        raise WireError("a WINDOW record's payload is not a 4-byte count")
    return int(_COUNT.unpack(payload)[0])


HEARTBEAT_RECORD = pack(HEARTBEAT, 0)


def load_record(running: int, waiting: int) -> bytes:
    return pack(LOAD, 0, json.dumps({"running": running, "waiting": waiting}).encode())


def parse_load(payload: bytes) -> tuple[int, int]:
    """(running, waiting) of a LOAD record; WireError if it is not two counts."""
    try:
        data = json.loads(payload)
        running, waiting = data["running"], data["waiting"]
    except (ValueError, TypeError, KeyError):
        raise WireError("a LOAD record that is not {running, waiting}") from None
    if not all(type(n) is int and n >= 0 for n in (running, waiting)):
        raise WireError("a LOAD record whose counts are not whole numbers")
    return running, waiting


def websocket_url(router_url: str) -> str:
    """Where a node dials, from the router's base URL (http -> ws, https -> wss)."""
    base = router_url.rstrip("/")
    if base.startswith("https://"):
        return "wss://" + base.removeprefix("https://") + CONNECT_PATH
    if base.startswith("http://"):
        return "ws://" + base.removeprefix("http://") + CONNECT_PATH
    raise WireError(f"the router's URL {router_url!r} must start with http:// or https://")
