"""The data plane over a real socket: the router's WebSocket route and the node's real agent.

The router is the real app on uvicorn (in this test's event loop); the node side is
``node_runtime.dialout.Agent`` around a small ASGI model whose answers the test paces, so
that chunk timing, cancellation and a dropped connection can be asserted exactly. The same
agent inside real vLLM and Infinity is tested in test_dataplane_e2e.py.

Here: requests and streams down the connection. The credentials a node dials with are
tested in test_dataplane_credentials.py, a node serving several routers in
test_dataplane_replicas.py; the router and nodes they share are dataplane_fakes.py.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from inference_bundle.router.dataplane.connections import server_label
from tests.router.conftest import unsalted
from tests.router.dataplane_fakes import (
    CHAT,
    ENDPOINT,
    TINY,
    Served,
    chat,
    connected,
)

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]


async def test_warm_requests_ride_the_connection_and_a_task_only_keeps_the_engine(
    served: Served,
) -> None:
    node = await served.start_node("s-1")
    await connected(served.plane)
    answer = await served.client.post(CHAT, json=chat())
    assert answer.status_code == 200 and answer.json()["object"] == "chat.completion"
    # The body as the user sent it, stream key included, with the caller's prefix-cache salt.
    assert [unsalted(seen) for seen in node.model.seen] == [chat()]
    # No request went through the endpoint: only the background task that keeps its engine,
    # which sends nothing to the server and carries no credential (the server is connected:
    # a credential written ahead of its need would wait in the node's files to be read).
    for _ in range(100):
        if served.harness.endpoint.submitted:
            break
        await asyncio.sleep(0.02)
    [keepalive] = served.harness.endpoint.submitted
    assert keepalive["send"] is False and "dial" not in keepalive
    listed = await served.client.get("/resource_server/list-endpoints")
    [entry] = [
        m
        for m in listed.json()["clusters"]["local"]["frameworks"]["vllm"]["models"]
        if m["id"] == TINY
    ]
    [server] = entry["connected_servers"]
    assert (
        server["server"] == server_label("s-1")
        and server["requests"] == 1
        and server["in_flight"] == 0
    )


async def test_a_stream_passes_each_event_through_as_the_server_writes_it(
    served: Served,
) -> None:
    node = await served.start_node("s-1")
    await connected(served.plane)
    async with served.client.stream("POST", CHAT, json=chat(stream=True)) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = response.aiter_lines()
        events: list[dict[str, Any]] = []
        async with asyncio.timeout(10):  # the first two events come at once
            while len(events) < 2:
                line = await anext(lines)
                if line.startswith("data:"):
                    events.append(json.loads(line[5:]))
        # Two events arrived while the server still holds the rest.
        assert [e["n"] for e in events] == [0, 1] and not node.model.gate.is_set()
        node.model.gate.set()
        rest = [line async for line in lines if line.startswith("data:")]
    assert rest[-1] == "data: [DONE]" and json.loads(rest[0][5:])["n"] == 2


async def test_an_alias_streams_back_under_the_name_the_user_asked(served: Served) -> None:
    node = await served.start_node("s-1")
    await connected(served.plane)
    node.model.gate.set()
    body = chat(stream=True) | {"model": "local/tiny-llama-previous"}
    async with served.client.stream("POST", CHAT, json=body) as response:
        events = [
            json.loads(line[5:])
            async for line in response.aiter_lines()
            if line.startswith("data: {")
        ]
    assert {e["model"] for e in events} == {"local/tiny-llama-previous"}
    assert node.model.seen[0]["model"] == TINY  # the server knows its served name only


async def test_a_stream_the_server_refuses_gets_its_status_and_error_not_a_stream(
    served: Served,
) -> None:
    await served.start_node("s-1")
    await connected(served.plane)
    refused = await served.client.post(CHAT, json=chat(stream=True, refuse=True))
    assert refused.status_code == 400
    assert refused.json()["error"]["message"] == "too long"
    assert served.plane.servers(ENDPOINT)[0]["in_flight"] == 0


async def test_a_client_that_leaves_mid_stream_cancels_the_request_at_the_server(
    served: Served,
) -> None:
    node = await served.start_node("s-1")
    await connected(served.plane)
    async with served.client.stream("POST", CHAT, json=chat(stream=True)) as response:
        async for line in response.aiter_lines():
            if line.startswith("data:"):
                break  # one event read, then hang up
    await asyncio.wait_for(node.model.disconnected.wait(), 10)
    assert served.plane.servers(ENDPOINT)[0]["in_flight"] == 0


async def test_a_server_failing_mid_stream_ends_it_with_an_openai_error_event(
    served: Served,
) -> None:
    node = await served.start_node("s-1")
    await connected(served.plane)
    node.model.gate.set()
    async with served.client.stream("POST", CHAT, json=chat(stream=True, fail=True)) as response:
        lines = [line async for line in response.aiter_lines() if line.startswith("data:")]
    error = json.loads(lines[-2][5:])["error"]
    assert error["code"] == "server_gone" and "the engine died" in error["message"]
    assert lines[-1] == "data: [DONE]"


async def test_a_dropped_connection_fails_its_streams_and_the_node_dials_again(
    served: Served,
) -> None:
    node = await served.start_node("s-1")
    await connected(served.plane)
    async with served.client.stream("POST", CHAT, json=chat(stream=True)) as response:
        lines = response.aiter_lines()
        assert (await anext(lines)).startswith("data:")
        [live] = served.plane.hub._by_endpoint[ENDPOINT]
        await node.agent.connection(served.url).close()  # the network drops the line
        rest = [line async for line in lines if line.startswith("data:")]
    assert json.loads(rest[-2][5:])["error"]["code"] == "server_gone"
    # The node dials again with the credential it holds, and serves the next request.
    for _ in range(200):
        servers = served.plane.hub._by_endpoint.get(ENDPOINT, [])
        if servers and servers[0] is not live:
            break
        await asyncio.sleep(0.05)
    assert (await served.client.post(CHAT, json=chat())).status_code == 200


async def test_requests_go_to_the_connection_with_the_fewest_in_flight(served: Served) -> None:
    first = await served.start_node("s-1")
    second = await served.start_node("s-2")
    await connected(served.plane, 2)
    async with served.client.stream("POST", CHAT, json=chat(stream=True)) as held:
        lines = held.aiter_lines()
        assert (await anext(lines)).startswith("data:")
        busy, idle = (first, second) if first.model.seen else (second, first)
        for _ in range(3):
            assert (await served.client.post(CHAT, json=chat())).status_code == 200
        assert len(idle.model.seen) == 3 and len(busy.model.seen) == 1
        busy.model.gate.set()
