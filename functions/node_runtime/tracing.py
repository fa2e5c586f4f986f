"""The node's spans of a request, when its router traces it.

A traced request carries ``trace``: ``{"traceparent", "export_to"}`` (and ``"tracestate"``
when the router had one), in a task's request and in a REQUEST record's head alike. The
node's span is the child of the router's span that sent it, is exported over OTLP/HTTP to
``export_to`` (service ``inference-node``), and its own traceparent goes on to the model
server in the ``traceparent`` header, so that vLLM's spans, when its operator turns its
tracing on (``--otlp-traces-endpoint``), join the same trace beneath it.

Optional and cheap when off: a request without ``trace`` makes nothing, and OpenTelemetry is
imported only for the first traced request. On, the span is a few plain fields on the
request's path, exported by a process of its own (``span_shipper``). An environment without
OpenTelemetry (the runtime itself is standard library only) makes no span of its own and
passes the router's traceparent on as it came. Prompts and answers never go into a span.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Mapping
from typing import Any, NamedTuple

from .span_shipper import Shipper, Span

TRACE_KEY = "trace"
SERVICE_NAME = "inference-node"
# Each router names its collector: a few at most. Past this many, the oldest is let go.
_MAX_EXPORTERS = 8
_FLUSH_S = 2.0  # how long a task's end waits for its spans to be exported

log = logging.getLogger("node_runtime.tracing")
_lock = threading.Lock()
_shippers: dict[str, Shipper | None] = {}  # export_to -> its shipper; None: none can be made
_missing_said = False


class TraceRequest(NamedTuple):
    """What the router asked for: the parent span's traceparent, and where spans go (a
    named tuple: a frozen dataclass takes several times as long to make, once a request)."""

    traceparent: str
    export_to: str
    tracestate: str | None = None

    def headers(self) -> dict[str, str]:
        """The router's own trace headers, passed on as they came."""
        headers = {"traceparent": self.traceparent}
        if self.tracestate:
            headers["tracestate"] = self.tracestate
        return headers

    def fields(self) -> dict[str, str]:
        """The ``trace`` field that carries this request."""
        return {"export_to": self.export_to, **self.headers()}


def trace_of(container: Mapping[str, Any]) -> TraceRequest | None:
    """The ``trace`` a request or a REQUEST head carries; None when it carries none (or one
    that is not three strings: tracing never fails a request)."""
    fields = container.get(TRACE_KEY)
    if not isinstance(fields, Mapping):
        return None
    traceparent, export_to = fields.get("traceparent"), fields.get("export_to")
    tracestate = fields.get("tracestate")
    if not (isinstance(traceparent, str) and isinstance(export_to, str)):
        return None
    if not export_to.startswith(("http://", "https://")):
        return None
    return TraceRequest(traceparent, export_to, tracestate if isinstance(tracestate, str) else None)


class NodeSpan:
    """One span of the node's part of a request; ``headers`` go on to the model server."""

    def __init__(self, name: str, asked: TraceRequest, attributes: dict[str, Any]) -> None:
        self._span: Span | None = None
        # Without the lock once made (a dict's get is atomic); None: absent, or none made.
        shipper = _shippers.get(asked.export_to) or _shipper(asked.export_to)
        parent = sampled_parent(asked.traceparent)
        if shipper is None or parent is None:
            # sampled as the router decided: a node never starts a trace of its own
            self.headers = asked.headers()
            return
        self._span = span = Span(shipper, name, parent[0], parent[1], attributes, True, True)
        self.headers = {"traceparent": span.traceparent}
        if asked.tracestate:
            self.headers["tracestate"] = asked.tracestate

    def set(self, **attributes: Any) -> None:
        """Attributes learnt along the way (a status, whether a server started); those of
        None are left out (by the export process)."""
        if self._span is not None:
            self._span.attributes.update(attributes)

    def end(self, status: int | None = None, error: str | None = None) -> None:
        """End the span: an answer's status (5xx, or ``error``, marks it failed)."""
        if self._span is None:
            return
        if status is not None:
            self._span.set_attribute("http.response.status_code", status)
        if error is not None or (status is not None and status >= 500):
            self._span.fail(error)
        self._span.end()
        self._span = None


def begin(name: str, asked: TraceRequest | None, **attributes: Any) -> NodeSpan | None:
    """The span of ``name`` under the router's, or None when the request is not traced."""
    if asked is None:
        return None
    return NodeSpan(name, asked, attributes)


def flush() -> None:
    """Send the spans made so far (a task's end: its worker may not live to send them)."""
    with _lock:
        made = [shipper for shipper in _shippers.values() if shipper is not None]
    for shipper in made:
        shipper.ship(_FLUSH_S)


def sampled_parent(traceparent: str) -> tuple[int, int] | None:
    """(trace id, span id) of a W3C ``traceparent`` whose sampled flag is set; None for one
    that is not sampled or does not parse. The router writes it (``Span.traceparent``); read
    here by hand, as OpenTelemetry's propagator took 50 µs of a request's time in the
    agent, where this takes a few."""
    parts = traceparent.split("-")
    if len(parts) != 4 or parts[0] != "00" or (len(parts[1]), len(parts[2])) != (32, 16):
        return None
    try:
        trace_id, span_id, flags = int(parts[1], 16), int(parts[2], 16), int(parts[3], 16)
    except ValueError:
        return None
    if not (trace_id and span_id and flags & 1) or len(parts[3]) != 2:
        return None
    return trace_id, span_id


def _shipper(export_to: str) -> Shipper | None:
    """The shipper that exports to ``export_to``, made on first use; None without
    OpenTelemetry."""
    global _missing_said
    with _lock:
        if export_to in _shippers:
            return _shippers[export_to]
        if len(_shippers) >= _MAX_EXPORTERS:
            oldest = _shippers.pop(next(iter(_shippers)))
            if oldest is not None:  # its last spans go out beside the request, not in it
                threading.Thread(target=oldest.close, daemon=True).start()
        made: Shipper | None = None
        try:
            made = _made(export_to)
        except ImportError as err:
            if not _missing_said:
                log.warning("tracing: OpenTelemetry is missing (%s); no node spans", err)
                _missing_said = True
        _shippers[export_to] = made
        return made


def _made(export_to: str) -> Shipper:
    from .version import __version__

    resource = {
        "service.name": SERVICE_NAME,
        "service.version": __version__,
        "host.name": socket.gethostname(),
    }
    return Shipper(export_to, resource, "node_runtime")
