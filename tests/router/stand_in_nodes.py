"""Stand-in nodes of fixed capacity behind a real router, for replica tests and benchmarks.

A ``StandInNodes`` is an executor factory: each replica index is an "engine" whose first
task takes ``start_s`` (the job's queue and the server's load), then runs a real dial-out
agent (node_runtime.dialout) around a ``PacedServer``: at most ``capacity`` requests at once,
each ``service_s`` long, whatever this machine's cores. Shutting the engine down stops its
node ``cancel_s`` later, as a cancelled job would (the scheduler takes a while, and the
server stays connected meanwhile); ``kill`` drops one without a word, as a dead node does.
``walltime_s`` makes each node end that long after it started, as the scheduler would.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from node_runtime.dialout.agent import Agent, write_dial
from node_runtime.dialout.node_key import digest

from inference_bundle.router.routes import Route

# What each stand-in answer says its prompt was, in tokens.
PROMPT_TOKENS = 8


async def read_body(receive: Any) -> bytes:
    """An ASGI request's whole body."""
    raw = b""
    while True:
        message = await receive()
        raw += bytes(message.get("body", b""))
        if not message.get("more_body"):
            return raw


@dataclass
class PacedServer:
    """An ASGI model server of fixed capacity: ``capacity`` requests at once, each
    ``service_s`` long (a stream: ``events`` events over that time), first come, first
    served as vLLM's own queue; each answer counts ``PROMPT_TOKENS`` and a token an event.
    With ``jitter`` j, each request takes ``service_s`` × a uniform draw in [1 − j, 1 + j]
    (answers differ in length: the servers' places do not all free at once)."""

    capacity: int
    service_s: float
    jitter: float = 0.0
    events: int = 4
    served: int = 0
    in_flight: int = 0
    _slots: asyncio.Semaphore | None = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        body = json.loads(await read_body(receive) or b"{}")
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.capacity)
        async with self._slots:
            self.in_flight += 1
            try:
                await self._answer(body, send)
            finally:
                self.in_flight -= 1
                self.served += 1

    async def _answer(self, body: dict[str, Any], send: Any) -> None:
        streamed = bool(body.get("stream"))
        kind = b"text/event-stream" if streamed else b"application/json"
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-type", kind)]}
        )
        usage = {
            "prompt_tokens": PROMPT_TOKENS,
            "completion_tokens": self.events,
            "total_tokens": PROMPT_TOKENS + self.events,
        }
        service_s = self.service_s * random.uniform(1 - self.jitter, 1 + self.jitter)
        if not streamed:
            await asyncio.sleep(service_s)
            answer: dict[str, Any] = {"object": "chat.completion", "choices": [], "usage": usage}
            await send({"type": "http.response.body", "body": json.dumps(answer).encode()})
            return
        for n in range(self.events):
            await asyncio.sleep(service_s / self.events)
            chunk = {"object": "chat.completion.chunk", "model": body.get("model"), "n": n}
            event = f"data: {json.dumps(chunk)}\n\n".encode()
            await send({"type": "http.response.body", "body": event, "more_body": True})
        if (body.get("stream_options") or {}).get("include_usage"):
            last = {"object": "chat.completion.chunk", "choices": [], "usage": usage}
            event = f"data: {json.dumps(last)}\n\n".encode()
            await send({"type": "http.response.body", "body": event, "more_body": True})
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n"})


@dataclass
class StandInNode:
    index: int
    host: str
    server_id: str
    server: PacedServer
    agent: Agent
    task: asyncio.Task[None]
    started_at: float
    stopped_at: float | None = None
    how: str | None = None  # "stopped" (its job cancelled), "killed", "walltime"


