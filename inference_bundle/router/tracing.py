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

On the request's path a span is a few plain fields, exported by a process of its own
(``node_runtime.span_shipper``: the SDK's own spans cost tens of microseconds each to make,
and as much to encode, under the router's interpreter lock); the steps that follow one another
in a request (authenticate, check, place, limits) are a name and a time each until the last
ends (``Steps``). The SDK still decides sampling (``ParentBased(TraceIdRatioBased)``), reads
the client's ``traceparent``, and encodes and posts the spans.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from node_runtime.span_shipper import Shipper, Span
from opentelemetry import trace
from opentelemetry.trace import SpanContext, SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from inference_bundle.config.tracing_settings import TracingSettings

if TYPE_CHECKING:
    from opentelemetry.sdk.trace.sampling import Sampler

__all__ = [
    "RequestTrace",
    "Span",
    "Step",
    "Tracing",
    "current",
    "end_request",
    "ended",
    "failed",
    "span",
    "steps",
    "submit",
]

_PROPAGATOR = TraceContextTextMapPropagator()
_CURRENT: ContextVar[RequestTrace | None] = ContextVar("router_request_trace", default=None)
_OFF: contextlib.nullcontext[None] = contextlib.nullcontext()
_FLUSH_S = 10.0  # how long a flush waits for the spans to be exported


class RequestTrace:
    """One request's trace: its root span, and the children of its steps."""

    def __init__(
        self, shipper: Shipper, operation: str, trace_id: int, parent: SpanContext | None = None
    ) -> None:
        self.shipper = shipper
        self.export_to = shipper.export_to
        attributes = {"operation": operation}
        if parent is None:
            self.root = Span(shipper, "request", trace_id, None, attributes, server=True)
            self.tracestate = ""
        else:  # the client's span
            self.root = Span(
                shipper, "request", trace_id, parent.span_id, attributes, remote=True, server=True
            )
            self.tracestate = parent.trace_state.to_header()
        self.ended = False

    def start(self, name: str, **attributes: Any) -> Span:
        """A child of the root, ended by its caller."""
        root = self.root
        return Span(self.shipper, name, root.trace_id, root.span_id, attributes)

    def child(self, name: str, **attributes: Any) -> Step:
        """A child of the root that nothing else is the child of (a step), ended by its
        caller or by leaving its ``with`` block (an error leaving it marks it failed)."""
        return Step(self, name, attributes)

    def carried(self, step: Span) -> dict[str, str]:
        """The ``trace`` that takes ``step``'s context to the node (``node_runtime.tracing``)."""
        fields = {"export_to": self.export_to, "traceparent": step.traceparent}
        if self.tracestate:
            fields["tracestate"] = self.tracestate
        return fields

    def end(self, status: int, **attributes: Any) -> None:
        """End the root span with the request's answer (once: later calls do nothing);
        attributes of None are left out (by the export process)."""
        if self.ended:
            return
        self.ended = True
        self.root.attributes.update(attributes)
        ended(self.root, status)


class Step:
    """A step's span, lighter than a ``Span``: no span is its child, so its id is left to the
    export process (a span id of None), and it ends as one tuple. A context manager
    (a class: a generator-based one costs more)."""

    __slots__ = ("attributes", "end_ns", "error", "name", "start_ns", "trace")

    def __init__(
        self,
        trace: RequestTrace,
        name: str,
        attributes: dict[str, Any],
        start_ns: int | None = None,
    ) -> None:
        self.trace = trace
        self.name = name
        self.attributes = attributes
        self.error: str | None = None
        self.end_ns: int | None = None
        self.start_ns = time.time_ns() if start_ns is None else start_ns

    def set_attribute(self, key: str, value: Any) -> None:
        self.attributes[key] = value

    def fail(self, description: str | None) -> None:
        self.error = description or ""

    def end(self, end_ns: int | None = None) -> None:
        """End the step (once; now, unless ``end_ns`` says when) and queue it for export."""
        if self.end_ns is None:
            self.end_ns = end_ns = time.time_ns() if end_ns is None else end_ns
            trace = self.trace
            root = trace.root
            trace.shipper.queue.append(
                (
                    self.name,
                    root.trace_id,
                    None,  # its id: the export process makes one
                    root.span_id,
                    False,
                    False,
                    self.attributes,
                    self.error,
                    self.start_ns,
                    end_ns,
                )
            )

    def __enter__(self) -> Step:
        return self

    def __exit__(self, kind: Any, err: BaseException | None, traceback: Any) -> None:
        if err is not None:
            failed(self, err)
        self.end()


class Steps:
    """Steps that follow one another in a ``with`` block (authenticate, check, place,
    limits): ``begin`` ends the step before it and begins the next, leaving the block ends
    the last, and an error leaving it marks that one failed. A name and a time a step (a
    ``Step`` each would cost several times as much), queued as one record that the export
    process makes a span of each step of (``span_export.steps``)."""

    __slots__ = ("marks", "trace")

    def __init__(self, trace: RequestTrace) -> None:
        self.trace = trace
        self.marks: list[tuple[str, int]] = []

    def begin(self, name: str) -> None:
        self.marks.append((name, time.time_ns()))

    def __enter__(self) -> Steps:
        return self

    def __exit__(self, kind: Any, err: BaseException | None, traceback: Any) -> None:
        marks, trace = self.marks, self.trace
        if not marks:
            return
        ended_ns = time.time_ns()
        root = trace.root
        queue = trace.shipper.queue
        if err is None:  # one record; the export process makes a span of each step
            queue.append((root.trace_id, root.span_id, marks, ended_ns))
            return
        *done, last = marks
        if done:
            queue.append((root.trace_id, root.span_id, done, last[1]))
        step = Step(trace, last[0], {}, last[1])
        failed(step, err)  # the step the error left
        step.end(ended_ns)


class _NoSteps:
    """``Steps`` of a request that is not traced: nothing."""

    __slots__ = ()

    def begin(self, name: str) -> None:
        pass

    def __enter__(self) -> _NoSteps:
        return self

    def __exit__(self, kind: Any, err: BaseException | None, traceback: Any) -> None:
        pass


_NO_STEPS = _NoSteps()


class Tracing:
    """The router's traces, from its settings; off when no collector is named."""

    def __init__(self, settings: TracingSettings | None = None) -> None:
        settings = settings or TracingSettings()
        self.export_to = settings.traces_url()
        self._shipper: Shipper | None = None
        self._sampler: Sampler | None = None
        self._every = False
        if self.export_to is not None:
            # The SDK and its exporter load only when traces are on.
            from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

            self._sampler = ParentBased(TraceIdRatioBased(settings.sample_ratio))
            self._every = settings.sample_ratio >= 1.0  # no client parent: always sampled
            resource = {"service.name": settings.service_name}
            self._shipper = Shipper(self.export_to, resource, "inference_bundle.router")

    @property
    def enabled(self) -> bool:
        return self._shipper is not None

    def begin(self, operation: str, headers: Mapping[str, str]) -> RequestTrace | None:
        """A request's trace, current from now on in its task; None when tracing is off or
        the request is not sampled (then it makes no span, here or on its node)."""
        shipper, sampler = self._shipper, self._sampler
        if shipper is None or sampler is None:
            if _CURRENT.get() is not None:  # another router's, in a test's one task
                _CURRENT.set(None)
            return None
        parent, context = None, None
        if "traceparent" in headers:  # the client's span, if its header parses
            context = _PROPAGATOR.extract(headers)
            found = trace.get_current_span(context).get_span_context()
            parent = found if found.is_valid else None
        trace_id = (shipper.new_trace_id() or 1) if parent is None else parent.trace_id
        if parent is not None or not self._every:
            decided = sampler.should_sample(context, trace_id, "request", SpanKind.SERVER)
            if not decided.decision.is_sampled():  # type: ignore[no-untyped-call]
                _CURRENT.set(None)
                return None
        request_trace = RequestTrace(shipper, operation, trace_id, parent)
        _CURRENT.set(request_trace)
        return request_trace

    def flush(self) -> None:
        """Export every span ended so far, and wait for it (tests; spans go out each second)."""
        if self._shipper is not None:
            self._shipper.ship(_FLUSH_S)

    def shutdown(self) -> None:
        """Send what is left and stop the exporter."""
        if self._shipper is not None:
            self._shipper.close()


def current() -> RequestTrace | None:
    """The trace of the request this task serves, if it is traced."""
    return _CURRENT.get()


def span(name: str, request_trace: RequestTrace | None, **attributes: Any) -> Any:
    """A context manager: a child span of ``request_trace`` for the ``with`` block, or a
    shared one that does nothing when the request is not traced."""
    if request_trace is None:
        return _OFF
    return Step(request_trace, name, attributes)


def steps(request_trace: RequestTrace | None) -> Steps | _NoSteps:
    """The request's ``Steps`` for a ``with`` block; ones that do nothing when it is not
    traced."""
    return _NO_STEPS if request_trace is None else Steps(request_trace)


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


def ended(span: Span | Step, status: int | None = None, why: str | None = None) -> None:
    """End ``span`` with an answer's status (a 5xx or ``why`` marks it failed)."""
    if status is not None:
        span.attributes["http.response.status_code"] = status
    if why is not None or (status is not None and status >= 500):
        span.fail(why)
    span.end()


def failed(span: Span | Step, err: BaseException) -> None:
    """Mark ``span`` failed by ``err``: its type and status, never its message (a backend's
    error may quote the request)."""
    status = _status_of(err)
    if status is not None:
        span.set_attribute("http.response.status_code", status)
    if status is None or status >= 500:
        span.fail(type(err).__name__)
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
