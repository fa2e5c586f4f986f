"""Spans made cheaply on a request's path, exported by a thread of their own.

OpenTelemetry's SDK makes a span in tens of microseconds (its attribute checks, locks and
span processors) and ends it in as many again: the router's eight spans a request added
about 0.22 ms to it. Here a span is a few plain fields while the request runs
(``Span``); ended, it waits in a bounded queue, and the ``Shipper``'s thread makes it the
SDK's ``ReadableSpan`` once a second and hands a batch to the SDK's OTLP/HTTP exporter. The
SDK still makes the ids and encodes and posts the spans; ``traceparent`` is read and written
by its propagator (``node_runtime.tracing``, ``router.tracing``).

Used by the router (``inference_bundle.router.tracing``) and by the node
(``node_runtime.tracing``) alike. Standard library only until a ``Shipper`` is made, which
imports the SDK: an environment without OpenTelemetry never makes one.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Mapping
from typing import Any

__all__ = ["Shipper", "Span"]

log = logging.getLogger("node_runtime.span_shipper")
SHIP_S = 1.0  # how often the thread exports what ended
_BATCH = 512  # spans an export at most (the SDK's batch processor's default)
_QUEUE = 16_384  # ended spans kept at most; past it the oldest are dropped


class Span:
    """One span, as plain fields until it is exported. ``parent_id`` is None for a trace's
    first span; ``remote``: the parent is another process's (a client's, a router's)."""

    __slots__ = (
        "attributes",
        "end_ns",
        "error",
        "name",
        "parent_id",
        "remote",
        "server",
        "shipper",
        "span_id",
        "start_ns",
        "trace_id",
    )

    def __init__(
        self,
        shipper: Shipper,
        name: str,
        trace_id: int,
        parent_id: int | None,
        attributes: dict[str, Any],
        remote: bool = False,
        server: bool = False,
    ) -> None:
        self.shipper = shipper
        self.name = name
        self.trace_id = trace_id
        self.span_id = shipper.new_span_id()
        self.parent_id = parent_id
        self.remote = remote
        self.server = server  # kind SERVER (a request's first span here), else INTERNAL
        self.attributes = attributes
        self.error: str | None = None  # set: the span failed (its status is ERROR)
        self.start_ns = time.time_ns()
        self.end_ns: int | None = None

    def set_attribute(self, key: str, value: Any) -> None:
        self.attributes[key] = value

    def fail(self, description: str | None) -> None:
        self.error = description or ""

    def end(self) -> None:
        """End the span (once) and queue it for export."""
        if self.end_ns is None:
            self.end_ns = time.time_ns()
            self.shipper.queue.append(self)

    @property
    def traceparent(self) -> str:
        """This span's W3C traceparent (sampled): its children's parent elsewhere."""
        return f"00-{self.trace_id:032x}-{self.span_id:016x}-01"


class Shipper:
    """Ended spans of one service, exported to ``export_to`` (OTLP/HTTP) by a thread."""

    def __init__(self, export_to: str, resource: Mapping[str, str], scope: str) -> None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
        from opentelemetry.sdk.util.instrumentation import InstrumentationScope

        self.export_to = export_to
        self.queue: deque[Span] = deque(maxlen=_QUEUE)  # appends are atomic: no lock
        ids = RandomIdGenerator()
        self.new_trace_id = ids.generate_trace_id
        self.new_span_id = ids.generate_span_id
        self._resource = Resource.create(dict(resource))
        self._scope = InstrumentationScope(scope)
        self._exporter = OTLPSpanExporter(endpoint=export_to)
        self._lock = threading.Lock()  # one export at a time: the thread's or a flush
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._run, name="span-shipper", daemon=True)
        self._thread.start()

    def ship(self) -> None:
        """Export every span ended so far, in batches."""
        with self._lock:
            while self.queue:
                batch: list[Any] = []
                while self.queue and len(batch) < _BATCH:
                    batch.append(self._readable(self.queue.popleft()))
                try:
                    self._exporter.export(batch)
                except Exception:  # a collector that fails loses its batch, never a request
                    log.exception("traces: an export failed; %d spans dropped", len(batch))

    def close(self) -> None:
        """Export what is left and stop."""
        self._closing.set()
        self._thread.join(timeout=30)
        self.ship()
        self._exporter.shutdown()  # type: ignore[no-untyped-call]

    def _run(self) -> None:
        while not self._closing.wait(SHIP_S):
            self.ship()

    def _readable(self, span: Span) -> Any:
        from opentelemetry.sdk.trace import ReadableSpan
        from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

        sampled = TraceFlags(TraceFlags.SAMPLED)
        parent = None
        if span.parent_id is not None:
            parent = SpanContext(span.trace_id, span.parent_id, span.remote, sampled)
        status = Status() if span.error is None else Status(StatusCode.ERROR, span.error or None)
        return ReadableSpan(
            span.name,
            context=SpanContext(span.trace_id, span.span_id, False, sampled),
            parent=parent,
            resource=self._resource,
            attributes={k: v for k, v in span.attributes.items() if v is not None},
            kind=SpanKind.SERVER if span.server else SpanKind.INTERNAL,
            status=status,
            start_time=span.start_ns,
            end_time=span.end_ns,
            instrumentation_scope=self._scope,
        )
