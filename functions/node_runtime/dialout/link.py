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
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .. import wire
from .dialfile import Dial

if TYPE_CHECKING:
    from .agent import Agent

log = logging.getLogger("node_runtime.dialout")
_FIRST_BACKOFF_S = 0.2
_MAX_BACKOFF_S = 5.0
_REFUSED = (401, 403)  # the router does not take this credential: wait for a new one
_LOOPBACK = ("127.0.0.1", "localhost", "[::1]")


@dataclass
class Stream:
    """One request a router sent down a line, as the agent runs it."""

    cancelled: asyncio.Event = field(default_factory=asyncio.Event)
    body_taken: bool = False
    started: bool = False


class Link:
    """The connection to one router: dialled, served, and dialled again until hung up."""

    def __init__(self, agent: Agent, dial: Dial) -> None:
        self.agent = agent
        self.dial = dial
        self.changed = asyncio.Event()  # the file gave this URL a new dial
        self.refused: str | None = None  # the credential this router refused
        self.connection: Any = None
        self.streams: dict[int, Stream] = {}  # stream ids are the router's: one set a link
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
                    max_size=None,
                    ping_interval=20,
                    ping_timeout=20,
                    open_timeout=10,
                    ssl=_ssl_context(dial) if dial.url.startswith("https://") else None,
                    proxy=None if _loopback(dial.url) else True,
                ) as connection:
                    log.warning("dialout: connected to %s as %s", dial.url, dial.endpoint)
                    delay = _FIRST_BACKOFF_S
                    self.connection = connection
                    await self.agent.serve(connection, self.streams)
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
                self.connection = None
                for stream in self.streams.values():
                    stream.cancelled.set()  # their clients were told by the router
            if not self.closing:
                # A new credential cuts the backoff short.
                # (asyncio's own TimeoutError: the runtime supports Python 3.10)
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self.changed.wait(), delay)
                delay = min(delay * 2, _MAX_BACKOFF_S)

    async def hang_up(self) -> None:
        """Say goodbye (the router forgets this server's credential) and stop dialling."""
        self.closing = True
        connection = self.connection
        if connection is not None:
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
