"""Traces: one per request, the router's steps and the node's span parented as they ran.

A test OTLP receiver (tests/otlp_receiver.py, the collector's protocol, in this process)
gets the spans. Warm requests and streams ride the real data plane to the node's real agent
(dataplane_fakes.py); a cold request goes through the task path to the node runtime's real
``handle``, whose server is a small HTTP stand-in that records the headers it is sent (where
vLLM would read the traceparent that puts its own spans under the node's).
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from node_runtime import proxy
from node_runtime import tracing as node_tracing

from inference_bundle.router.tracing import span as tracing_span
from tests.otlp_receiver import (
    OTLPReceiver,
    ReceivedSpan,
    model_server_stand_in,
    otlp_receiver,
)
from tests.router.conftest import Harness
from tests.router.dataplane_fakes import CHAT, PacedModel, Served, chat, connected, serving
from tests.waiting import until

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]
ROUTER, NODE = "inference-router", "inference-node"
# The steps every answered request has, each a child of its root span.
STEPS = {"authenticate", "check", "place", "limits", "relay", "record"}
PROMPT = "a prompt that no span may carry"
CLIENT_TRACE, CLIENT_SPAN = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"


@pytest.fixture
def receiver() -> Iterator[OTLPReceiver]:
    with otlp_receiver() as running:
        yield running


@pytest.fixture
def tracing_harness(
    make_harness: Callable[..., Harness], receiver: OTLPReceiver
) -> Iterator[Callable[..., Harness]]:
    """Harnesses that trace to ``receiver`` unless told otherwise; their exporters are
    stopped at the end."""
    made: list[Harness] = []

    def make(**changes: Any) -> Harness:
        changes.setdefault("tracing", {"otlp_endpoint": receiver.url})
        made.append(make_harness(**changes))
        return made[-1]

    yield make
    for h in made:
        h.service.tracing.shutdown()


@pytest.fixture
async def traced(tracing_harness: Callable[..., Harness], tmp_path: Path) -> AsyncIterator[Served]:
    """A router on a real socket, tracing to ``receiver``, and paced nodes to start."""
    async with serving(tracing_harness, tmp_path) as routers:
        yield routers


@dataclass
class HeaderSeeing(PacedModel):
    """A paced model that keeps each request's headers, as the agent hands them over."""

    headers: list[dict[str, str]] = field(default_factory=list)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.headers.append({k.decode(): v.decode() for k, v in scope["headers"]})
        await super().__call__(scope, receive, send)


def asked(stream: bool = False) -> dict[str, Any]:
    return {**chat(stream=stream), "messages": [{"role": "user", "content": PROMPT}]}


async def one_trace(
    h: Harness, receiver: OTLPReceiver, node_span: str | None
) -> list[ReceivedSpan]:
    """The receiver's one trace, once its root and (when named) the node's span are in."""

    def complete() -> list[ReceivedSpan] | None:
        h.service.tracing.flush()
        node_tracing.flush()
        traces = receiver.traces()
        if len(traces) != 1:
            return None
        [spans] = traces.values()
        names = {(s.service, s.name) for s in spans}
        if (ROUTER, "request") not in names or (ROUTER, "record") not in names:
            return None
        if node_span is not None and (NODE, node_span) not in names:
            return None
        return spans

    return await until(complete, lambda: f"one whole trace in {receiver.traces()}")


def router_tree(spans: list[ReceivedSpan]) -> tuple[ReceivedSpan, dict[str, ReceivedSpan]]:
    """The root, and its steps by name, each checked to be the root's child."""
    [root] = [s for s in spans if s.service == ROUTER and s.name == "request"]
    steps = {s.name: s for s in spans if s.service == ROUTER and s is not root}
    assert set(steps) >= STEPS, sorted(steps)
    assert {s.parent_id for s in steps.values()} == {root.span_id}
    return root, steps


def parent_in(traceparent: str) -> tuple[str, str]:
    """(trace id, parent span id) of a W3C traceparent."""
    version, trace_id, span_id, flags = traceparent.split("-")
    assert version == "00" and int(flags, 16) & 1  # sampled
    return trace_id, span_id


def no_prompt_in(spans: list[ReceivedSpan]) -> None:
    for span in spans:
        assert PROMPT not in json.dumps(span.attributes, default=str), span


