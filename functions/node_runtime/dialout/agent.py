"""The agent: dial every router the dial file names, register this server, run the requests
that come down each line.

Each router URL in the dial file (``dialfile``) gets a link of its own: one connection,
dialled again whenever it drops. The agent follows the file: a new URL gets a link, a URL
that left the file is hung up on (with a goodbye), and a new credential for a URL is used
at that link's next dial. A live connection is not cut for a new credential (the routers
hand one out with every keep-alive task; cutting would fail the streams in flight): the
router accepts the credential it admitted for as long as the connection lives.

A router that refuses the credential (HTTP 401 or 403 at the handshake) is not dialled again
until the file gives its URL a new one; one that cannot be reached is dialled again with a
backoff. Requests of every connection run at once, against the one application, and share
the server's in-flight marker.

A server whose engine has died (vLLM answers 500 to every request, and 503 on ``/health``,
until its process ends) must not answer for the routers: an answer that would begin with a
5xx waits for the server's health check, and if that fails too the answer is withheld and
the agent hangs up on every router for good. Each router then sends the requests that had
no answer yet to another server (the line closed before their answers began), as it does
when a node goes away.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import sys
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import IO, Any

from .. import tracing, wire
from ..server_files import ServerPaths, hold_in_flight, release_in_flight
from ..version import __version__
from .dialfile import DIAL_FILE, Dial, read_dials, remove_dial, write_dial
from .link import Link, Stream
from .node_key import make_node_key
from .outbox import Outbox
from .server_load import HEALTH_PATH, METRICS_PATH, read_load, server_down

__all__ = ["DIAL_FILE", "Agent", "Dial", "read_dials", "remove_dial", "write_dial"]

log = logging.getLogger("node_runtime.dialout")
if not log.handlers:
    # The server's own logging setup (vLLM's) may leave this logger without a way out: the
    # agent's lines go to the server's log (its stderr) whatever that setup is.
    _handler = logging.StreamHandler(sys.stderr)
    _handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(_handler)
    log.setLevel(logging.INFO)
    log.propagate = False

Message = MutableMapping[str, Any]
ASGIApp = Callable[..., Awaitable[None]]
_POLL_S = 0.5


class Agent:
    """One server's connections to the routers its dial file names."""

    def __init__(self, app: ASGIApp, folder: str, server_id: str) -> None:
        self.app = app
        self.folder = Path(folder)
        self.paths = ServerPaths(self.folder)
        self.server_id = server_id
        self._inherited: dict[str, Any] = {}
        self._links: dict[str, Link] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = False
        self._down = False  # the server's health check failed: it answers no more
        self._in_flight = 0
        self._marker: IO[str] | None = None
        # Proves this server at each handshake; only its digest is on disk (node_key).
        self.secret = make_node_key(self.folder, server_id)

    def inherit(self, lifespan_scope: MutableMapping[str, Any]) -> None:
        """Keep what every request's scope needs from the lifespan's: the application
        object (Starlette's ``request.app``) and the lifespan state (a copy per request)."""
        self._inherited = {k: lifespan_scope[k] for k in ("app", "state") if k in lifespan_scope}

    def connection(self, url: str) -> Any:
        """The live connection to the router at ``url``, or None."""
        link = self._links.get(url)
        return None if link is None else link.connection

    async def run(self) -> None:
        """Follow the dial file until the server stops: a link for each router it names."""
        try:
            import websockets.asyncio.client  # noqa: F401 - each link imports what it uses
        except ImportError:
            log.error("dialout: the websockets library is missing; requests use the task path")
            return
        try:
            while not self._stopping:
                dials = read_dials(self.folder)
                if dials is not None:
                    await self._follow(dials)
                await asyncio.sleep(_POLL_S)
        finally:
            for link in self._links.values():
                link.task.cancel()

    async def stop(self) -> None:
        """Say goodbye on every connection and hang up."""
        self._stopping = True
        links, self._links = list(self._links.values()), {}
        await asyncio.gather(*(link.hang_up() for link in links))

    async def _follow(self, dials: dict[str, Dial]) -> None:
        for url in [url for url in self._links if url not in dials]:
            log.warning("dialout: %s left the dial file; hanging up", url)
            await self._links.pop(url).hang_up()
        for url, dial in dials.items():
            if self._stopping:
                return
            link = self._links.get(url)
            if link is None:
                self._links[url] = Link(self, dial)
            else:
                link.offer(dial)

    async def load(self) -> tuple[int, int] | None:
        """The server's own (running, waiting) counts, as its metrics give them, if any."""
        head = wire.RequestHead("GET", METRICS_PATH, 0, wire.STREAM_WINDOW, "text/plain")
        return await read_load(self.app, self._scope(head))

    async def is_down(self) -> bool:
        """Whether the server cannot serve (its health check answers 5xx); once it is, the
        agent hangs up on every router and stays down."""
        if not self._down:
            head = wire.RequestHead("GET", HEALTH_PATH, 0, wire.STREAM_WINDOW, "text/plain")
            if await server_down(self.app, self._scope(head)) and not self._down:
                self._down = True  # once: other answers may have asked meanwhile
                log.error(
                    "dialout: the server failed an answer and its health check: hanging up; "
                    "the routers send what it has not answered elsewhere"
                )
                await self.stop()
        return self._down

    def headers(self, dial: Dial) -> list[tuple[str, str]]:
        """The handshake's headers for ``dial``."""
        return [
            ("Authorization", f"Bearer {dial.token}"),
            (wire.ENDPOINT_HEADER, dial.endpoint),
            (wire.SERVER_HEADER, self.server_id),
            (wire.HOST_HEADER, socket.gethostname()),
            (wire.RUNTIME_HEADER, __version__),
            (wire.PROOF_HEADER, self.secret),
        ]

    async def serve(self, connection: Any, link: Link) -> None:
        """Run each request that comes down ``connection`` in a task of its own."""
        streams, outbox = link.streams, link.outbox
        assert outbox is not None  # made with the connection
        async for message in connection:
            link.heard()
            if isinstance(message, str):
                continue  # no control messages travel this way yet
            try:
                kind, stream_id, payload = wire.unpack(message)
                if kind == wire.REQUEST:
                    head, first = wire.parse_request(payload)
                    new = streams[stream_id] = Stream(head)
                    new.take(first)
                    task = asyncio.create_task(self._run(link, outbox, stream_id, new))
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
                elif kind == wire.HEARTBEAT:
                    continue
                elif (stream := streams.get(stream_id)) is None:
                    continue  # a record for a request that has ended
                elif kind == wire.BODY:
                    stream.take(payload)
                elif kind == wire.WINDOW:
                    stream.grant(wire.parse_window(payload))
                elif kind == wire.CANCEL:
                    stream.cancel()
            except wire.WireError as err:
                log.warning("dialout: a record from the router was dropped: %s", err)

    async def _run(self, link: Link, outbox: Outbox, stream_id: int, stream: Stream) -> None:
        """Run one request against the application; send its answer back as it comes."""
        self._begin()
        head = stream.head
        span = None if head.trace is None else self._traced(head)
        status: int | None = None
        content_type = ""
        failure: str | None = None
        withheld = False  # a failed answer of a server that is down: the router resends it
        try:

            async def receive() -> Message:
                if not stream.body_done:
                    return await stream.next_body()
                await stream.cancelled.wait()
                return {"type": "http.disconnect"}

            async def send(message: Message) -> None:
                # The answer's start waits for its first body: a whole answer that fits in
                # one record goes as one ANSWER to a router that takes it; any other, as
                # START, BODY records and END.
                nonlocal status, content_type, withheld
                kind = message["type"]
                if withheld:
                    return
                if kind == "http.response.start":
                    if message["status"] >= 500 and await self.is_down():
                        withheld = True
                        return
                    status, content_type = message["status"], _content_type(message)
                elif kind == "http.response.body" and status is not None:
                    chunk = message.get("body", b"")
                    more = message.get("more_body", False)
                    if not stream.started:
                        stream.started = True
                        if not more and outbox.answers:
                            whole = wire.answer_record(stream_id, status, content_type, chunk)
                            if whole is not None:
                                await outbox.send(stream, whole)
                                return
                        start = wire.start_record(stream_id, status, content_type)
                        await outbox.send(stream, start)
                    if chunk:
                        await self._send_body(outbox, stream, stream_id, chunk)
                    if not more:
                        await outbox.send(stream, wire.pack(wire.END, stream_id))

            await self.app(self._scope(head, span), receive, send)
            if status is not None and not stream.started and not withheld:  # no body came
                stream.started = True
                await outbox.send(stream, wire.start_record(stream_id, status, content_type))
                await outbox.send(stream, wire.pack(wire.END, stream_id))
        except Exception as exc:
            log.exception("dialout: request %s failed in the server", stream_id)
            failure = repr(exc)
            if withheld or (not stream.started and await self.is_down()):
                pass  # the line is closed: the router sends the request elsewhere
            elif stream.started:
                await outbox.send(stream, wire.pack(wire.FAIL, stream_id, repr(exc).encode()))
            else:
                error = {
                    "error": {
                        "message": f"the model server failed: {exc!r}",
                        "type": "server_error",
                        "param": None,
                        "code": None,
                    }
                }
                await outbox.send(stream, wire.start_record(stream_id, 500, "application/json"))
                await self._send_body(outbox, stream, stream_id, json.dumps(error).encode())
                await outbox.send(stream, wire.pack(wire.END, stream_id))
        finally:
            link.streams.pop(stream_id, None)
            self._end()
            if span is not None:
                span.set(cancelled=stream.cancelled.is_set() or None)
                span.end(status, failure)

    async def _send_body(
        self, outbox: Outbox, stream: Stream, stream_id: int, chunk: bytes
    ) -> None:
        """Send answer bytes in records no larger than the wire's bound, each within the
        stream's window: a client that reads slowly holds back this request alone."""
        view = memoryview(chunk)
        while view:
            count = await stream.spend(min(len(view), wire.MAX_PAYLOAD))
            if not count:
                return  # cancelled
            await outbox.send(stream, wire.pack(wire.BODY, stream_id, bytes(view[:count])))
            view = view[count:]

    def _traced(self, head: wire.RequestHead) -> tracing.NodeSpan | None:
        """The request's span under its router's (the call, never its body)."""
        fields = {"http.request.method": head.method, "url.path": head.path}
        return tracing.begin("node.request", head.trace, **fields)

    def _scope(
        self, head: wire.RequestHead, span: tracing.NodeSpan | None = None
    ) -> dict[str, Any]:
        scope: dict[str, Any] = {
            "type": "http",
            # 2.3, not 2.4: under 2.4 Starlette's StreamingResponse stops listening for
            # http.disconnect and waits for send() to raise, which ours never does, so a
            # cancelled stream would run to its end at vLLM.
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1",
            "method": head.method,
            "scheme": "http",
            "path": head.path,
            "raw_path": head.path.encode(),
            "query_string": b"",
            "root_path": "",
            "headers": [
                (b"host", b"127.0.0.1"),
                (b"content-type", head.content_type.encode("latin-1", "replace")),
                (b"content-length", str(head.length).encode()),
            ],
            "client": ("127.0.0.1", 0),
            "server": ("127.0.0.1", 0),
        }
        if span is not None:  # the server's own spans (vLLM's) join the trace beneath it
            scope["headers"] += [(k.encode(), v.encode()) for k, v in span.headers.items()]
        if "app" in self._inherited:
            scope["app"] = self._inherited["app"]
        if "state" in self._inherited:
            scope["state"] = dict(self._inherited["state"])
        return scope

    def _begin(self) -> None:
        """The first request in flight holds the server's in-flight marker (the watchdog's)."""
        if self._in_flight == 0:
            self._marker = hold_in_flight(self.paths)
        self._in_flight += 1

    def _end(self) -> None:
        """The last request out releases it and stamps the last use."""
        self._in_flight -= 1
        if self._in_flight == 0 and self._marker is not None:
            release_in_flight(self.paths, self._marker)
            self._marker = None


def _content_type(message: Message) -> str:
    for name, value in message.get("headers", []):
        if name.lower() == b"content-type":
            return bytes(value).decode("latin-1")
    return "application/json"
