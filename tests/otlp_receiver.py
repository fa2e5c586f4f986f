"""An OTLP/HTTP trace receiver in this process: what a collector is sent, span by span.

It speaks the collector's protocol (``POST /v1/traces``, an ``ExportTraceServiceRequest`` in
protobuf, gzip or not) on 127.0.0.1, and keeps every span with the service that sent it.
Beside it, a model server's stand-in for the node runtime's ``handle`` that keeps the
headers it is sent (where vLLM reads a request's traceparent).
"""

from __future__ import annotations

import gzip
import http.server
import json
import threading
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from node_runtime import proxy
from node_runtime.server import ServerHandle
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue


@dataclass(frozen=True)
class ReceivedSpan:
    service: str
    name: str
    trace_id: str  # hex, as in a traceparent
    span_id: str
    parent_id: str  # "" for a trace's root
    attributes: dict[str, Any]
    error: bool  # its status is ERROR


class OTLPReceiver(http.server.ThreadingHTTPServer):
    """Collects the spans posted to it (``spans``); ``url`` is its base URL."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.spans: list[ReceivedSpan] = []
        self.posts = 0
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def traces(self) -> dict[str, list[ReceivedSpan]]:
        """The spans received so far, by trace id."""
        by_trace: dict[str, list[ReceivedSpan]] = defaultdict(list)
        with self.lock:
            for span in self.spans:
                by_trace[span.trace_id].append(span)
        return dict(by_trace)

    def take(self, payload: bytes) -> None:
        request = ExportTraceServiceRequest.FromString(payload)
        received = []
        for resource_spans in request.resource_spans:
            resource = _attributes(resource_spans.resource.attributes)
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    received.append(
                        ReceivedSpan(
                            service=str(resource.get("service.name", "")),
                            name=span.name,
                            trace_id=span.trace_id.hex(),
                            span_id=span.span_id.hex(),
                            parent_id=span.parent_span_id.hex(),
                            attributes=_attributes(span.attributes),
                            error=span.status.code == span.status.STATUS_CODE_ERROR,
                        )
                    )
        with self.lock:
            self.posts += 1
            self.spans.extend(received)


class _Handler(http.server.BaseHTTPRequestHandler):
    server: OTLPReceiver

    def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
        payload = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if self.headers.get("Content-Encoding") == "gzip":
            payload = gzip.decompress(payload)
        if self.path != "/v1/traces":
            self.send_error(404)
            return
        self.server.take(payload)
        _answer(self, ExportTraceServiceResponse().SerializeToString(), "application/x-protobuf")

    def log_message(self, *args: Any) -> None:
        pass


def _answer(handler: http.server.BaseHTTPRequestHandler, raw: bytes, media_type: str) -> None:
    handler.send_response(200)
    handler.send_header("Content-Type", media_type)
    handler.send_header("Content-Length", str(len(raw)))
    handler.end_headers()
    handler.wfile.write(raw)


def _attributes(pairs: Any) -> dict[str, Any]:
    return {pair.key: _value(pair.value) for pair in pairs if isinstance(pair, KeyValue)}


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    return None if kind is None else getattr(value, kind)


@contextmanager
def otlp_receiver() -> Iterator[OTLPReceiver]:
    """A receiver serving in a thread until the block ends."""
    receiver = OTLPReceiver()
    thread = threading.Thread(target=receiver.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        receiver.shutdown()
        receiver.server_close()


class _ModelServer(http.server.BaseHTTPRequestHandler):
    """A model server's HTTP face: a chat answer, and the headers each request came with."""

    protocol_version = "HTTP/1.1"
    seen: list[dict[str, str]]

    def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
        self.rfile.read(int(self.headers["Content-Length"]))
        self.seen.append(dict(self.headers.items()))
        message = {"role": "assistant", "content": "an answer"}
        answer = {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "created": 1,
            "model": "local/tiny-llama",
            "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
        }
        _answer(self, json.dumps(answer).encode(), "application/json")

    def log_message(self, *args: Any) -> None:
        pass


@contextmanager
def model_server_stand_in(
    monkeypatch: pytest.MonkeyPatch, folder: Path, start_wait_s: float = 0.0
) -> Iterator[list[dict[str, str]]]:
    """The node runtime's ``handle`` finds its server up (started ``start_wait_s`` ago when
    given): a stand-in, until the block ends. Yields the headers of each request it got."""
    seen: list[dict[str, str]] = []
    handler = type("ModelServer", (_ModelServer,), {"seen": seen})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    port = server.server_address[1]

    @contextmanager
    def up(spec: Any) -> Iterator[ServerHandle]:
        yield ServerHandle(port, "s-1", start_wait_s > 0, start_wait_s, str(folder))

    monkeypatch.setattr(proxy, "use_server", up)
    try:
        yield seen
    finally:
        server.shutdown()
        server.server_close()