async def test_a_warm_request_is_one_trace_with_the_nodes_span_under_its_relay(
    traced: Served, receiver: OTLPReceiver
) -> None:
    node = await traced.start_node("s-1", model=HeaderSeeing())
    await connected(traced.plane)
    answer = await traced.client.post(CHAT, json=asked())
    assert answer.status_code == 200
    spans = await one_trace(traced.harness, receiver, "node.request")
    root, steps = router_tree(spans)
    assert root.parent_id == ""
    assert root.attributes["request_id"] == answer.headers["X-Request-Id"]
    assert root.attributes["via"] == "connection" and root.attributes["model"] == chat()["model"]
    assert root.attributes["http.response.status_code"] == 200
    relay = steps["relay"]
    assert relay.attributes["via"] == "connection" and relay.attributes["server"]
    [node_span] = [s for s in spans if s.service == NODE]
    assert node_span.parent_id == relay.span_id and node_span.name == "node.request"
    assert node_span.attributes["http.response.status_code"] == 200
    # The model server is handed the node span's context: vLLM's spans go beneath it.
    [seen] = node.model.headers
    assert parent_in(seen["traceparent"]) == (root.trace_id, node_span.span_id)
    no_prompt_in(spans)


async def test_spans_go_out_each_second_without_a_flush(
    tracing_harness: Callable[..., Harness], receiver: OTLPReceiver
) -> None:
    """Requests make their spans as plain fields; the shipping thread exports them (as the
    SDK's spans, kind and status included) without anyone asking."""
    tracing = tracing_harness().service.tracing
    began = time.monotonic()
    for status in (200, 503):
        request_trace = tracing.begin("/v1/chat/completions", {})
        assert request_trace is not None
        with tracing_span("check", request_trace):
            pass
        request_trace.end(status, model="m")
    spans = await until(lambda: receiver.spans if len(receiver.spans) == 4 else None, "4 spans")
    assert time.monotonic() - began < 5
    roots = [s for s in spans if s.name == "request"]
    assert sorted(r.attributes["http.response.status_code"] for r in roots) == [200, 503]
    assert {r.attributes["http.response.status_code"]: r.error for r in roots} == {
        200: False,
        503: True,  # a 5xx: its status is ERROR
    }
    assert {s.parent_id for s in spans if s.name == "check"} == {r.span_id for r in roots}


async def test_spans_outlive_their_export_process(
    tracing_harness: Callable[..., Harness], receiver: OTLPReceiver
) -> None:
    """The spans are encoded and posted by a process of their own; if it dies, the next
    round starts another, and only what was in flight to it is lost."""
    tracing = tracing_harness().service.tracing

    def one_request(status: int) -> None:
        request_trace = tracing.begin("/v1/chat/completions", {})
        assert request_trace is not None
        request_trace.end(status)

    one_request(200)
    tracing.flush()
    assert len(receiver.spans) == 1
    shipper = tracing._shipper
    assert shipper is not None and shipper._child is not None
    shipper._child.kill()
    shipper._child.wait()
    one_request(201)
    tracing.flush()
    codes = sorted(s.attributes["http.response.status_code"] for s in receiver.spans)
    assert codes == [200, 201]


async def test_a_stream_is_one_trace_that_ends_with_the_stream(
    traced: Served, receiver: OTLPReceiver
) -> None:
    node = await traced.start_node("s-1")
    node.model.gate.set()  # the stream runs to its end at once
    await connected(traced.plane)
    async with traced.client.stream("POST", CHAT, json=asked(stream=True)) as response:
        lines = [line async for line in response.aiter_lines() if line.startswith("data:")]
    assert lines[-1] == "data: [DONE]"
    spans = await one_trace(traced.harness, receiver, "node.request")
    root, steps = router_tree(spans)
    assert root.attributes["stream"] is True and root.attributes["via"] == "connection"
    [node_span] = [s for s in spans if s.service == NODE]
    assert node_span.parent_id == steps["relay"].span_id
    no_prompt_in(spans)


async def test_a_clients_traceparent_is_the_requests_parent(
    traced: Served, receiver: OTLPReceiver
) -> None:
    await traced.start_node("s-1")
    await connected(traced.plane)
    traceparent = f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"
    answer = await traced.client.post(CHAT, json=asked(), headers={"traceparent": traceparent})
    assert answer.status_code == 200
    spans = await one_trace(traced.harness, receiver, "node.request")
    root, _ = router_tree(spans)
    assert {s.trace_id for s in spans} == {CLIENT_TRACE}
    assert root.parent_id == CLIENT_SPAN


