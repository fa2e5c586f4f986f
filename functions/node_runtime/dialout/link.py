"""One router's line: dialled, served by the agent, and dialled again until hung up.

A router that refuses the credential (HTTP 401 or 403 at the handshake) is not dialled again
until the dial file gives its URL a new one; one that cannot be reached is dialled again
with a backoff (``agent`` says how links follow the file).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
import time
from typing import Any, Protocol

from .. import wire
from .dialfile import Dial
from .outbox import Outbox

log = logging.getLogger("node_runtime.dialout")
_FIRST_BACKOFF_S = 0.2
_MAX_BACKOFF_S = 5.0
_REFUSED = (401, 403)  # the router does not take this credential: wait for a new one
_LOOPBACK = ("127.0.0.1", "localhost", "[::1]")


class LinkAgent(Protocol):
    """What a link needs of its agent (``agent.Agent``): the handshake's headers, and
    someone to serve the line once it is connected."""

    def headers(self, dial: Dial) -> list[tuple[str, str]]:
        """The handshake's headers for ``dial``."""
        ...

    async def serve(self, connection: Any, link: Link) -> None:
        """Run the requests that come down ``connection`` until it closes."""
        ...

    async def load(self) -> tuple[int, int] | None:
        """The server's own (running, waiting) counts, if it reports them."""
        ...


class Stream:
    """One request a router sent down a line, as the agent runs it: its body as it arrives,
    and the window of answer bytes it may still send (``node_runtime.wire``)."""

    def __init__(self, head: wire.RequestHead) -> None:
        self.head = head
        self.cancelled = asyncio.Event()
        self.started = False
        self.body_done = False
        self._received = 0
        self._parts: asyncio.Queue[bytes] = asyncio.Queue()
        self._credit = head.window
        self._granted = asyncio.Event()

    def take(self, part: bytes) -> None:
        """Bytes of the request's body, as the router sent them."""
        self._received += len(part)
        if self._received > self.head.length:
            raise wire.WireError(f"a request body longer than its {self.head.length} bytes")
        self._parts.put_nowait(part)

    async def next_body(self) -> dict[str, Any]:
        """The application's next ``http.request`` message."""
        if self.head.length == 0:
            part = b""
        else:
            part = await self._parts.get()
            while not self._parts.empty():
                part += self._parts.get_nowait()
        self.body_done = self._received >= self.head.length and self._parts.empty()
        return {"type": "http.request", "body": part, "more_body": not self.body_done}

    def grant(self, count: int) -> None:
        """The router took ``count`` answer bytes from its buffer: that many more may go."""
        self._credit += count
        self._granted.set()

    async def spend(self, wanted: int) -> int:
        """Up to ``wanted`` bytes of the window, waiting until some is open; 0 if cancelled."""
        while self._credit <= 0:
            if self.cancelled.is_set():
                return 0
            self._granted.clear()
            await self._granted.wait()
        if self.cancelled.is_set():
            return 0
        count = min(wanted, self._credit)
        self._credit -= count
        return count

    def cancel(self) -> None:
        """The client went away, or the line did: stop the request and any wait for window."""
        self.cancelled.set()
        self._granted.set()