@dataclass
class StandInNodes:
    """Replica engines whose nodes are stand-ins (see the module's docstring)."""

    folder: Path
    loop: asyncio.AbstractEventLoop
    capacity: int = 2
    service_s: float = 0.3
    jitter: float = 0.0
    start_s: float = 1.0
    cancel_s: float = 1.0
    walltime_s: float | None = None
    nodes: list[StandInNode] = field(default_factory=list)
    engines: list[int] = field(default_factory=list)  # indexes, one per engine made
    _serial: itertools.count[int] = field(default_factory=itertools.count)

    def factory(self) -> Callable[[Route, int], StandInEngine]:
        def make(route: Route, index: int) -> StandInEngine:
            self.engines.append(index)
            return StandInEngine(self, index)

        return make

    def live(self) -> list[StandInNode]:
        return [n for n in self.nodes if n.stopped_at is None]

    async def start(self, index: int, dial: dict[str, Any] | None) -> StandInNode:
        await asyncio.sleep(self.start_s)
        serial = next(self._serial)
        server_id = f"standin-{index}-{serial}"
        folder = self.folder / server_id
        folder.mkdir(parents=True)
        server = PacedServer(self.capacity, self.service_s, self.jitter)
        agent = Agent(server, str(folder), server_id)
        if dial is not None:
            write_dial(folder, dial)
        node = StandInNode(
            index,
            f"node-{serial}",
            server_id,
            server,
            agent,
            asyncio.create_task(agent.run()),
            time.time(),
        )
        self.nodes.append(node)
        if self.walltime_s is not None:
            self.loop.call_later(self.walltime_s, self._end, node, "walltime")
        return node

    def kill(self, node: StandInNode) -> None:
        """The node dies: its connection drops with no goodbye."""
        self._end(node, "killed")

    def _end(self, node: StandInNode, how: str) -> None:
        if node.stopped_at is None:
            node.stopped_at, node.how = time.time(), how
            node.task.cancel()

    async def cancel(self, node: StandInNode) -> None:
        """Its job is cancelled: the node stops once the scheduler gets to it."""
        await asyncio.sleep(self.cancel_s)
        await self.stop(node)

    async def stop(self, node: StandInNode) -> None:
        if node.stopped_at is None:
            node.stopped_at, node.how = time.time(), "stopped"
            await node.agent.stop()
            node.task.cancel()


class StandInEngine:
    """One replica's engine: its first task starts a node, later ones find it."""

    def __init__(self, nodes: StandInNodes, index: int) -> None:
        self.nodes = nodes
        self.index = index
        self.node: StandInNode | None = None
        self._starting: asyncio.Task[StandInNode] | None = None

    def submit(self, function: Callable[..., Any], *args: Any) -> Future[Any]:
        version, _spec, request = args
        answer: Future[Any] = Future()
        self.nodes.loop.call_soon_threadsafe(
            lambda: self.nodes.loop.create_task(self._run(version, request, answer))
        )
        return answer

    async def _run(self, version: str, request: dict[str, Any], answer: Future[Any]) -> None:
        try:
            started = self.node is None or self.node.stopped_at is not None
            if started:
                if self._starting is None or self._starting.done():
                    self._starting = asyncio.create_task(
                        self.nodes.start(self.index, request.get("dial"))
                    )
                self.node = await self._starting
            node = self.node
            assert node is not None
            if request.get("dial") is not None and not started:
                write_dial(self.nodes.folder / node.server_id, request["dial"])
            sent = request.get("send", True) is not False
            body = {"object": "chat.completion", "choices": []} if sent else None
            answer.set_result(
                {
                    "runtime_version": version,
                    "status": 200,
                    "body": body,
                    "timings": {
                        "start_wait_s": self.nodes.start_s if started else 0.0,
                        "latency_s": 0.0,
                    },
                    "server": "started" if started else "reused",
                    "node": {
                        "host": node.host,
                        "server_id": node.server_id,
                        "key": digest(node.agent.secret),
                    },
                    "sent": sent,
                }
            )
        except BaseException as err:
            answer.set_exception(err)

    def node_held(self) -> bool:
        return self.node is not None

    def shutdown(self) -> None:
        """The job is cancelled: its node stops."""
        node = self.node
        if node is not None:
            asyncio.run_coroutine_threadsafe(self.nodes.cancel(node), self.nodes.loop)
