"""Live node connections by endpoint, and the requests in flight on each.

A ``NodeConnection`` is one server's WebSocket. ``open`` sends a request down it and returns
a ``Relay``, which yields the answer's start and then its body chunks as the node sends them.
The connection's reader (``connect_route.py``) hands every record to its relay; which
connection a request goes down is ``connection_hub``'s choice. When the connection closes,
every relay still open ends with ``NodeGone``.

A relay buffers at most its window of answer bytes: the node sends no more until the relay's
reader has taken them and granted them back (``node_runtime.wire``), so a client that stops
reading holds back its own stream, and the router's memory stays bounded. A node that sends
past the window, or a record that makes no sense, fails that request alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from node_runtime import wire

from inference_bundle.router import tracing

SendBytes = Callable[[bytes], Awaitable[None]]
HangUp = Callable[[], Awaitable[None]]
_CLOSED = -1  # record kinds of our own: the connection closed under the relay,
_OVERRUN = -2  # or the node sent past the stream's window
_CANCELLING: set[asyncio.Task[None]] = set()  # CANCEL records on their way
_BATCH_KIND = bytes([wire.BATCH])  # a record's first byte is its kind


class NodeGone(Exception):
    """The server's connection closed, or the server failed, before the answer was whole."""

    def __init__(self, why: str, unsent: bool = False) -> None:
        super().__init__(why)
        # The line closed before the answer began: nothing reached the client, and the
        # request may go to another connection.
        self.unsent = unsent


class AnswerTooLarge(Exception):
    """A whole answer grew past the router's bound (``data_plane.max_answer_bytes``)."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"the answer is larger than {limit} bytes")
        self.limit = limit


class Relay:
    """One request on a node connection: its answer's start, then its body, as they come.

    In a traced request it is the ``relay`` span, from the request sent to the answer's end
    (or its failure, or its cancelling), whose context the REQUEST head carries to the node.
    """

    def __init__(
        self,
        connection: NodeConnection,
        stream_id: int,
        window: int,
        span: tracing.Span | None = None,
    ) -> None:
        self.connection = connection
        self.stream_id = stream_id
        self.window = window
        self.span = span
        self.records: asyncio.Queue[tuple[int, bytes]] = asyncio.Queue()
        self.buffered = 0  # answer bytes received and not yet taken
        self._taken = 0  # bytes taken and not yet granted back
        self.ended = False

    async def start(self) -> tuple[int, str]:
        """(status, content type) of the answer; NodeGone if it never starts."""
        kind, payload = await self.records.get()
        if kind == wire.START:
            try:
                started = wire.parse_start(payload)
            except wire.WireError as err:
                self.cancel()
                raise NodeGone(f"the model server's answer began malformed ({err})") from None
            if self.span is not None:
                self.span.set_attribute("http.response.status_code", started[0])
            return started
        self._end(_why(kind, payload))
        raise NodeGone(_why(kind, payload), unsent=kind == _CLOSED)

    async def body(self) -> AsyncIterator[bytes]:
        """The answer's body chunks until its end; NodeGone if it breaks off."""
        while True:
            kind, payload = await self.records.get()
            if kind == wire.BODY:
                self.buffered -= len(payload)
                await self._grant(len(payload))
                yield payload
            elif kind == wire.END:
                self._end()
                return
            else:
                self._end(_why(kind, payload))
                raise NodeGone(_why(kind, payload))

    async def read(self, limit: int) -> bytes:
        """The whole body; AnswerTooLarge (the request cancelled) past ``limit`` bytes."""
        parts: list[bytes] = []
        size = 0
        async for chunk in self.body():
            size += len(chunk)
            if size > limit:
                self.cancel()
                raise AnswerTooLarge(limit)
            parts.append(chunk)
        return b"".join(parts)

    def offer(self, kind: int, payload: bytes) -> None:
        """A record from the node; one that overruns the window fails this request."""
        if kind == wire.BODY:
            self.buffered += len(payload)
            if self.buffered > self.window:
                self.cancel()
                self.records.put_nowait((_OVERRUN, b""))
                return
        self.records.put_nowait((kind, payload))

    async def _grant(self, count: int) -> None:
        """Give taken bytes back to the node's window, a quarter window at a time."""
        self._taken += count
        if self._taken >= self.window // 4 and not self.ended:
            granted, self._taken = self._taken, 0
            with contextlib.suppress(Exception):
                await self.connection.send(wire.window_record(self.stream_id, granted))

    def cancel(self) -> None:
        """The client went away: tell the node to abort the request (vLLM stops generating).

        Not a coroutine: it is called from ``finally`` blocks of cancelled tasks, where an
        await would be cancelled too; the CANCEL record goes out from a task of its own.
        """
        if self.ended:
            return
        self._end(cancelled=True)
        if not self.connection.closed:
            task = asyncio.ensure_future(self._send_cancel())
            _CANCELLING.add(task)
            task.add_done_callback(_CANCELLING.discard)

    async def _send_cancel(self) -> None:
        with contextlib.suppress(Exception):
            await self.connection.send(wire.pack(wire.CANCEL, self.stream_id))

    def _end(self, why: str | None = None, cancelled: bool = False) -> None:
        if not self.ended:
            self.ended = True
            self.connection.relays.pop(self.stream_id, None)
            if self.span is not None:
                if cancelled:
                    self.span.set_attribute("cancelled", True)
                tracing.ended(self.span, why=why)


