"""OpenTelemetry traces of the router's requests, exported over OTLP/HTTP (README, "Traces").

Off unless the settings' ``tracing.otlp_endpoint`` names a collector: then ``Tracing.begin``
returns None, ``span`` returns one shared no-op context manager, and the data plane and the
dispatcher find no current trace: no span object is made and nothing goes to the nodes.

On, a request is one trace: its root span ``request`` (the client's ``traceparent``, when
it sends one, is its parent) and one child a step: ``authenticate``, ``check``, ``place``,
``limits``, ``wait`` (a task that starts the model), ``relay`` (the request's trip to its
server and back, down a connection or through a task) and ``record``. The relay's context
goes to the node with the request (``node_runtime.tracing``: the REQUEST head's or the
task's ``trace``), so the node's span, and vLLM's beneath it, join the same trace.

The request's trace is current in its task and the tasks it starts (a context variable):
the data plane and the dispatcher find it there without being handed it. Span attributes
name the request (its id, operation, model, cluster, path, server, status), never a prompt,
an answer or a caller.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from inference_bundle.config.tracing_settings import TracingSettings

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

__all__ = [
    "RequestTrace",
    "Span",
    "Tracing",
    "current",
    "end_request",
    "ended",
    "failed",
    "span",
    "submit",
]

_PROPAGATOR = TraceContextTextMapPropagator()
_CURRENT: ContextVar[RequestTrace | None] = ContextVar("router_request_trace", default=None)
_OFF: contextlib.nullcontext[None] = contextlib.nullcontext()
_FLUSH_MS = 5000


class RequestTrace:
    """One request's trace: its root span, and the children of its steps."""

    def __init__(self, tracer: trace.Tracer, root: Span, export_to: str) -> None:
        self.tracer = tracer
        self.root = root
        self.export_to = export_to
        self.ended = False
        self._context = trace.set_span_in_context(root)

    def start(self, name: str, **attributes: Any) -> Span:
        """A child of the root, ended by its caller."""
        return self.tracer.start_span(name, context=self._context, attributes=attributes)

    @contextlib.contextmanager
    def child(self, name: str, **attributes: Any) -> Iterator[Span]:
        """A child of the root for the ``with`` block; an error leaving it marks it failed."""
        span = self.start(name, **attributes)
        try:
            yield span
        except BaseException as err:
            failed(span, err)
            raise
        finally:
            span.end()

    def carried(self, span: Span) -> dict[str, str]:
        """The ``trace`` that takes ``span``'s context to the node (``node_runtime.tracing``)."""
        fields = {"export_to": self.export_to}
        _PROPAGATOR.inject(fields, context=trace.set_span_in_context(span))
        return fields

    def end(self, status: int, **attributes: Any) -> None:
        """End the root span with the request's answer (once: later calls do nothing)."""
        if self.ended:
            return
        self.ended = True
        self.root.set_attributes({k: v for k, v in attributes.items() if v is not None})
        ended(self.root, status)


class Tracing:
    """The router's tracer, from its settings; off when no collector is named."""

    def __init__(self, settings: TracingSettings | None = None) -> None:
        settings = settings or TracingSettings()
        self.export_to = settings.traces_url()
        self._provider: TracerProvider | None = None
        self._tracer: trace.Tracer | None = None
        if self.export_to is not None:
            self._provider = _provider(settings, self.export_to)
            self._tracer = self._provider.get_tracer("inference_bundle.router")

    @property
    def enabled(self) -> bool:
        return self._tracer is not None

    def begin(self, operation: str, headers: Mapping[str, str]) -> RequestTrace | None:
        """A request's trace, current from now on in its task; None when tracing is off or
        the request is not sampled (then it makes no span, here or on its node)."""
        if self._tracer is None or self.export_to is None:
            if _CURRENT.get() is not None:  # another router's, in a test's one task
                _CURRENT.set(None)
            return None
        root = self._tracer.start_span(
            "request",
            context=_PROPAGATOR.extract(headers),  # the client's traceparent, if any
            kind=SpanKind.SERVER,
            attributes={"operation": operation},
        )
        if not root.is_recording():
            _CURRENT.set(None)
            return None
        request_trace = RequestTrace(self._tracer, root, self.export_to)
        _CURRENT.set(request_trace)
        return request_trace

    def flush(self) -> None:
        """Send every span ended so far (tests; the exporter sends them in batches)."""
        if self._provider is not None:
            self._provider.force_flush(_FLUSH_MS)

    def shutdown(self) -> None:
        """Send what is left and stop the exporter."""
        if self._provider is not None:
            self._provider.shutdown()


