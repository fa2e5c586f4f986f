"""Spans made cheaply on a request's path, exported by a process of their own.

OpenTelemetry's SDK makes a span in tens of microseconds (its attribute checks, locks and
span processors) and ends it in as many again, and encoding it costs as much: the router's
eight spans a request added about 0.22 ms to it. Here a span is a few plain fields while the
request runs (``Span``); ended, it waits in a bounded queue, and once a second the
``Shipper``'s thread pickles what ended down a pipe to its export process
(``span_export``), which makes each the SDK's ``ReadableSpan`` and hands batches to the SDK's
OTLP/HTTP exporter. Encoding there keeps it off this process's interpreter lock, which a
thread here would hold while the requests wait. Ids are random bits, as the SDK's
generator makes them; the SDK still encodes and posts the spans.

Used by the router (``inference_bundle.router.tracing``) and by the node
(``node_runtime.tracing``) alike. Standard library only until a ``Shipper`` is made, which
imports the SDK: an environment without OpenTelemetry never makes one.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import random
import select
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Mapping
from typing import Any

from .span_export import FLUSHED, frame

__all__ = ["Shipper", "Span"]

log = logging.getLogger("node_runtime.span_shipper")
SHIP_S = 1.0  # how often the thread sends what ended to the export process
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
        self.span_id = shipper.new_span_id() or 1  # 0 is no span
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
            # A tuple of plain values, which the garbage collector stops tracking: spans
            # waiting for the next round add nothing to its collections of old objects.
            self.shipper.queue.append(
                (
                    self.name,
                    self.trace_id,
                    self.span_id,
                    self.parent_id,
                    self.remote,
                    self.server,
                    self.attributes,  # None values are left out by the export process
                    self.error,
                    self.start_ns,
                    self.end_ns,
                )
            )

    @property
    def traceparent(self) -> str:
        """This span's W3C traceparent (sampled): its children's parent elsewhere."""
        return f"00-{self.trace_id:032x}-{self.span_id:016x}-01"


class Shipper:
    """Ended spans of one service, sent once a second by a thread to an export process
    that posts them to ``export_to`` (OTLP/HTTP)."""

    def __init__(self, export_to: str, resource: Mapping[str, str], scope: str) -> None:
        # ImportError here, without OpenTelemetry's SDK: no shipper, no process.
        import opentelemetry.sdk.trace  # noqa: F401

        self.export_to = export_to
        # Ended spans' fields (the tuples ``Span.end`` makes); appends are atomic: no lock.
        self.queue: deque[tuple[Any, ...]] = deque(maxlen=_QUEUE)
        # As the SDK's RandomIdGenerator makes them, less its Python frame (the callers
        # turn a 0, no id, into 1).
        self.new_trace_id = functools.partial(random.getrandbits, 128)
        self.new_span_id = functools.partial(random.getrandbits, 64)
        self._argv = [
            sys.executable,
            "-m",
            "node_runtime.span_export",
            export_to,
            json.dumps(dict(resource)),
            scope,
        ]
        self._child: subprocess.Popen[bytes] | None = None
        self._process()  # it imports the SDK while the first spans are made
        self._lock = threading.Lock()  # one sender at a time: the thread's or a flush
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._run, name="span-shipper", daemon=True)
        self._thread.start()

    def ship(self, wait_s: float = 0.0) -> None:
        """Send every span ended so far to the export process; ``wait_s``: and wait at most
        that long for it to have exported them (tests, and a task's end: its worker may not
        live long). A collector that is down holds up no more than that."""
        wait = wait_s > 0
        if not self._lock.acquire(timeout=wait_s if wait else -1):
            log.warning("traces: spans still on their way to the collector after %.0f s", wait_s)
            return
        try:
            spans = []
            while self.queue:
                spans.append(self.queue.popleft())
            if not spans and (not wait or self._child is None):
                return  # nothing to send, or to wait for
            child = self._process()
            if child is None or child.stdin is None or child.stdout is None:
                return
            try:
                if spans:
                    child.stdin.write(frame(("spans", spans)))
                if wait:
                    child.stdin.write(frame(("flush",)))
                child.stdin.flush()
                if wait:
                    ready, _, _ = select.select([child.stdout], [], [], wait_s)
                    if not ready or os.read(child.stdout.fileno(), 1) != FLUSHED:
                        log.warning("traces: the export process did not answer a flush")
            except OSError as err:  # it died: the next round starts another
                log.warning(
                    "traces: the export process is gone (%r); %d spans lost", err, len(spans)
                )
        finally:
            self._lock.release()

    def close(self, wait_s: float = 10.0) -> None:
        """Export what is left (waiting at most ``wait_s`` for it) and stop."""
        self._closing.set()
        self._thread.join(timeout=wait_s)
        if self._thread.is_alive() and self._child is not None:
            self._child.kill()  # stuck on a collector that does not answer: its spans go
        self.ship(wait_s)
        child = self._child
        if child is not None and child.stdin is not None:
            try:
                child.stdin.close()  # its end of input: it exports what is left, and exits
                child.wait(timeout=wait_s)
            except (OSError, subprocess.TimeoutExpired):
                child.kill()

    def _process(self) -> subprocess.Popen[bytes] | None:
        """The export process, started again if it died."""
        if self._child is not None and self._child.poll() is None:
            return self._child
        try:
            self._child = subprocess.Popen(
                self._argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, close_fds=True
            )
        except OSError as err:
            log.warning("traces: the export process could not start: %r", err)
            self._child = None
        return self._child

    def _run(self) -> None:
        while not self._closing.wait(SHIP_S):
            self.ship()
