"""The process that encodes and posts a ``Shipper``'s spans (``span_shipper``).

    python -m node_runtime.span_export EXPORT_TO RESOURCE_JSON SCOPE

Its parent writes frames to its stdin, each a 4-byte length and a pickle: ``("spans",
[fields, ...])`` (the tuples ``Span.end`` queues, a span id of None made here; or a
request's steps in a row, ``steps``) or ``("flush",)``, answered with one byte on stdout
once everything before it was exported.
It makes each span the SDK's ``ReadableSpan`` and exports batches with the SDK's OTLP/HTTP
exporter; at the end of its stdin (its parent stopped or died) it exports what is left and
exits.

The encoding is here, not in a thread of the parent, because a thread of the parent would
hold the parent's interpreter lock while it works: the router's and the node's requests
would wait for it.
"""

from __future__ import annotations

import json
import logging
import pickle
import struct
import sys
from collections.abc import Iterator
from typing import IO, Any

FRAME = struct.Struct("!I")
FLUSHED = b"\x01"
_BATCH = 512  # spans an export at most (the SDK's batch processor's default)
_STEPS_FIELDS = 4  # a record of ``steps``; a span's has 10

log = logging.getLogger("node_runtime.span_export")


def read_frame(stream: IO[bytes]) -> tuple[Any, ...] | None:
    """The next frame's message; None at the end of the stream."""
    head = stream.read(FRAME.size)
    if len(head) < FRAME.size:
        return None
    body = stream.read(FRAME.unpack(head)[0])
    message: tuple[Any, ...] = pickle.loads(body)
    return message


def frame(message: tuple[Any, ...]) -> bytes:
    body = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return FRAME.pack(len(body)) + body


def steps(
    trace_id: int, parent_id: int, marks: list[tuple[str, int]], ended: int
) -> Iterator[tuple[Any, ...]]:
    """The fields of each span of a request's steps in a row, as the router's ``Steps``
    queues them in one record: (trace id, parent id, [(name, start), ...], the last's end);
    each step ends where the next begins."""
    ends = [began for _, began in marks[1:]]
    ends.append(ended)
    for (name, began), end in zip(marks, ends, strict=True):
        yield (name, trace_id, None, parent_id, False, False, {}, None, began, end)


def main(argv: list[str]) -> None:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import ReadableSpan
    from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
    from opentelemetry.sdk.util.instrumentation import InstrumentationScope
    from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

    export_to, resource_json, scope_name = argv
    resource = Resource.create(json.loads(resource_json))
    scope = InstrumentationScope(scope_name)
    exporter = OTLPSpanExporter(endpoint=export_to)
    sampled = TraceFlags(TraceFlags.SAMPLED)
    unset = Status()
    new_span_id = RandomIdGenerator().generate_span_id

    def readable(fields: tuple[Any, ...]) -> ReadableSpan:
        name, trace_id, span_id, parent_id, remote, server, attributes, error, began, ended = fields
        if span_id is None:  # a span no other is the child of: its id is made here
            span_id = new_span_id()
        parent = None
        if parent_id is not None:
            parent = SpanContext(trace_id, parent_id, remote, sampled)
        return ReadableSpan(
            name,
            context=SpanContext(trace_id, span_id, False, sampled),
            parent=parent,
            resource=resource,
            attributes={k: v for k, v in attributes.items() if v is not None},
            kind=SpanKind.SERVER if server else SpanKind.INTERNAL,
            status=unset if error is None else Status(StatusCode.ERROR, error or None),
            start_time=began,
            end_time=ended,
            instrumentation_scope=scope,
        )

    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    while (message := read_frame(stdin)) is not None:
        if message[0] == "flush":
            stdout.write(FLUSHED)
            stdout.flush()
            continue
        spans = [
            span
            for fields in message[1]
            for span in (steps(*fields) if len(fields) == _STEPS_FIELDS else (fields,))
        ]
        for start in range(0, len(spans), _BATCH):
            try:
                exporter.export([readable(f) for f in spans[start : start + _BATCH]])
            except Exception:  # a collector that fails loses this batch, nothing more
                log.exception("traces: an export to %s failed", export_to)
    exporter.shutdown()  # type: ignore[no-untyped-call]


if __name__ == "__main__":
    main(sys.argv[1:])
