"""The real services behind several routers: PostgreSQL (tests/postgres.py) and nginx
(tests/replicas.py, rendering docs/nginx-replicas.conf), checked on their own before the
router tests rely on them."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import psycopg
import pytest
from websockets.sync.client import connect as ws_connect
from websockets.sync.server import ServerConnection
from websockets.sync.server import serve as ws_serve

from tests import postgres as postgres_module
from tests.postgres import PostgresMissing, PostgresServer
from tests.replicas import REPLICAS_CONF, Nginx, render_replicas_conf

SSE_RELEASE_WAIT_S = 5.0


def test_postgres_answers_in_the_modules_database(postgres_url: str) -> None:
    with psycopg.connect(postgres_url) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
        assert conn.execute("SELECT current_user").fetchone() == ("bundle",)


def test_a_stopped_postgres_refuses_and_comes_back_with_its_data(
    postgres: PostgresServer, postgres_url: str
) -> None:
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE kept (n int)")
        conn.execute("INSERT INTO kept VALUES (7)")
    port = postgres.port
    postgres.stop()
    try:
        assert not postgres.running
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(postgres_url, connect_timeout=5)
    finally:
        postgres.start()
    assert postgres.port == port
    with psycopg.connect(postgres_url) as conn:
        assert conn.execute("SELECT n FROM kept").fetchall() == [(7,)]


def test_fresh_databases_are_separate(postgres: PostgresServer) -> None:
    first = postgres.fresh_database("tests.router.service.test_services")
    second = postgres.fresh_database("tests.router.service.test_services")
    assert first != second
    with psycopg.connect(first, autocommit=True) as conn:
        conn.execute("CREATE TABLE only_here (n int)")
    with psycopg.connect(second) as conn:
        tables = conn.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_name = 'only_here'"
        ).fetchone()
    assert tables == (0,)


def test_missing_postgres_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(postgres_module, "DEBIAN_BINARIES", tmp_path)
    with pytest.raises(PostgresMissing, match=r"run `make postgres-packages`"):
        PostgresServer()


def test_replicas_conf_renders_with_the_given_addresses() -> None:
    rendered = render_replicas_conf(
        ["http://127.0.0.1:9001", "127.0.0.1:9002"], "127.0.0.1:9000", REPLICAS_CONF.read_text()
    )
    assert "    server 127.0.0.1:9001;\n    server 127.0.0.1:9002;\n" in rendered
    assert "8001" not in rendered and "8002" not in rendered
    assert "    listen 127.0.0.1:9000;\n" in rendered
    assert "proxy_buffering off;" in rendered and "keepalive 32;" in rendered
    with pytest.raises(ValueError, match="one `listen` line"):
        render_replicas_conf(["127.0.0.1:9001"], "127.0.0.1:9000", "server { }")


class Upstream(BaseHTTPRequestHandler):
    """A router's stand-in: its name at /name, and at /stream two events, the second
    only once the test has seen the first through nginx (or after SSE_RELEASE_WAIT_S)."""

    protocol_version = "HTTP/1.1"  # keep-alive, as nginx's upstream connections are
    server: UpstreamServer

    def do_GET(self) -> None:
        if self.path == "/stream":
            self._stream()
            return
        body = self.server.name.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _stream(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self._chunk(b"data: first\n\n")
        self.server.released = self.server.first_seen.wait(SSE_RELEASE_WAIT_S)
        self._chunk(b"data: last\n\n")
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def log_message(self, format: str, *args: object) -> None:
        pass


class UpstreamServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, name: str) -> None:
        super().__init__(("127.0.0.1", 0), Upstream)
        self.name = name
        self.first_seen = threading.Event()
        self.released: bool | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


@contextmanager
def upstreams(*names: str) -> Iterator[list[UpstreamServer]]:
    servers = [UpstreamServer(name) for name in names]
    threads = [threading.Thread(target=server.serve_forever, daemon=True) for server in servers]
    for thread in threads:
        thread.start()
    try:
        yield servers
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()


@pytest.fixture
def two_routers() -> Iterator[tuple[list[UpstreamServer], Nginx]]:
    """Two routers' stand-ins, "a" and "b", behind nginx."""
    with upstreams("a", "b") as servers, Nginx([server.url for server in servers]) as proxy:
        yield servers, proxy


def test_nginx_takes_turns_between_the_routers(
    two_routers: tuple[list[UpstreamServer], Nginx],
) -> None:
    _, proxy = two_routers
    with httpx.Client(base_url=proxy.url, timeout=10) as client:
        names = [client.get("/name").text for _ in range(6)]
    assert sorted(names[:2]) == ["a", "b"]
    assert names == names[:2] * 3


def test_nginx_passes_an_event_stream_through_as_it_comes(
    two_routers: tuple[list[UpstreamServer], Nginx],
) -> None:
    servers, proxy = two_routers
    with (
        httpx.Client(base_url=proxy.url, timeout=10) as client,
        client.stream("GET", "/stream") as response,
    ):
        chunks = response.iter_bytes()
        received = b""
        while b"data: first\n\n" not in received:  # if nginx holds it back, until the end
            received += next(chunks)
        for server in servers:  # whichever one nginx chose may now send the last event
            server.first_seen.set()
        received += b"".join(chunks)
    assert response.headers["content-type"] == "text/event-stream"
    assert received == b"data: first\n\ndata: last\n\n"
    (sender,) = [server for server in servers if server.released is not None]
    assert sender.released, "the first event reached the client only after the upstream's last"


def echo_as(name: str) -> Callable[[ServerConnection], None]:
    """A WebSocket handler that answers each message with its name and the request's path."""

    def handler(connection: ServerConnection) -> None:
        path = connection.request.path if connection.request else "?"
        for message in connection:
            text = message if isinstance(message, str) else message.decode()
            connection.send(f"{name} {path} {text}")

    return handler


def test_nginx_upgrades_the_node_websocket() -> None:
    with (
        ws_serve(echo_as("a"), "127.0.0.1", 0) as one,
        ws_serve(echo_as("b"), "127.0.0.1", 0) as two,
    ):
        for server in (one, two):
            threading.Thread(target=server.serve_forever, daemon=True).start()
        ports = [server.socket.getsockname()[1] for server in (one, two)]
        with Nginx([f"127.0.0.1:{port}" for port in ports]) as proxy:
            url = proxy.url.replace("http://", "ws://") + "/node/v1/connect"
            answers = []
            for _ in range(2):
                with ws_connect(url, open_timeout=10, close_timeout=2) as ws:
                    ws.send("hello")
                    answers.append(ws.recv(timeout=10))
    assert sorted(answers) == ["a /node/v1/connect hello", "b /node/v1/connect hello"]
