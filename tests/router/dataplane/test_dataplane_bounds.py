"""The data plane under huge and hostile traffic: no request can cut a line that others share.

Over a real socket with the real agent (dataplane_fakes.py): answers and bodies far larger
than one record, an answer past the router's bound, a client that never reads, a line that
closes before its answer began, a node that sends a malformed start, and a silent line.
The same with real vLLM and Infinity is in test_dataplane_hostile_e2e.py.
"""

from __future__ import annotations

import asyncio
import json
import resource
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from node_runtime import wire
from node_runtime.dialout.node_key import digest
from node_runtime.dialout.server_load import parse_load
from websockets.asyncio.client import ClientConnection, connect

from inference_bundle.router.dataplane.connections import server_label
from inference_bundle.router.node_envelope import NodeReport
from tests.router.dataplane_fakes import (
    CHAT,
    ENDPOINT,
    TINY,
    PacedModel,
    Served,
    chat,
    connected,
)
from tests.waiting import until

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(120)]
MB = 1024 * 1024


async def gated_stream(served: Served) -> tuple[Any, Any]:
    """A stream held open at the node's gate after its first event: (response, its lines)."""
    response = await served.client.send(
        served.client.build_request("POST", CHAT, json=chat(stream=True)), stream=True
    )
    lines = response.aiter_lines()
    assert (await anext(lines)).startswith("data:")
    return response, lines


async def finished(lines: Any) -> list[str]:
    return [line async for line in lines if line.startswith("data:")]


async def test_huge_answers_and_bodies_cross_while_another_stream_runs_to_its_end(
    served: Served,
) -> None:
    node = await served.start_node("s-1")
    await connected(served.plane)
    [line] = served.plane.hub._by_endpoint[ENDPOINT]
    response, lines = await gated_stream(served)
    # 30 MB back: far past one record, and past the old per-message bound.
    answer = await served.client.post(CHAT, json=chat(answer_bytes=30 * MB), timeout=120)
    assert answer.status_code == 200 and len(answer.json()["pad"]) == 30 * MB
    # 9 MB up (the router takes up to 10 MiB), reassembled whole at the server.
    text = "z" * (9 * MB)
    body = {**chat(answer_bytes=0), "messages": [{"role": "user", "content": text}]}
    sent = await served.client.post(CHAT, json=body, timeout=120)
    assert sent.status_code == 200
    assert node.model.seen[-1]["messages"][0]["content"] == text
    node.model.gate.set()
    rest = await finished(lines)
    await response.aclose()
    assert rest[-1] == "data: [DONE]" and json.loads(rest[-2][5:])["n"] == 2
    assert served.plane.hub._by_endpoint[ENDPOINT] == [line]  # the same line throughout


async def test_an_answer_past_the_bound_fails_that_request_alone_naming_the_bound(
    served: Served,
) -> None:
    node = await served.start_node("s-1")
    await connected(served.plane)
    settings = served.plane.settings
    served.plane.settings = settings.model_copy(update={"max_answer_bytes": 2 * MB})
    response, lines = await gated_stream(served)
    answer = await served.client.post(CHAT, json=chat(answer_bytes=3 * MB))
    assert answer.status_code == 502
    error = answer.json()["error"]
    assert error["code"] == "answer_too_large"
    assert "data_plane.max_answer_bytes" in error["message"] and str(2 * MB) in error["message"]
    node.model.gate.set()
    rest = await finished(lines)
    await response.aclose()
    assert rest[-1] == "data: [DONE]"
    assert (await served.client.post(CHAT, json=chat())).status_code == 200


def _max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def test_a_client_that_never_reads_holds_back_its_own_stream_only(
    served: Served,
) -> None:
    node = await served.start_node("s-1")
    await connected(served.plane)
    [line] = served.plane.hub._by_endpoint[ENDPOINT]
    before = _max_rss_mb()
    # 400 MB of events offered to a client that reads one line and then nothing.
    async with httpx.AsyncClient(
        base_url=served.url, headers=served.harness.auth, timeout=30
    ) as idle:
        request = idle.build_request("POST", CHAT, json=chat(stream=True, stream_bytes=400 * MB))
        stuck = await idle.send(request, stream=True)
        stuck_lines = stuck.aiter_lines()  # kept: a dropped iterator would close the stream
        assert (await anext(stuck_lines)).startswith("data:")
        # The router's buffer fills to its window and no further: sampled over a fixed 2 s,
        # since the assertion is about what never happens.
        for _ in range(10):
            await asyncio.sleep(0.2)
            [relay] = [r for r in line.relays.values()]
            assert relay.buffered <= served.plane.settings.stream_window_bytes
        # Others on the same line are not held up.
        response, lines = await gated_stream(served)
        assert (await served.client.post(CHAT, json=chat())).status_code == 200
        node.model.gate.set()
        assert (await finished(lines))[-1] == "data: [DONE]"
        await response.aclose()
        assert _max_rss_mb() - before < 100  # not the 400 MB offered
        await stuck.aclose()
    for _ in range(100):  # the stream was cancelled at the server
        if not line.relays:
            break
        await asyncio.sleep(0.05)
    assert not line.relays