class Link:
    """The connection to one router: dialled, served, and dialled again until hung up."""

    def __init__(self, agent: LinkAgent, dial: Dial) -> None:
        self.agent = agent
        self.dial = dial
        self.changed = asyncio.Event()  # the file gave this URL a new dial
        self.refused: str | None = None  # the credential this router refused
        self.connection: Any = None
        self.outbox: Outbox | None = None
        self.streams: dict[int, Stream] = {}  # stream ids are the router's: one set a link
        self.last_heard = time.monotonic()
        self.closing = False
        self.task = asyncio.create_task(self.run())

    def offer(self, dial: Dial) -> None:
        """The dial file's current entry for this URL: used at the next dial."""
        if dial != self.dial:
            self.dial = dial
            self.changed.set()

    async def run(self) -> None:
        from websockets.asyncio.client import connect
        from websockets.exceptions import InvalidStatus, WebSocketException

        delay = _FIRST_BACKOFF_S
        while not self.closing:
            if self.dial.token == self.refused:
                await self.changed.wait()  # a task brings a new credential, or never
            self.changed.clear()
            dial = self.dial
            try:
                async with connect(
                    wire.websocket_url(dial.url),
                    additional_headers=self.agent.headers(dial),
                    compression=None,  # about a fifth of the relay's CPU, for JSON that is small
                    max_size=wire.MAX_MESSAGE,
                    # Liveness is any record heard (heartbeats): no late pong cuts a busy line.
                    ping_interval=None,
                    open_timeout=10,
                    ssl=_ssl_context(dial) if dial.url.startswith("https://") else None,
                    proxy=None if _loopback(dial.url) else True,
                ) as connection:
                    log.warning("dialout: connected to %s as %s", dial.url, dial.endpoint)
                    delay = _FIRST_BACKOFF_S
                    self.connection = connection
                    answer = connection.response  # the handshake's: set once connected
                    takes = "" if answer is None else answer.headers.get(wire.RECORDS_HEADER, "")
                    outbox = self.outbox = Outbox(connection, takes)
                    self.heard()
                    beating = asyncio.create_task(self._heartbeat(connection))
                    try:
                        await self.agent.serve(connection, self)
                    finally:
                        beating.cancel()
                        outbox.close()
            except InvalidStatus as exc:
                status = exc.response.status_code
                if status in _REFUSED:
                    log.warning(
                        "dialout: %s refused this server's credential (HTTP %s); it is dialled "
                        "again once a task of that router brings a new one",
                        dial.url,
                        status,
                    )
                    self.refused = dial.token
                    continue
                log.warning("dialout: %s refused this server (HTTP %s)", dial.url, status)
            except (OSError, TimeoutError, WebSocketException) as exc:
                log.warning("dialout: connection to %s lost or failed: %r", dial.url, exc)
            except Exception:  # a bad dial or record: say so, and never stop dialling
                log.exception("dialout: unexpected failure on the connection to %s", dial.url)
            finally:
                self.connection = self.outbox = None
                for stream in self.streams.values():
                    stream.cancel()  # their clients were told by the router
            if not self.closing:
                # A new credential cuts the backoff short.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.changed.wait(), delay)
                delay = min(delay * 2, _MAX_BACKOFF_S)

    def heard(self) -> None:
        """Something came down the line: it is alive."""
        self.last_heard = time.monotonic()

    async def _heartbeat(self, connection: Any) -> None:
        """A heartbeat every HEARTBEAT_S (the router echoes it), with the server's load; a
        line silent for SILENCE_S is hung up on, and dialled again."""
        while True:
            await asyncio.sleep(wire.HEARTBEAT_S)
            silent = time.monotonic() - self.last_heard
            if silent > wire.SILENCE_S:
                log.warning(
                    "dialout: nothing heard from %s for %.0f s; dialling again",
                    self.dial.url,
                    silent,
                )
                await connection.close()
                return
            with contextlib.suppress(Exception):
                await connection.send(wire.HEARTBEAT_RECORD)
                load = await self.agent.load()
                if load is not None:
                    await connection.send(wire.load_record(*load))

    async def hang_up(self) -> None:
        """Say goodbye (the router forgets this server's credential) and stop dialling."""
        self.closing = True
        connection, outbox = self.connection, self.outbox
        if connection is not None:
            if outbox is not None:
                await outbox.drain()  # the ends of answers sent just now go first
            with contextlib.suppress(Exception):
                await connection.send(json.dumps({"type": "bye"}))
                await connection.close()
        self.task.cancel()
        await asyncio.wait({self.task})


def _ssl_context(dial: Dial) -> ssl.SSLContext:
    """Trust the router's CA file when the deployment names one, else the system's CAs."""
    return ssl.create_default_context(cafile=dial.ca_file)


def _loopback(url: str) -> bool:
    host = url.split("://", 1)[-1].split("/", 1)[0].rsplit(":", 1)[0]
    return host in _LOOPBACK
