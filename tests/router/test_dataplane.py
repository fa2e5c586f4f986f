"""The data plane over a real socket: the router's WebSocket route and the node's real agent.

The router is the real app on uvicorn (in this test's event loop); the node side is
``node_runtime.dialout.Agent`` around a small ASGI model whose answers the test paces, so
that chunk timing, cancellation and a dropped connection can be asserted exactly. The same
agent inside real vLLM and Infinity is tested in test_dataplane_e2e.py.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from node_runtime import wire
from node_runtime.dialout.agent import Agent, read_dials, write_dial
from node_runtime.state import any_in_flight
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from inference_bundle.router.app import create_app
from inference_bundle.router.dataplane.credentials import Credentials, Refused
from inference_bundle.router.dataplane.plane import DataPlane
from tests.router.conftest import Harness

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]
TINY = "local/tiny-llama"
ENDPOINT = "local-tiny-chat"
CHAT = "/resource_server/local/vllm/v1/chat/completions"


@dataclass
class PacedModel:
    """An ASGI model: whole chat answers, or streams held at ``gate`` after two events."""

    gate: asyncio.Event = field(default_factory=asyncio.Event)
    disconnected: asyncio.Event = field(default_factory=asyncio.Event)
    seen: list[dict[str, Any]] = field(default_factory=list)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        message = await receive()
        body = json.loads(message["body"])
        self.seen.append(body)
        if body.get("refuse"):
            error = {
                "error": {
                    "message": "too long",
                    "type": "BadRequestError",
                    "param": None,
                    "code": 400,
                }
            }
            await send(
                {
                    "type": "http.response.start",
                    "status": 400,
                    "headers": [(b"content-type", b"application/json")],
                }
            )
            await send({"type": "http.response.body", "body": json.dumps(error).encode()})
            return
        if not body.get("stream"):
            answer = {"object": "chat.completion", "model": body["model"], "choices": []}
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-type", b"application/json")],
                }
            )
            await send({"type": "http.response.body", "body": json.dumps(answer).encode()})
            return
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/event-stream")],
            }
        )
        for n in range(2):
            await self._event(send, body, n)
        waiting = asyncio.ensure_future(receive())
        gate = asyncio.ensure_future(self.gate.wait())
        done, _ = await asyncio.wait({waiting, gate}, return_when=asyncio.FIRST_COMPLETED)
        if waiting in done and waiting.result()["type"] == "http.disconnect":
            self.disconnected.set()
            gate.cancel()
            return
        if body.get("fail"):
            raise RuntimeError("the engine died")
        await self._event(send, body, 2)
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n"})

    async def _event(self, send: Any, body: dict[str, Any], n: int) -> None:
        chunk = {"object": "chat.completion.chunk", "model": body["model"], "n": n}
        await send(
            {
                "type": "http.response.body",
                "more_body": True,
                "body": f"data: {json.dumps(chunk, separators=(',', ':'))}\n\n".encode(),
            }
        )


@dataclass
class Node:
    agent: Agent
    model: PacedModel
    folder: Path
    task: asyncio.Task[None]


@dataclass
class Router:
    """A router replica: its own app on uvicorn, its own data plane and credentials."""

    harness: Harness
    plane: DataPlane
    url: str
    client: httpx.AsyncClient


@dataclass
class Served(Router):
    start_node: Callable[..., Any]
    another_router: Callable[[], Any]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@asynccontextmanager
async def _router(h: Harness, port: int) -> AsyncIterator[Router]:
    plane = h.service.dispatcher.plane
    assert plane is not None
    config = uvicorn.Config(
        create_app(h.service),
        host="127.0.0.1",
        port=port,
        lifespan="off",
        log_level="warning",
        ws="websockets-sansio",
        ws_per_message_deflate=False,
    )
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.02)
    try:
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}", headers=h.auth, timeout=20
        ) as client:
            yield Router(h, plane, f"http://127.0.0.1:{port}", client)
    finally:
        server.should_exit = True
        await serving


@pytest.fixture
async def served(make_harness: Callable[..., Harness], tmp_path: Path) -> AsyncIterator[Served]:
    nodes: list[Node] = []
    replicas: list[Router] = []

    def harness(port: int) -> Harness:
        return make_harness(
            listen={"host": "127.0.0.1", "port": port},
            data_plane={"enabled": True, "connect_wait_s": 2, "refresh_s": 30},
            state_dir=str(tmp_path / f"router-{len(replicas)}"),
        )

    async def start_node(
        server_id: str, token: str | None = None, routers: list[Router] | None = None
    ) -> Node:
        folder = tmp_path / server_id
        folder.mkdir()
        model = PacedModel()
        agent = Agent(model, str(folder), server_id)
        for router in routers or [first]:
            write_dial(
                folder,
                {
                    "url": router.url,
                    "endpoint": ENDPOINT,
                    "token": token or router.plane.credentials.mint(ENDPOINT),
                    "ca_file": None,
                },
            )
        node = Node(agent, model, folder, asyncio.create_task(agent.run()))
        nodes.append(node)
        return node

    async with AsyncExitStack() as stack:

        async def another_router() -> Router:
            port = _free_port()
            router = await stack.enter_async_context(_router(harness(port), port))
            replicas.append(router)
            return router

        first = await another_router()
        try:
            yield Served(**vars(first), start_node=start_node, another_router=another_router)
        finally:
            for node in nodes:
                await node.agent.stop()
                node.task.cancel()


async def connected(plane: DataPlane, count: int = 1) -> None:
    for _ in range(200):
        if len(plane.servers(ENDPOINT)) >= count:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"{count} server(s) did not dial in: {plane.servers(ENDPOINT)}")


def chat(stream: bool = False, **extra: Any) -> dict[str, Any]:
    return {
        "model": TINY,
        "messages": [{"role": "user", "content": "hi"}],
        "stream": stream,
        **extra,
    }


async def test_warm_requests_ride_the_connection_and_a_task_only_keeps_the_engine(
    served: Served,
) -> None:
    node = await served.start_node("s-1")
    await connected(served.plane)
    answer = await served.client.post(CHAT, json=chat())
    assert answer.status_code == 200 and answer.json()["object"] == "chat.completion"
    assert node.model.seen == [chat()]  # the body as the user sent it, stream key included
    # No request went through the endpoint: only the background task that keeps its engine
    # (and hands the server a fresh credential), which sends nothing to the server.
    for _ in range(100):
        if served.harness.endpoint.submitted:
            break
        await asyncio.sleep(0.02)
    [keepalive] = served.harness.endpoint.submitted
    assert keepalive["send"] is False and keepalive["dial"]["endpoint"] == ENDPOINT
    listed = await served.client.get("/resource_server/list-endpoints")
    [entry] = [
        m
        for m in listed.json()["clusters"]["local"]["frameworks"]["vllm"]["models"]
        if m["id"] == TINY
    ]
    [server] = entry["connected_servers"]
    assert server["server_id"] == "s-1" and server["requests"] == 1 and server["in_flight"] == 0


async def test_a_stream_passes_each_event_through_as_the_server_writes_it(
    served: Served,
) -> None:
    node = await served.start_node("s-1")
    await connected(served.plane)
    async with served.client.stream("POST", CHAT, json=chat(stream=True)) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = response.aiter_lines()
        events: list[dict[str, Any]] = []
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


async def test_a_node_with_a_wrong_credential_is_refused_until_a_task_hands_a_good_one(
    served: Served,
) -> None:
    node = await served.start_node("s-1", token="not-a-credential")
    await asyncio.sleep(0.5)
    assert served.plane.servers(ENDPOINT) == []
    write_dial(
        node.folder,
        {
            "url": served.url,
            "endpoint": ENDPOINT,
            "ca_file": None,
            "token": served.plane.credentials.mint(ENDPOINT),
        },
    )
    await connected(served.plane)


@pytest.mark.parametrize(
    ("endpoint", "server_id", "why"),
    [
        ("local-tiny-chat", "s-2", "bound to s-1: another server may not reuse it"),
        ("local-minilm", "s-1", "minted for another endpoint"),
        ("no-such-endpoint", "s-1", "an endpoint this router does not serve"),
    ],
)
async def test_the_handshake_refuses_a_credential_used_out_of_its_place(
    served: Served, endpoint: str, server_id: str, why: str
) -> None:
    node = await served.start_node("s-1")
    await connected(served.plane)
    token = (read_dials(node.folder) or {})[served.url].token
    headers = {
        "Authorization": f"Bearer {token}",
        wire.ENDPOINT_HEADER: endpoint,
        wire.SERVER_HEADER: server_id,
    }
    with pytest.raises(InvalidStatus) as refused:
        async with connect(wire.websocket_url(served.url), additional_headers=headers):
            pass
    assert refused.value.response.status_code == 403, why


async def test_a_bye_revokes_the_servers_credential(served: Served) -> None:
    node = await served.start_node("s-1")
    await connected(served.plane)
    token = (read_dials(node.folder) or {})[served.url].token
    await node.agent.stop()
    for _ in range(100):
        if not served.plane.servers(ENDPOINT):
            break
        await asyncio.sleep(0.02)
    with pytest.raises(Refused, match="unknown or revoked"):
        served.plane.credentials.admit(token, ENDPOINT, "s-1")


async def test_a_server_dials_every_router_and_serves_each_down_its_own_connection(
    served: Served,
) -> None:
    second = await served.another_router()
    node = await served.start_node("s-1", routers=[served, second])
    await connected(served.plane)
    await connected(second.plane)
    # A stream on each router's connection at once (their stream ids may be the same).
    async with (
        served.client.stream("POST", CHAT, json=chat(stream=True)) as first,
        second.client.stream("POST", CHAT, json=chat(stream=True)) as other,
    ):
        first_lines, other_lines = first.aiter_lines(), other.aiter_lines()
        assert (await anext(first_lines)).startswith("data:")
        assert (await anext(other_lines)).startswith("data:")
        assert any_in_flight(node.agent.paths)
        await first.aclose()  # the first client leaves: its request is cancelled at the server
        await asyncio.wait_for(node.model.disconnected.wait(), 10)
        assert any_in_flight(node.agent.paths)  # the other router's request still holds it
        node.model.gate.set()
        rest = [line async for line in other_lines if line.startswith("data:")]
    assert rest[-1] == "data: [DONE]" and json.loads(rest[-2][5:])["n"] == 2
    assert not any_in_flight(node.agent.paths)
    assert (await second.client.post(CHAT, json=chat())).status_code == 200
    [on_first] = served.plane.servers(ENDPOINT)
    [on_second] = second.plane.servers(ENDPOINT)
    assert on_first["server_id"] == on_second["server_id"] == "s-1"
    assert (on_first["requests"], on_second["requests"]) == (1, 2)
    # Stopping says goodbye on both: each router forgets its own credential.
    dials = read_dials(node.folder) or {}
    await node.agent.stop()
    for router in (served, second):
        for _ in range(100):
            if not router.plane.servers(ENDPOINT):
                break
            await asyncio.sleep(0.02)
        with pytest.raises(Refused, match="unknown or revoked"):
            router.plane.credentials.admit(dials[router.url].token, ENDPOINT, "s-1")


async def test_a_router_that_refuses_the_node_does_not_keep_it_from_another(
    served: Served,
) -> None:
    second = await served.another_router()
    node = await served.start_node("s-1")
    good = {"url": second.url, "endpoint": ENDPOINT, "ca_file": None}
    write_dial(node.folder, {**good, "token": served.plane.credentials.mint(ENDPOINT)})
    await connected(served.plane)
    await asyncio.sleep(0.5)
    assert second.plane.servers(ENDPOINT) == []  # another router's credential: refused
    assert (await served.client.post(CHAT, json=chat())).status_code == 200
    write_dial(node.folder, {**good, "token": second.plane.credentials.mint(ENDPOINT)})
    await connected(second.plane)
    assert len(served.plane.servers(ENDPOINT)) == 1


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_credential_binds_to_its_first_server_and_lives_by_its_clocks() -> None:
    clock = Clock()
    book = Credentials(ttl_s=60, redial_grace_s=30, clock=clock)
    token = book.mint("e")
    with pytest.raises(Refused, match="not for endpoint 'f'"):
        book.admit(token, "f", "s-1")
    book.admit(token, "e", "s-1")
    with pytest.raises(Refused, match="another server"):
        book.admit(token, "e", "s-2")
    book.dropped(token)
    clock.now += 29
    book.admit(token, "e", "s-1")  # dialled again within the grace
    book.dropped(token)
    clock.now += 31
    with pytest.raises(Refused, match="redial grace"):
        book.admit(token, "e", "s-1")
    late = book.mint("e")
    clock.now += 61
    with pytest.raises(Refused, match="expired before its first use"):
        book.admit(late, "e", "s-3")
    book.mint("e")  # minting forgets what can no longer be admitted
    with pytest.raises(Refused, match="unknown"):
        book.admit(late, "e", "s-3")
    with pytest.raises(Refused, match="unknown"):
        book.admit("made-up", "e", "s-1")
