"""Live node connections by endpoint, and the requests in flight on each.

A ``NodeConnection`` is one server's WebSocket. ``open`` sends a request down it and returns
a ``Relay``, which yields the answer's start and then its body chunks as the node sends them.
The connection's reader (``endpoint.py``) hands every record to its relay. When the
connection closes, every relay still open ends with ``NodeGone``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from node_runtime import wire

SendBytes = Callable[[bytes], Awaitable[None]]
_CLOSED = -1  # a record kind of our own: the connection closed under the relay
_CANCELLING: set[asyncio.Task[None]] = set()  # CANCEL records on their way


class NodeGone(Exception):
    """The server's connection closed, or the server failed, before the answer was whole."""


class Relay:
    """One request on a node connection: its answer's start, then its body, as they come."""

    def __init__(self, connection: NodeConnection, stream_id: int) -> None:
        self.connection = connection
        self.stream_id = stream_id
        self.records: asyncio.Queue[tuple[int, bytes]] = asyncio.Queue()
        self.ended = False

    async def start(self) -> tuple[int, str]:
        """(status, content type) of the answer; NodeGone if it never starts."""
        kind, payload = await self.records.get()
        if kind == wire.START:
            return wire.parse_start(payload)
        self._end()
        raise NodeGone(_why(kind, payload))

    async def body(self) -> AsyncIterator[bytes]:
        """The answer's body chunks until its end; NodeGone if it breaks off."""
        while True:
            kind, payload = await self.records.get()
            if kind == wire.BODY:
                yield payload
            elif kind == wire.END:
                self._end()
                return
            else:
                self._end()
                raise NodeGone(_why(kind, payload))

    async def read(self) -> bytes:
        """The whole body."""
        return b"".join([chunk async for chunk in self.body()])

    def cancel(self) -> None:
        """The client went away: tell the node to abort the request (vLLM stops generating).

        Not a coroutine: it is called from ``finally`` blocks of cancelled tasks, where an
        await would be cancelled too; the CANCEL record goes out from a task of its own.
        """
        if self.ended:
            return
        self._end()
        if not self.connection.closed:
            task = asyncio.ensure_future(self._send_cancel())
            _CANCELLING.add(task)
            task.add_done_callback(_CANCELLING.discard)

    async def _send_cancel(self) -> None:
        with contextlib.suppress(Exception):
            await self.connection.send(wire.pack(wire.CANCEL, self.stream_id))

    def _end(self) -> None:
        if not self.ended:
            self.ended = True
            self.connection.relays.pop(self.stream_id, None)


def _why(kind: int, payload: bytes) -> str:
    if kind == wire.FAIL:
        return "the model server failed mid-answer: " + payload.decode("utf-8", "replace")
    return "the model server's connection closed"


@dataclass(eq=False)
class NodeConnection:
    """One model server's connection to this router."""

    endpoint: str
    server_id: str
    host: str
    runtime: str
    send: SendBytes
    connected_at: float = field(default_factory=time.time)
    relays: dict[int, Relay] = field(default_factory=dict)
    requests: int = 0
    closed: bool = False
    _next_id: int = 0

    @property
    def in_flight(self) -> int:
        return len(self.relays)

    async def open(self, method: str, path: str, body: bytes) -> Relay:
        """Send a request down this connection; NodeGone if it is closed (nothing was sent)."""
        if self.closed:
            raise NodeGone("the model server's connection closed")
        self._next_id = (self._next_id + 1) & 0xFFFFFFFF
        relay = Relay(self, self._next_id)
        self.relays[relay.stream_id] = relay
        try:
            await self.send(wire.request_record(relay.stream_id, method, path, body))
        except Exception as err:
            relay._end()
            raise NodeGone(f"the model server's connection closed ({err!r})") from None
        self.requests += 1
        return relay

    def deliver(self, record: bytes) -> None:
        """A record from the node, to the relay it belongs to (a cancelled one drops it)."""
        kind, stream_id, payload = wire.unpack(record)
        relay = self.relays.get(stream_id)
        if relay is not None:
            relay.records.put_nowait((kind, payload))
            if kind in (wire.END, wire.FAIL):
                # Done at the server, whether or not anyone reads the rest: no longer in flight.
                del self.relays[stream_id]

    def close(self) -> None:
        """The connection ended: every open relay ends with NodeGone."""
        self.closed = True
        for relay in list(self.relays.values()):
            relay.records.put_nowait((_CLOSED, b""))

    def describe(self) -> dict[str, Any]:
        """What /jobs and /list-endpoints show of this connection."""
        return {
            "server_id": self.server_id,
            "host": self.host,
            "connected_at": round(self.connected_at, 3),
            "in_flight": self.in_flight,
            "requests": self.requests,
        }


class ConnectionHub:
    """The live connections of every endpoint; picks the least busy one."""

    def __init__(self) -> None:
        self._by_endpoint: dict[str, list[NodeConnection]] = {}
        self._arrivals: dict[str, asyncio.Event] = {}

    def add(self, connection: NodeConnection) -> None:
        self._by_endpoint.setdefault(connection.endpoint, []).append(connection)
        arrival = self._arrivals.pop(connection.endpoint, None)
        if arrival is not None:
            arrival.set()

    def remove(self, connection: NodeConnection) -> None:
        live = self._by_endpoint.get(connection.endpoint, [])
        if connection in live:
            live.remove(connection)
        connection.close()

    def pick(self, endpoint: str) -> NodeConnection | None:
        """The live connection of ``endpoint`` with the fewest requests in flight."""
        live = self._by_endpoint.get(endpoint)
        if not live:
            return None
        if len(live) == 1:
            return live[0]
        return min(live, key=lambda c: c.in_flight)

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
