"""The agent: dial the router, register this server, run the requests that come down the line."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import ssl
import sys
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from .. import __version__, wire
from ..state import ServerPaths, hold_in_flight, release_in_flight

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
DIAL_FILE = "dial.json"
_POLL_S = 0.5
_MAX_BACKOFF_S = 5.0
_LOOPBACK = ("127.0.0.1", "localhost", "[::1]")


@dataclass(frozen=True)
class Dial:
    """Where and as what to dial, as the node runtime wrote it for this server."""

    url: str
    token: str
    endpoint: str
    ca_file: str | None
    stamp: tuple[int, int]  # the file's (mtime_ns, size): a new credential is a new stamp


def write_dial(folder: Path, dial: dict[str, Any]) -> None:
    """Write a server's dial file (owner-only, replaced atomically)."""
    target = folder / DIAL_FILE
    temporary = folder / f".{DIAL_FILE}.{os.getpid()}"
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        json.dump(dial, handle)
    os.replace(temporary, target)


def read_dial(folder: Path) -> Dial | None:
    """The dial file, or None while there is none (or it is being replaced)."""
    path = folder / DIAL_FILE
    try:
        info = path.stat()
        fields = json.loads(path.read_text())
        return Dial(
            url=str(fields["url"]),
            token=str(fields["token"]),
            endpoint=str(fields["endpoint"]),
            ca_file=fields.get("ca_file"),
            stamp=(info.st_mtime_ns, info.st_size),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


@dataclass
class _Stream:
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)
    body_taken: bool = False
    started: bool = False


