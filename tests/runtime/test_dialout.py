"""The dial file (one dial per router URL) and the agent's links, against stand-in routers.

The stand-in routers are websockets servers that answer the handshake as told (accept,
401, 403, 503) and record every handshake, so that what the agent dials, and when it does
not, is asserted exactly. The agent against the real router is
tests/router/dataplane/test_dataplane.py.
"""

from __future__ import annotations

import asyncio
import json
import stat
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import Any

import node_runtime.dialout.agent as agent_module
import pytest
from node_runtime.dialout.agent import Agent, Dial, read_dials, remove_dial, write_dial
from node_runtime.dialout.dialfile import DIAL_FILE
from websockets.asyncio.server import ServerConnection, serve
from websockets.http11 import Request, Response

from tests.waiting import until

pytestmark = pytest.mark.timeout(30)


def _dial(url: str, token: str = "t") -> dict[str, Any]:
    return {"url": url, "token": token, "endpoint": "e", "ca_file": None}


def test_dials_merge_by_url_and_the_latest_is_last(tmp_path: Path) -> None:
    write_dial(tmp_path, _dial("http://a", "a1"))
    write_dial(tmp_path, _dial("http://b", "b1"))
    write_dial(tmp_path, _dial("http://a", "a2"))  # a fresh credential for router a
    record = json.loads((tmp_path / DIAL_FILE).read_text())
    assert record["version"] == 2 and list(record["dials"]) == ["http://b", "http://a"]
    assert read_dials(tmp_path) == {
        "http://b": Dial("http://b", "b1", "e", None),
        "http://a": Dial("http://a", "a2", "e", None),
    }
    assert stat.S_IMODE((tmp_path / DIAL_FILE).stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(f".{DIAL_FILE}")] == []
    remove_dial(tmp_path, "http://b")
    assert list(read_dials(tmp_path) or {}) == ["http://a"]


def test_the_single_dial_of_runtime_0_3_is_read_and_merged(tmp_path: Path) -> None:
    (tmp_path / DIAL_FILE).write_text(json.dumps(_dial("http://old", "o")))
    assert read_dials(tmp_path) == {"http://old": Dial("http://old", "o", "e", None)}
    write_dial(tmp_path, _dial("http://new", "n"))
    assert list(read_dials(tmp_path) or {}) == ["http://old", "http://new"]


def test_no_file_is_no_dial_and_a_broken_one_is_unknown(tmp_path: Path) -> None:
    assert read_dials(tmp_path) == {}
    (tmp_path / DIAL_FILE).write_text("{not json")
    assert read_dials(tmp_path) is None  # the agent keeps the links it has
    with pytest.raises(TypeError):
        write_dial(tmp_path, {**_dial("http://a"), "token": None})


def test_concurrent_writers_lose_no_dial(tmp_path: Path) -> None:
    def writer(n: int) -> None:
        for k in range(15):
            write_dial(tmp_path, _dial(f"http://r{n}-{k}"))

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(read_dials(tmp_path) or {}) == 6 * 15


@dataclass
class StandIn:
    """A router that answers every handshake with ``status`` (101: accept) and records it."""

    status: int = 101
    tokens: list[str] = field(default_factory=list)
    byes: int = 0
    url: str = ""
    connected: asyncio.Event = field(default_factory=asyncio.Event)
    closed: asyncio.Event = field(default_factory=asyncio.Event)

    def handshake(self, connection: ServerConnection, request: Request) -> Response | None:
        self.tokens.append(request.headers["Authorization"].removeprefix("Bearer "))
        if self.status == 101:
            return None
        return connection.respond(HTTPStatus(self.status), "no\n")

    async def handler(self, connection: ServerConnection) -> None:
        self.connected.set()
        async for message in connection:
            if isinstance(message, str) and json.loads(message) == {"type": "bye"}:
                self.byes += 1
        self.closed.set()


@asynccontextmanager
async def stand_in(status: int = 101) -> AsyncIterator[StandIn]:
    router = StandIn(status)
    async with serve(router.handler, "127.0.0.1", 0, process_request=router.handshake) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        router.url = f"http://127.0.0.1:{port}"
        yield router


