"""A conversation stays on one replica: X-Session-ID (or the body's "user") picks the server
by rendezvous hashing, within a load bound; other requests spread by two random choices."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import pytest

from inference_bundle.router.dataplane.connection_hub import SESSION_LOAD_BOUND, sticky
from inference_bundle.router.dataplane.connections import NodeConnection
from tests.router.dataplane_fakes import CHAT, Served, chat, connected

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]


async def _send(record: bytes) -> None:
    """A line that takes anything."""


def line(server_id: str, in_flight: int = 0) -> NodeConnection:
    connection = NodeConnection("e", server_id, "host", "0.8.0", _send)
    for n in range(in_flight):
        connection.relays[n + 1] = None  # type: ignore[assignment]
    return connection


def test_a_session_keeps_its_server_and_joins_move_only_some() -> None:
    lines = [line(f"s-{n}") for n in range(4)]
    sessions = [f"alice\0conversation-{n}" for n in range(200)]
    first = {s: sticky(lines, s) for s in sessions}
    assert all(sticky(lines, s) is first[s] for s in sessions)  # the same each time
    # Spread over the servers, not all on one.
    assert len({c.server_id for c in first.values() if c is not None}) == 4
    # A fifth server joins: only the sessions it wins move, and they move to it.
    grown = [*lines, line("s-4")]
    moved = [s for s in sessions if sticky(grown, s) is not first[s]]
    assert 0 < len(moved) < len(sessions) / 2
    assert all(sticky(grown, s).server_id == "s-4" for s in moved)  # type: ignore[union-attr]


def test_a_loaded_session_server_is_passed_over() -> None:
    idle = line("s-idle")
    # A session whose own server is s-busy, while s-busy is not busy.
    session = next(
        s
        for s in (f"bob\0{n}" for n in range(100))
        if sticky([line("s-busy"), idle], s) is not idle
    )
    # 6 in flight on two servers: the bound is 1.25 × 7 / 2 = 4.4; busy is past it.
    assert SESSION_LOAD_BOUND * 7 / 2 < 6
    assert sticky([line("s-busy", 6), idle], session) is idle
    # 1 in flight: the bound is 1.25 × 2 / 2; it keeps its session.
    assert sticky([line("s-busy", 1), idle], session).server_id == "s-busy"  # type: ignore[union-attr]


async def test_a_conversation_stays_on_one_of_two_agents(served: Served) -> None:
    nodes = [await served.start_node("s-1"), await served.start_node("s-2")]
    await connected(served.plane, 2)

    async def ask(headers: dict[str, str], body: dict[str, Any]) -> None:
        answer = await served.client.post(CHAT, json=body, headers=headers)
        assert answer.status_code == 200

    def served_by() -> Counter[str]:
        return Counter(str(n) for n, node in enumerate(nodes) for body in node.model.seen if body)

    for _ in range(6):  # one after another: the session's server is never loaded
        await ask({"X-Session-ID": "conversation-1"}, chat())
    first = served_by()
    assert sorted(first.values()) == [6], first
    # The body's "user" field keys a session too, the same way.
    for _ in range(4):
        await ask({}, chat(user="notebook-7"))
    assert sorted(served_by().values()) in ([4, 6], [10]), served_by()
    # Requests of no session spread: sixteen at once reach both servers.
    for node in nodes:
        node.model.seen.clear()
    await asyncio.gather(*(ask({}, chat()) for _ in range(16)))
    assert len(served_by()) == 2, served_by()
