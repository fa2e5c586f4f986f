"""The node's side of a trace: the ``trace`` a request carries, the task's span, and what
passes on to the model server; nothing when a request carries no trace or OpenTelemetry is
missing. The router's side, and the agent's span on the data plane, are in
tests/router/service/test_traces.py."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from node_runtime import proxy, tracing, wire

from tests.otlp_receiver import OTLPReceiver, model_server_stand_in, otlp_receiver

from .local_backends import vllm_spec

pytestmark = pytest.mark.timeout(30)
ROUTER_TRACE, ROUTER_SPAN = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
TRACEPARENT = f"00-{ROUTER_TRACE}-{ROUTER_SPAN}-01"
CHAT = {"method": "POST", "path": "/v1/chat/completions", "body": {"model": "m", "messages": []}}


@pytest.fixture
def receiver() -> Iterator[OTLPReceiver]:
    with otlp_receiver() as running:
        yield running


@pytest.fixture
def model_server(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[list[dict[str, str]]]:
    """``handle`` finds its server up (a stand-in); yields the headers the stand-in got."""
    with model_server_stand_in(monkeypatch, tmp_path) as seen:
        yield seen


def test_a_request_head_carries_its_trace_and_a_malformed_one_is_none() -> None:
    trace = {"traceparent": TRACEPARENT, "export_to": "http://collector:4318/v1/traces"}
    [record] = wire.request_records(1, "POST", "/v1/chat/completions", b"{}", trace=trace)
    head, body = wire.parse_request(wire.unpack(record)[2])
    assert head.trace == tracing.TraceRequest(TRACEPARENT, "http://collector:4318/v1/traces")
    assert body == b"{}"
    [plain] = wire.request_records(1, "POST", "/v1/chat/completions", b"{}")
    assert wire.parse_request(wire.unpack(plain)[2])[0].trace is None
    for malformed in ("x", {"traceparent": TRACEPARENT}, {**trace, "export_to": "file:///x"}):
        assert tracing.trace_of({"trace": malformed}) is None


def test_a_traced_task_is_a_span_under_the_routers_sent_before_its_envelope(
    receiver: OTLPReceiver, model_server: list[dict[str, str]], tmp_path: Path
) -> None:
    spec = vllm_spec("tiny-traced", tmp_path, require=False)  # use_server is replaced
    asked = {"traceparent": TRACEPARENT, "export_to": f"{receiver.url}/v1/traces"}
    envelope = proxy.handle(spec, {**CHAT, "trace": asked})
    assert envelope["status"] == 200
    # Sent before the envelope came back: a task's worker may not live to send it later.
    [span] = receiver.spans
    assert (span.service, span.name) == ("inference-node", "node.task")
    assert (span.trace_id, span.parent_id) == (ROUTER_TRACE, ROUTER_SPAN)
    assert span.attributes["server"] == "reused" and not span.error
    [headers] = model_server
    assert headers["traceparent"].split("-")[1:3] == [ROUTER_TRACE, span.span_id]


def test_an_untraced_task_sends_no_trace_on(
    receiver: OTLPReceiver, model_server: list[dict[str, str]], tmp_path: Path
) -> None:
    spec = vllm_spec("tiny-untraced", tmp_path, require=False)
    malformed = {"traceparent": 7, "export_to": receiver.url}
    for request in (CHAT, {**CHAT, "trace": malformed}):
        assert proxy.handle(spec, request)["status"] == 200
    tracing.flush()
    assert [h.get("traceparent") for h in model_server] == [None, None]
    assert receiver.posts == 0


def test_without_opentelemetry_the_routers_traceparent_passes_on_as_it_came(
    receiver: OTLPReceiver,
    model_server: list[dict[str, str]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def missing(export_to: str) -> Any:
        raise ImportError("No module named 'opentelemetry'")

    monkeypatch.setattr(tracing, "_made", missing)
    monkeypatch.setattr(tracing, "_shippers", {})
    spec = vllm_spec("tiny-bare", tmp_path, require=False)
    asked = {"traceparent": TRACEPARENT, "export_to": f"{receiver.url}/v1/traces"}
    assert proxy.handle(spec, {**CHAT, "trace": asked})["status"] == 200
    [headers] = model_server
    assert headers["traceparent"] == TRACEPARENT
    assert receiver.posts == 0


def test_the_routers_traceparent_is_read_only_when_whole_and_sampled() -> None:
    assert tracing.sampled_parent(TRACEPARENT) == (int(ROUTER_TRACE, 16), int(ROUTER_SPAN, 16))
    for unusable in (
        f"00-{ROUTER_TRACE}-{ROUTER_SPAN}-00",  # not sampled
        f"01-{ROUTER_TRACE}-{ROUTER_SPAN}-01",  # another version
        f"00-{ROUTER_TRACE[1:]}-{ROUTER_SPAN}-01",
        f"00-{'0' * 32}-{ROUTER_SPAN}-01",  # an invalid (zero) trace id
        f"00-{ROUTER_TRACE}-{'0' * 16}-01",
        f"00-{ROUTER_TRACE}-{'g' * 16}-01",
        f"00--{ROUTER_TRACE[1:]}-{ROUTER_SPAN}-01",  # a sign
        f"00-{ROUTER_TRACE}-{ROUTER_SPAN}-1",
        "",
    ):
        assert tracing.sampled_parent(unusable) is None, unusable