class Agent:
    """One server's connection to the router, dialled again whenever it drops."""

    def __init__(self, app: ASGIApp, folder: str, server_id: str) -> None:
        self.app = app
        self.folder = Path(folder)
        self.paths = ServerPaths(self.folder)
        self.server_id = server_id
        self._inherited: dict[str, Any] = {}
        self._streams: dict[int, _Stream] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._connection: Any = None
        self._stopping = False
        self._in_flight = 0
        self._marker: IO[str] | None = None

    def inherit(self, lifespan_scope: MutableMapping[str, Any]) -> None:
        """Keep what every request's scope needs from the lifespan's: the application
        object (Starlette's ``request.app``) and the lifespan state (a copy per request)."""
        self._inherited = {k: lifespan_scope[k] for k in ("app", "state") if k in lifespan_scope}

    async def run(self) -> None:
        """Dial, serve, and dial again, until the server stops."""
        try:
            from websockets.asyncio.client import connect
            from websockets.exceptions import InvalidStatus, WebSocketException
        except ImportError:
            log.error("dialout: the websockets library is missing; requests use the task path")
            return
        refused: tuple[int, int] | None = None
        delay = 0.2
        while not self._stopping:
            dial = await self._wait_dial(refused)
            try:
                async with connect(
                    wire.websocket_url(dial.url),
                    additional_headers=self._headers(dial),
                    compression=None,  # about a fifth of the relay's CPU, for JSON that is small
                    max_size=None,
                    ping_interval=20,
                    ping_timeout=20,
                    open_timeout=10,
                    ssl=_ssl_context(dial) if dial.url.startswith("https://") else None,
                    proxy=None if _loopback(dial.url) else True,
                ) as connection:
                    log.warning("dialout: connected to %s as %s", dial.url, dial.endpoint)
                    delay = 0.2
                    self._connection = connection
                    await self._serve(connection)
            except InvalidStatus as exc:
                status = exc.response.status_code
                log.warning("dialout: %s refused this server (HTTP %s)", dial.url, status)
                if status == 403:
                    refused = dial.stamp  # wait for a new credential from a task
            except (OSError, TimeoutError, WebSocketException) as exc:
                log.warning("dialout: connection to %s lost or failed: %r", dial.url, exc)
            except Exception:  # a bad dial file or record: say so, and never stop dialling
                log.exception("dialout: unexpected failure on the connection to %s", dial.url)
            finally:
                self._connection = None
                for stream in self._streams.values():
                    stream.cancelled.set()  # their clients were told by the router
            if not self._stopping:
                await asyncio.sleep(delay)
                delay = min(delay * 2, _MAX_BACKOFF_S)

    async def stop(self) -> None:
        """Say goodbye (the router forgets this server's credential) and hang up."""
        self._stopping = True
        connection = self._connection
        if connection is not None:
            with contextlib.suppress(Exception):
                await connection.send(json.dumps({"type": "bye"}))
                await connection.close()

    def _headers(self, dial: Dial) -> list[tuple[str, str]]:
        return [
            ("Authorization", f"Bearer {dial.token}"),
            (wire.ENDPOINT_HEADER, dial.endpoint),
            (wire.SERVER_HEADER, self.server_id),
            (wire.HOST_HEADER, socket.gethostname()),
            (wire.RUNTIME_HEADER, __version__),
        ]

    async def _wait_dial(self, refused: tuple[int, int] | None) -> Dial:
        while True:
            dial = read_dial(self.folder)
            if dial is not None and dial.stamp != refused:
                return dial
            await asyncio.sleep(_POLL_S)

    async def _serve(self, connection: Any) -> None:
        async for message in connection:
            if isinstance(message, str):
                continue  # no control messages travel this way yet
            kind, stream_id, payload = wire.unpack(message)
            if kind == wire.REQUEST:
                stream = self._streams[stream_id] = _Stream()
                task = asyncio.create_task(self._run(connection, stream_id, stream, payload))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            elif kind == wire.CANCEL:
                cancelled = self._streams.get(stream_id)
                if cancelled is not None:
                    cancelled.cancelled.set()

    async def _run(self, connection: Any, stream_id: int, stream: _Stream, payload: bytes) -> None:
        """Run one request against the application; send its answer back as it comes."""
        self._begin()
        try:
            method, path, body = wire.parse_request(payload)

            async def receive() -> Message:
                if not stream.body_taken:
                    stream.body_taken = True
                    return {"type": "http.request", "body": body, "more_body": False}
                await stream.cancelled.wait()
                return {"type": "http.disconnect"}

            async def send(message: Message) -> None:
                kind = message["type"]
                if kind == "http.response.start":
                    stream.started = True
                    await self._send(
                        connection,
                        stream,
                        wire.start_record(stream_id, message["status"], _content_type(message)),
                    )
                elif kind == "http.response.body":
                    chunk = message.get("body", b"")
                    if chunk:
                        await self._send(connection, stream, wire.pack(wire.BODY, stream_id, chunk))
                    if not message.get("more_body", False):
                        await self._send(connection, stream, wire.pack(wire.END, stream_id))

            await self.app(self._scope(method, path, body), receive, send)
        except Exception as exc:
            log.exception("dialout: request %s failed in the server", stream_id)
            if stream.started:
                record = wire.pack(wire.FAIL, stream_id, repr(exc).encode())
                await self._send(connection, stream, record)
            else:
                error = {
                    "error": {
                        "message": f"the model server failed: {exc!r}",
                        "type": "server_error",
                        "param": None,
                        "code": None,
                    }
                }
                await self._send(
                    connection, stream, wire.start_record(stream_id, 500, "application/json")
                )
                await self._send(
                    connection, stream, wire.pack(wire.BODY, stream_id, json.dumps(error).encode())
                )
                await self._send(connection, stream, wire.pack(wire.END, stream_id))
        finally:
            self._streams.pop(stream_id, None)
            self._end()

    async def _send(self, connection: Any, stream: _Stream, record: bytes) -> None:
        """Send one record; a connection that is gone cancels the request instead."""
        if stream.cancelled.is_set():
            return
        try:
            await connection.send(record)
        except Exception:
            stream.cancelled.set()

    def _scope(self, method: str, path: str, body: bytes) -> dict[str, Any]:
        scope: dict[str, Any] = {
            "type": "http",
            # 2.3, not 2.4: under 2.4 Starlette's StreamingResponse stops listening for
            # http.disconnect and waits for send() to raise, which ours never does, so a
            # cancelled stream would run to its end at vLLM.
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1",
            "method": method,
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"",
            "root_path": "",
            "headers": [
                (b"host", b"127.0.0.1"),
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
            "client": ("127.0.0.1", 0),
            "server": ("127.0.0.1", 0),
        }
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


def _ssl_context(dial: Dial) -> ssl.SSLContext:
    """Trust the router's CA file when the deployment names one, else the system's CAs."""
    return ssl.create_default_context(cafile=dial.ca_file)


def _loopback(url: str) -> bool:
    host = url.split("://", 1)[-1].split("/", 1)[0].rsplit(":", 1)[0]
    return host in _LOOPBACK
