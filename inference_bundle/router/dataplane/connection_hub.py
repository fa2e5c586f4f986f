"""The live connections of every endpoint, and which one a request goes down.

Balancing over a model's replicas: a request of a session goes to the session's own server
(rendezvous hashing with a load bound), any other to the less busy of two drawn at random.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import random
import time
from collections.abc import Callable
from typing import Any

from inference_bundle.router.dataplane.connections import NodeConnection

# A session's server is passed over once it has this many times the mean load (plus one).
SESSION_LOAD_BOUND = 1.25


def sticky(usable: list[NodeConnection], session: str) -> NodeConnection | None:
    """The session's server: the first, in the session's own order of the servers
    (rendezvous hashing: a server joining or leaving moves only the sessions it wins or
    held), whose requests in flight are within ``SESSION_LOAD_BOUND`` × the mean (consistent
    hashing with bounded loads); None when there is no server to choose."""
    if not usable:
        return None
    bound = SESSION_LOAD_BOUND * (sum(c.in_flight for c in usable) + 1) / len(usable)

    def rank(connection: NodeConnection) -> bytes:
        return hashlib.sha256(f"{session}\0{connection.server_id}".encode()).digest()

    for connection in sorted(usable, key=rank):
        if connection.in_flight < bound:
            return connection
    return None


class ConnectionHub:
    """The live connections of every endpoint; picks the one each request goes down."""

    def __init__(self) -> None:
        self._by_endpoint: dict[str, list[NodeConnection]] = {}
        self._arrivals: dict[str, asyncio.Event] = {}
        # Told of each endpoint a server joins (the queue lets waiting requests go to it).
        self.on_arrival: Callable[[str], None] = lambda endpoint: None

    def add(self, connection: NodeConnection) -> None:
        self._by_endpoint.setdefault(connection.endpoint, []).append(connection)
        arrival = self._arrivals.pop(connection.endpoint, None)
        if arrival is not None:
            arrival.set()
        self.on_arrival(connection.endpoint)

    def remove(self, connection: NodeConnection) -> None:
        live = self._by_endpoint.get(connection.endpoint, [])
        if connection in live:
            live.remove(connection)
        connection.close()

    def holding(self, credential: bytes) -> NodeConnection | None:
        """The live connection admitted with ``credential`` (a digest), if any."""
        for live in self._by_endpoint.values():
            for connection in live:
                if connection.credential == credential:
                    return connection
        return None

    def pick(
        self, endpoint: str, avoid: frozenset[str] = frozenset(), session: str | None = None
    ) -> NodeConnection | None:
        """A live connection of ``endpoint``, not of a server in ``avoid`` (retiring).

        A request of a session goes to the session's own server while that one is not
        loaded past the bound (``sticky``), so that a conversation keeps its prefix cache;
        any other to the less busy of two drawn at random (the power of two choices: close
        to the least busy, without every router and request crowding the same one)."""
        live = self._by_endpoint.get(endpoint)
        if not live:
            return None
        if len(live) == 1:
            only = live[0]
            return None if only.closed or only.server_id in avoid else only
        usable = [c for c in live if not c.closed and c.server_id not in avoid]
        if session is not None and (kept := sticky(usable, session)) is not None:
            return kept
        if len(usable) <= 2:
            return min(usable, key=lambda c: c.in_flight, default=None)
        first, second = random.sample(usable, 2)
        return first if first.in_flight <= second.in_flight else second

    def usable(self, endpoint: str, avoid: frozenset[str] = frozenset()) -> int:
        """How many servers of ``endpoint`` a request may go to: live, none in ``avoid``."""
        live = self._by_endpoint.get(endpoint, ())
        return len({c.server_id for c in live if not c.closed and c.server_id not in avoid})

    def beyond_own(self, endpoint: str) -> int:
        """What the endpoint's servers run or queue for other routers (their load reports)."""
        return sum(c.beyond_own for c in self._by_endpoint.get(endpoint, []) if not c.closed)

    def in_flight(self, endpoint: str) -> dict[str, int]:
        """The live connections of ``endpoint``: server id → requests in flight on it."""
        counts: dict[str, int] = {}
        for connection in self._by_endpoint.get(endpoint, []):
            if not connection.closed:
                counts[connection.server_id] = (
                    counts.get(connection.server_id, 0) + connection.in_flight
                )
        return counts

    async def wait_for(self, endpoint: str, timeout_s: float) -> NodeConnection | None:
        """A connection of ``endpoint``, waiting up to ``timeout_s`` for one to dial in."""
        deadline = time.monotonic() + timeout_s
        while (picked := self.pick(endpoint)) is None:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            arrival = self._arrivals.setdefault(endpoint, asyncio.Event())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(arrival.wait(), left)
        return picked

    def servers(self, endpoint: str) -> list[dict[str, Any]]:
        """The connected servers of ``endpoint``, described."""
        return [c.describe() for c in self._by_endpoint.get(endpoint, [])]

    def close_all(self) -> None:
        for live in self._by_endpoint.values():
            for connection in live:
                connection.close()
        self._by_endpoint.clear()