async def test_a_request_whose_line_closes_before_its_answer_began_goes_down_another(
    served: Served,
) -> None:
    first = await served.start_node("s-1")
    first.model.hold_start = True
    await connected(served.plane)
    await served.start_node("s-2")
    await connected(served.plane, 2)
    doomed = served.plane.hub.pick(ENDPOINT)
    assert doomed is not None and doomed.server_id == "s-1"
    asked = asyncio.ensure_future(served.client.post(CHAT, json=chat()))
    for _ in range(100):
        if doomed.in_flight:
            break
        await asyncio.sleep(0.02)
    await doomed.let_go()  # the line drops with the request at its server, unanswered
    answer = await asked
    assert answer.status_code == 200, answer.text
    assert served.plane.servers(ENDPOINT)[-1]["requests"] >= 1


async def fake_node(served: Served, server_id: str) -> ClientConnection:
    """A hand-made node, vouched for as a task would: it dials with a fresh credential."""
    secret = "s" * 64
    served.plane.keys.vouch(ENDPOINT, NodeReport("hand-made", server_id, digest(secret)))
    headers = {
        "Authorization": f"Bearer {served.plane.credentials.mint(ENDPOINT)}",
        wire.ENDPOINT_HEADER: ENDPOINT,
        wire.SERVER_HEADER: server_id,
        wire.PROOF_HEADER: secret,
    }
    return await connect(
        wire.websocket_url(served.url), additional_headers=headers, ping_interval=None
    )


def _bad_start(stream: int) -> bytes:
    return wire.pack(wire.START, stream, b'{"status": "teapot"}')


def _bad_answer(stream: int) -> bytes:
    return wire.pack(wire.ANSWER, stream, b'{"status": "teapot"}\n{}')


def _batched_bad_answer(stream: int) -> bytes:
    [message] = wire.batches([_bad_answer(stream), wire.pack(wire.END, stream)])
    return message


@pytest.mark.parametrize("record", [_bad_start, _bad_answer, _batched_bad_answer])
async def test_a_malformed_start_from_a_node_is_a_502_not_a_500(
    served: Served, record: Callable[[int], bytes]
) -> None:
    node = await fake_node(served, "bad-1")
    await connected(served.plane)

    async def answer_badly() -> None:
        async for message in node:
            assert isinstance(message, bytes)
            kind, stream, _ = wire.unpack(message)
            if kind == wire.REQUEST:
                await node.send(record(stream))

    answering = asyncio.create_task(answer_badly())
    try:
        answer = await served.client.post(CHAT, json=chat())
        assert answer.status_code == 502
        assert "malformed" in answer.json()["error"]["message"]
        assert len(served.plane.servers(ENDPOINT)) == 1  # the line stays
    finally:
        answering.cancel()
        await node.close()


async def test_a_silent_line_is_let_go_and_a_heard_one_kept(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(wire, "SILENCE_S", 1.0)
    monkeypatch.setattr(wire, "HEARTBEAT_S", 0.2)
    await served.start_node("s-1")
    await connected(served.plane)
    [agent_line] = served.plane.hub._by_endpoint[ENDPOINT]
    silent = await fake_node(served, "quiet-1")  # sends nothing, not even heartbeats
    await connected(served.plane, 2)
    for _ in range(100):
        if len(served.plane.servers(ENDPOINT)) == 1:
            break
        await asyncio.sleep(0.05)
    assert served.plane.hub._by_endpoint[ENDPOINT] == [agent_line]  # heard: kept 5 s and more
    await silent.close()
    assert (await served.client.post(CHAT, json={**chat(), "model": TINY})).status_code == 200


class MetricsModel(PacedModel):
    """A paced model whose /metrics says what vLLM's would of its own queue."""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["path"] != "/metrics":
            return await super().__call__(scope, receive, send)
        text = (
            "# TYPE vllm:num_requests_running gauge\n"
            'vllm:num_requests_running{engine="0",model_name="m"} 5.0\n'
            'vllm:num_requests_waiting{engine="0",model_name="m"} 7.0\n'
        )
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": text.encode()})


async def test_each_heartbeat_brings_the_servers_own_load(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(wire, "HEARTBEAT_S", 0.2)
    await served.start_node("s-1", model=MetricsModel())
    await served.start_node("s-2")  # no metrics (as Infinity): it reports nothing
    await connected(served.plane, 2)
    hub = served.plane.hub
    await until(lambda: hub.beyond_own(ENDPOINT) == 12, lambda: str(served.plane.servers(ENDPOINT)))
    shown = {s["server"]: s for s in served.plane.servers(ENDPOINT)}
    assert (
        shown[server_label("s-1")]["server_running"],
        shown[server_label("s-1")]["server_waiting"],
    ) == (5, 7)
    assert shown[server_label("s-2")]["server_running"] is None


def test_a_load_record_carries_two_counts() -> None:
    assert wire.parse_load(wire.unpack(wire.load_record(3, 4))[2]) == (3, 4)
    for bad in (
        b"{}",
        b"[1, 2]",
        b'{"running": -1, "waiting": 0}',
        b'{"running": 1.5, "waiting": 0}',
    ):
        with pytest.raises(wire.WireError):
            wire.parse_load(bad)


def test_the_load_is_read_from_vllms_metrics() -> None:
    text = (
        "# HELP vllm:num_requests_running Number of requests in model execution batches.\n"
        'vllm:num_requests_running{engine="0",model_name="a"} 2.0\n'
        'vllm:num_requests_running{engine="1",model_name="a"} 1.0\n'
        'vllm:num_requests_waiting{engine="0",model_name="a"} 4.0\n'
        "vllm:num_requests_waiting_by_reason_total 9.0\n"
    )
    assert parse_load(text) == (3, 4)
    assert parse_load("infinity_requests_total 3\n") is None
