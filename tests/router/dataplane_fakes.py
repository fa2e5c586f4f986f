"""A real router on uvicorn and nodes running the real dial-out agent around a paced model.

Shared by the data-plane tests (test_dataplane*.py): ``PacedModel`` answers whole or streams
two events and then waits at ``gate``, so that chunk timing, cancellation and a dropped
connection can be asserted exactly; ``serving`` starts routers and nodes and stops them.
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
import uvicorn
from node_runtime.dialout.agent import Agent, write_dial
from node_runtime.dialout.node_key import digest

from inference_bundle.router.app import create_app
from inference_bundle.router.dataplane.plane import DataPlane
from inference_bundle.router.node_envelope import NodeReport
from tests.router.conftest import Harness

TINY = "local/tiny-llama"
ENDPOINT = "local-tiny-chat"
CHAT = "/resource_server/local/vllm/v1/chat/completions"


@dataclass
class PacedModel:
    """An ASGI model: whole chat answers, or streams held at ``gate`` after two events."""

    gate: asyncio.Event = field(default_factory=asyncio.Event)
    disconnected: asyncio.Event = field(default_factory=asyncio.Event)
    seen: list[dict[str, Any]] = field(default_factory=list)
    hold_start: bool = False  # never begin an answer: wait for the request to be cancelled

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        raw = b""
        while True:  # a large body arrives in parts, as the router's records bring it
            message = await receive()
            raw += message["body"]
            if not message.get("more_body"):
                break
        body = json.loads(raw)
        self.seen.append(body)
        if self.hold_start:
            while (await receive())["type"] != "http.disconnect":
                pass
            self.disconnected.set()
            return
        if "answer_bytes" in body:  # a whole answer of about that size
            answer = {"object": "chat.completion", "received": len(raw), "pad": ""}
            answer["pad"] = "x" * body["answer_bytes"]
            await self._whole(send, json.dumps(answer).encode())
            return
        if "stream_bytes" in body:  # a stream of that many bytes of events, at once
            await self._start(send, "text/event-stream")
            event = b"data: " + b"y" * 4090 + b"\n\n"
            for _ in range(body["stream_bytes"] // len(event)):
                await send({"type": "http.response.body", "more_body": True, "body": event})
            await send({"type": "http.response.body", "body": b"data: [DONE]\n\n"})
            return
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

    async def _start(self, send: Any, content_type: str) -> None:
        headers = [(b"content-type", content_type.encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})

    async def _whole(self, send: Any, body: bytes) -> None:
        await self._start(send, "application/json")
        await send({"type": "http.response.body", "body": body})

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
    model: Any  # PacedModel, unless the test brings a model of its own
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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@asynccontextmanager
async def router_on_uvicorn(h: Harness, port: int) -> AsyncIterator[Router]:
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
    async with asyncio.timeout(20):  # uvicorn binds and starts in well under a second
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


@asynccontextmanager
async def serving(make_harness: Callable[..., Harness], tmp_path: Path) -> AsyncIterator[Served]:
    """A router on uvicorn (more on demand: ``another_router``) and paced nodes to start.

    Each test module's ``served`` fixture is this; the nodes are stopped at the end.
    """
    nodes: list[Node] = []
    replicas: list[Router] = []

    def harness(port: int) -> Harness:
        return make_harness(
            listen={"host": "127.0.0.1", "port": port},
            data_plane={"enabled": True, "connect_wait_s": 2, "refresh_s": 30},
            max_body_bytes=16 * 1024 * 1024,  # bodies far larger than one record
            state_dir=str(tmp_path / f"router-{len(replicas)}"),
        )

    async def start_node(
        server_id: str,
        token: str | None = None,
        routers: list[Router] | None = None,
        model: Any = None,
    ) -> Node:
        folder = tmp_path / server_id
        folder.mkdir()
        model = model or PacedModel()
        agent = Agent(model, str(folder), server_id)
        for router in routers or [first]:
            vouch(router, server_id, agent)
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
            port = free_port()
            router = await stack.enter_async_context(router_on_uvicorn(harness(port), port))
            replicas.append(router)
            return router

        first = await another_router()
        try:
            yield Served(**vars(first), start_node=start_node, another_router=another_router)
        finally:
            for node in nodes:
                await node.agent.stop()
                node.task.cancel()


def vouch(router: Router, server_id: str, agent: Agent) -> None:
    """What the task that wrote a dial reports to its router: the server's key."""
    router.plane.keys.vouch(ENDPOINT, NodeReport("fake-node", server_id, digest(agent.secret)))


async def connected(plane: DataPlane, count: int = 1) -> None:
    for _ in range(200):
        if len(plane.servers(ENDPOINT)) >= count:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"{count} server(s) did not dial in: {plane.servers(ENDPOINT)}")


def dial_refused(node: Node, url: str) -> bool:
    """Whether the router at ``url`` has refused the credential ``node`` dials it with (the
    node then waits for a new one)."""
    link = node.agent._links.get(url)
    return link is not None and link.refused == link.dial.token


def chat(stream: bool = False, **extra: Any) -> dict[str, Any]:
    return {
        "model": TINY,
        "messages": [{"role": "user", "content": "hi"}],
        "stream": stream,
        **extra,
    }