def current() -> RequestTrace | None:
    """The trace of the request this task serves, if it is traced."""
    return _CURRENT.get()


def span(name: str, request_trace: RequestTrace | None, **attributes: Any) -> Any:
    """A context manager: a child span of ``request_trace`` for the ``with`` block, or a
    shared one that does nothing when the request is not traced."""
    if request_trace is None:
        return _OFF
    return request_trace.child(name, **attributes)


def end_request(
    request_trace: RequestTrace | None, err: BaseException, request_id: str | None
) -> None:
    """A request that failed before its answer was recorded (a 401, a 404): its root ends
    with the error's status (500 for an error with none)."""
    if request_trace is not None and not request_trace.ended:
        status = _status_of(err) or 500
        request_trace.end(status, request_id=request_id, error=type(err).__name__)


def submit(executor: Any, function: Callable[..., Any], *args: Any) -> Future[Any]:
    """``executor.submit(function, version, spec, request)``; in a traced request, as a span
    that ends with the task (``wait`` for a task that only starts the server, ``relay`` for
    one that carries the request) and whose context the task's request carries to the node."""
    request_trace = _CURRENT.get()
    if request_trace is None:
        future: Future[Any] = executor.submit(function, *args)
        return future
    version, spec, request = args
    name = "wait" if request.get("send") is False else "relay"
    task_span = request_trace.start(name, via="task")
    carried = {**request, "trace": request_trace.carried(task_span)}
    future = executor.submit(function, version, spec, carried)
    future.add_done_callback(lambda done: _task_ended(task_span, done))
    return future


def ended(span: Span, status: int | None = None, why: str | None = None) -> None:
    """End ``span`` with an answer's status (a 5xx or ``why`` marks it failed)."""
    if status is not None:
        span.set_attribute("http.response.status_code", status)
    if why is not None or (status is not None and status >= 500):
        span.set_status(Status(StatusCode.ERROR, why))
    span.end()


def failed(span: Span, err: BaseException) -> None:
    """Mark ``span`` failed by ``err``: its type and status, never its message (a backend's
    error may quote the request)."""
    status = _status_of(err)
    if status is not None:
        span.set_attribute("http.response.status_code", status)
    if status is None or status >= 500:
        span.set_status(Status(StatusCode.ERROR, type(err).__name__))
    code = getattr(err, "code", None)
    if isinstance(code, str):
        span.set_attribute("error.code", code)


def _status_of(err: BaseException) -> int | None:
    status = getattr(err, "status", None)
    return status if isinstance(status, int) else None


def _task_ended(task_span: Span, done: Future[Any]) -> None:
    error = None if done.cancelled() else done.exception()
    if done.cancelled() or error is not None:
        ended(task_span, why="cancelled" if error is None else type(error).__name__)
        return
    result = done.result()
    status = result.get("status") if isinstance(result, dict) else None
    ended(task_span, status if isinstance(status, int) else None)


def _provider(settings: TracingSettings, export_to: str) -> TracerProvider:
    # The SDK and its exporter load only when traces are on.
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    provider = TracerProvider(
        resource=Resource.create({"service.name": settings.service_name}),
        sampler=ParentBased(TraceIdRatioBased(settings.sample_ratio)),
    )
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=export_to)))
    return provider
