"""What the agent sends one router, as few messages as it can (``node_runtime.wire``).

A router of runtime 0.10 names the records it takes in its handshake's answer (``wire.
RECORDS_HEADER``). To such a router the outbox sends a whole answer that fits one record as
one ANSWER, and what the agent's requests write in one turn of the event loop (a token of
each of the streams a step of vLLM made, say) as one BATCH message: one write and one
message for the router to read, not one each. To an older router every record goes as it
is, one message each.

Order is kept: records go in the order they were sent. A record that cannot go (the line
closed) cancels its request, as a send that failed always did. What waits here is bounded
as before: a request sends answer bytes only within its stream's window.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, Protocol

from .. import wire

DRAIN_S = 1.0  # the longest a hang-up waits for what is pending to go


class Stream(Protocol):
    """What the outbox needs of a request (``link.Stream``)."""

    cancelled: asyncio.Event

    def cancel(self) -> None: ...


class Outbox:
    """One connection's sender."""

    def __init__(self, connection: Any, takes: str) -> None:
        self.connection = connection
        names = set(takes.split())
        self.answers = "answer" in names  # a whole answer may go as one ANSWER record
        self._batches = "batch" in names
        self._pending: list[tuple[Stream, bytes]] = []
        self._ready = asyncio.Event()
        self._writing = False
        self._writer: asyncio.Task[None] | None = None
        if self._batches:
            self._writer = asyncio.create_task(self._write())

    async def send(self, stream: Stream, record: bytes) -> None:
        """Send one of ``stream``'s records; a line that is gone cancels the request."""
        if stream.cancelled.is_set():
            return
        if self._writer is None:
            try:
                await self.connection.send(record)
            except Exception:
                stream.cancel()
            return
        self._pending.append((stream, record))
        self._ready.set()  # the writer wakes after this turn's other sends

    async def drain(self) -> None:
        """Wait (at most DRAIN_S) until what was sent has gone: before a goodbye."""
        deadline = asyncio.get_running_loop().time() + DRAIN_S
        while (self._pending or self._writing) and self._writer is not None:
            if self._writer.done() or asyncio.get_running_loop().time() > deadline:
                return
            await asyncio.sleep(0.001)

    def close(self) -> None:
        """The connection ended: what is still pending cannot go."""
        if self._writer is not None:
            self._writer.cancel()
        for stream, _ in self._pending:
            stream.cancel()
        self._pending.clear()

    async def _write(self) -> None:
        while True:
            await self._ready.wait()
            self._ready.clear()
            pending, self._pending = self._pending, []
            records = [record for stream, record in pending if not stream.cancelled.is_set()]
            self._writing = True
            try:
                for message in wire.batches(records):
                    await self.connection.send(message)
            except Exception:
                for stream, _ in pending:
                    stream.cancel()
                with contextlib.suppress(Exception):
                    await self.connection.close()
                return
            finally:
                self._writing = False