def _why(kind: int, payload: bytes) -> str:
    if kind == wire.FAIL:
        return "the model server failed mid-answer: " + payload.decode("utf-8", "replace")[:500]
    if kind == _OVERRUN:
        return "the model server sent more than the stream's window"
    if kind == _CLOSED:
        return "the model server's connection closed"
    return f"the model server sent a record of unknown kind {kind}"


@dataclass(eq=False)
class NodeConnection:
    """One model server's connection to this router."""

    endpoint: str
    server_id: str
    host: str
    runtime: str
    send: SendBytes
    window: int = wire.STREAM_WINDOW
    credential: bytes = b""  # the digest of the credential it was admitted with
    hang_up: HangUp | None = None
    superseded: bool = False  # the same server dialled again: this line was let go
    connected_at: float = field(default_factory=time.time)
    relays: dict[int, Relay] = field(default_factory=dict)
    requests: int = 0
    closed: bool = False
    # What the server last said of its own load (wire.LOAD): (running, waiting), or None.
    load: tuple[int, int] | None = None
    _next_id: int = 0

    @property
    def in_flight(self) -> int:
        return len(self.relays)

    async def open(
        self, method: str, path: str, body: bytes, content_type: str = "application/json"
    ) -> Relay:
        """Send a request down this connection; NodeGone if it is closed (nothing was sent)."""
        if self.closed:
            raise NodeGone("the model server's connection closed")
        self._next_id = self._next_id % 0xFFFFFFFF + 1  # 0 is the line's own (heartbeats)
        traced = tracing.current()
        span = None if traced is None else self._relay_span(traced)
        relay = Relay(self, self._next_id, self.window, span)
        self.relays[relay.stream_id] = relay
        try:
            records = wire.request_records(
                relay.stream_id,
                method,
                path,
                body,
                self.window,
                content_type,
                None if traced is None or span is None else traced.carried(span),
            )
            for record in records:
                if relay.ended:
                    break  # cancelled while its body was on the way
                await self.send(record)
        except Exception as err:
            why = f"the model server's connection closed ({err!r})"
            relay._end(why)
            raise NodeGone(why, unsent=True) from None
        self.requests += 1
        return relay

    def _relay_span(self, traced: tracing.RequestTrace) -> tracing.Span:
        return traced.start("relay", via="connection", server=server_label(self.server_id))

    def deliver(self, record: bytes) -> None:
        """A record from the node, to the relay it belongs to (a cancelled one drops it)."""
        kind, stream_id, payload = wire.unpack(record)
        if kind == wire.BATCH:  # several records, as the node wrote them in one turn
            for each in wire.unbatch(payload):
                if each[:1] == _BATCH_KIND:
                    raise wire.WireError("a BATCH record inside a BATCH record")
                self.deliver(each)
            return
        if kind == wire.LOAD:
            self.load = wire.parse_load(payload)
            return
        relay = self.relays.get(stream_id)
        if relay is not None:
            if kind == wire.ANSWER:  # START, BODY and END in one record
                start, _, body = payload.partition(b"\n")  # a bad start fails at start()
                relay.offer(wire.START, start)
                if body:
                    relay.offer(wire.BODY, body)
                kind, payload = wire.END, b""
            relay.offer(kind, payload)
            if kind in (wire.END, wire.FAIL):
                # Done at the server, whether or not anyone reads the rest: no longer in flight.
                self.relays.pop(stream_id, None)

    async def let_go(self) -> None:
        """Hang up on the node (its reader then ends as for any closed line)."""
        self.close()
        if self.hang_up is not None:
            with contextlib.suppress(Exception):
                await self.hang_up()

    def close(self) -> None:
        """The connection ended: every open relay ends with NodeGone."""
        self.closed = True
        for relay in list(self.relays.values()):
            relay.records.put_nowait((_CLOSED, b""))

    def describe(self) -> dict[str, Any]:
        """What /jobs and /list-endpoints show of this connection: a label for the server,
        not its id, which the server's credential is bound to."""
        return {
            "server": server_label(self.server_id),
            "host": self.host,
            "connected_at": round(self.connected_at, 3),
            "in_flight": self.in_flight,
            "requests": self.requests,
            "server_running": None if self.load is None else self.load[0],
            "server_waiting": None if self.load is None else self.load[1],
        }

    @property
    def beyond_own(self) -> int:
        """The requests the server runs or queues that this router did not send it (other
        routers'), as its last load report says; 0 without one."""
        if self.load is None:
            return 0
        return max(0, sum(self.load) - self.in_flight)


@functools.lru_cache(maxsize=1024)
def server_label(server_id: str) -> str:
    """How users see a server: a short digest of its id, which tells servers apart."""
    return hashlib.sha256(server_id.encode()).hexdigest()[:10]