async def _app(scope: Any, receive: Any, send: Any) -> None:
    raise AssertionError("no request is sent in these tests")


@asynccontextmanager
async def running_agent(folder: Path) -> AsyncIterator[Agent]:
    agent = Agent(_app, str(folder), "s-1")
    task = asyncio.create_task(agent.run())
    try:
        yield agent
    finally:
        await agent.stop()
        task.cancel()


@dataclass
class Reads:
    """How many times the agent has read the dial file (it polls it every 0.5 s)."""

    count: int = 0

    async def two_more(self) -> None:
        """Until the agent has read the file twice more: it has acted on what it held now."""
        # The next read sees the caller's change (both run on this event loop); the agent
        # reads again only once it has acted on it.
        wanted = self.count + 2
        await until(lambda: self.count >= wanted, "two more reads of the dial file")


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> Reads:
    """Count the agent's reads of its dial file."""
    counter = Reads()

    def counted(folder: Path) -> dict[str, Dial] | None:
        found = read_dials(folder)
        counter.count += 1
        return found

    monkeypatch.setattr(agent_module, "read_dials", counted)
    return counter


@pytest.mark.parametrize("status", [401, 403])
def test_a_router_that_refuses_the_credential_is_dialled_again_only_with_a_new_one(
    tmp_path: Path, status: int, reads: Reads
) -> None:
    async def test() -> None:
        async with stand_in(status) as refusing, stand_in(503) as failing:
            write_dial(tmp_path, _dial(refusing.url, "first"))
            write_dial(tmp_path, _dial(failing.url, "f"))
            async with running_agent(tmp_path):
                # The unreachable one is tried again with the backoff (0.2, 0.4, 0.8 s).
                await until(lambda: len(failing.tokens) >= 3, "three dials of the 503 router")
                assert refusing.tokens == ["first"]
                write_dial(tmp_path, _dial(refusing.url, "second"))
                await until(lambda: len(refusing.tokens) == 2, "a dial with the new token")
                assert refusing.tokens == ["first", "second"]
                await reads.two_more()
                assert refusing.tokens == ["first", "second"]  # refused again: it waits

    asyncio.run(test())


def test_each_router_gets_a_connection_and_one_that_leaves_the_file_is_hung_up(
    tmp_path: Path, reads: Reads
) -> None:
    async def test() -> None:
        async with stand_in() as first, stand_in() as second:
            write_dial(tmp_path, _dial(first.url, "a"))
            async with running_agent(tmp_path) as agent:
                await asyncio.wait_for(first.connected.wait(), 5)
                write_dial(tmp_path, _dial(second.url, "b"))
                await asyncio.wait_for(second.connected.wait(), 5)
                # A fresh credential for a live connection waits for its next dial.
                write_dial(tmp_path, _dial(first.url, "a2"))
                await reads.two_more()
                assert first.tokens == ["a"] and not first.closed.is_set()
                remove_dial(tmp_path, first.url)
                await asyncio.wait_for(first.closed.wait(), 5)
                assert first.byes == 1 and agent.connection(first.url) is None
                assert agent.connection(second.url) is not None
                await reads.two_more()
                assert first.tokens == ["a"]  # not dialled again
            await asyncio.wait_for(second.closed.wait(), 5)
            assert second.byes == 1  # the agent's stop says goodbye on every connection

    asyncio.run(test())


def test_a_dropped_connection_is_dialled_again_with_the_latest_credential(
    tmp_path: Path, reads: Reads
) -> None:
    async def test() -> None:
        async with stand_in() as router:
            write_dial(tmp_path, _dial(router.url, "a"))
            async with running_agent(tmp_path) as agent:
                await asyncio.wait_for(router.connected.wait(), 5)
                write_dial(tmp_path, _dial(router.url, "b"))
                await reads.two_more()  # the agent has read the new dial
                await agent.connection(router.url).close()
                await until(lambda: router.tokens == ["a", "b"], "a dial with token b")

    asyncio.run(test())