@pytest.fixture
def node_runtime_backend(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Iterator[list[dict[str, str]]]:
    """The node runtime's ``handle`` finds its server just started (a stand-in); yields the
    headers of each request the stand-in got."""
    with model_server_stand_in(monkeypatch, tmp_path, start_wait_s=2.0) as seen:
        yield seen


@pytest.mark.parametrize("stream", [False, True])
async def test_a_cold_request_through_the_task_path_is_one_trace_with_the_nodes_task(
    tracing_harness: Callable[..., Harness],
    receiver: OTLPReceiver,
    node_runtime_backend: list[dict[str, str]],
    stream: bool,
) -> None:
    h = tracing_harness()
    h.endpoint.handler = proxy.handle  # the node runtime itself answers the task
    async with h.client:
        answer = await h.client.post(CHAT, json=asked(stream), headers=h.auth)
        assert answer.status_code == 200
        if stream:
            assert answer.text.rstrip().endswith("data: [DONE]")
        spans = await one_trace(h, receiver, "node.task")
    root, steps = router_tree(spans)
    assert root.attributes["via"] == "task"
    relay = steps["relay"]
    assert relay.attributes["via"] == "task"
    assert relay.attributes["http.response.status_code"] == 200
    [task] = [s for s in spans if s.service == NODE]
    assert task.name == "node.task" and task.parent_id == relay.span_id
    assert task.attributes["server"] == "started" and task.attributes["start_wait_s"] == 2.0
    [seen] = node_runtime_backend
    assert parent_in(seen["traceparent"]) == (root.trace_id, task.span_id)
    no_prompt_in(spans)


async def test_a_refused_request_is_a_trace_that_ends_with_its_refusal(
    tracing_harness: Callable[..., Harness], receiver: OTLPReceiver
) -> None:
    h = tracing_harness()
    async with h.client:
        refused = await h.client.post(CHAT, json=asked(), headers={"Authorization": "Bearer no"})
        assert refused.status_code == 401

        def exported() -> list[ReceivedSpan]:
            h.service.tracing.flush()
            return receiver.spans

        spans = await until(exported, "the refusal's spans")
    [root] = [s for s in spans if s.name == "request"]
    [step] = [s for s in spans if s is not root]
    assert step.name == "authenticate" and step.parent_id == root.span_id
    assert root.attributes["http.response.status_code"] == 401 and not root.error
    assert step.attributes["error.code"] == "invalid_api_key"
    assert step.attributes["http.response.status_code"] == 401


@pytest.mark.parametrize(
    "tracing", [{}, {"otlp_endpoint": "receiver", "sample_ratio": 0}], ids=["off", "unsampled"]
)
async def test_untraced_requests_export_nothing_and_carry_no_trace(
    tracing_harness: Callable[..., Harness],
    tmp_path: Path,
    receiver: OTLPReceiver,
    tracing: dict[str, Any],
) -> None:
    if tracing:
        tracing = {**tracing, "otlp_endpoint": receiver.url}

    def harness(**changes: Any) -> Harness:
        return tracing_harness(**changes, tracing=tracing)

    async with serving(harness, tmp_path) as served:
        # Cold: through the task path (no server is connected yet).
        assert (await served.client.post(CHAT, json=asked())).status_code == 200
        [task] = served.harness.endpoint.submitted
        assert "trace" not in task
        # Warm: down the connection.
        node = await served.start_node("s-1", model=HeaderSeeing())
        await connected(served.plane)
        answer = await served.client.post(CHAT, json=asked())
        assert answer.status_code == 200
        [seen] = node.model.headers
        assert "traceparent" not in seen
        served.harness.service.tracing.flush()
    node_tracing.flush()
    assert receiver.posts == 0 and receiver.spans == []


async def test_settings_name_the_collector_and_check_the_ratio(
    tracing_harness: Callable[..., Harness],
) -> None:
    collector = "http://collector:4318/"
    h = tracing_harness(tracing={"otlp_endpoint": collector, "sample_ratio": 0.25})
    assert h.service.tracing.export_to == "http://collector:4318/v1/traces"
    assert h.service.tracing.enabled
    assert not tracing_harness(tracing={}).service.tracing.enabled  # off by default
    with pytest.raises(ValueError, match="sample_ratio"):
        tracing_harness(tracing={"otlp_endpoint": collector, "sample_ratio": 2})
    with pytest.raises(ValueError, match="otlp_endpoint"):
        tracing_harness(tracing={"otlp_endpoint": "collector:4318"})
