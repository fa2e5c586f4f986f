"""Parts of the runtime that need no model server: requests, processes, HTTP, entry point."""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import node_runtime
import pytest
from node_runtime import RequestError, ServerStartError, backend, procs, proxy, watchdog
from node_runtime.proxy import check_request
from node_runtime.server import ServerHandle
from node_runtime.server_files import (
    ServerPaths,
    hold_in_flight,
    read_state,
    release_in_flight,
)

from tests.waiting import wait_until

from .fake_server import fake_server
from .local_backends import infinity_spec, vllm_spec

ROOT = Path(__file__).resolve().parents[2]


def test_requests_outside_the_routes_are_refused() -> None:
    assert check_request({"method": "GET", "path": "/v1/models", "body": None})[1] == "/v1/models"
    with pytest.raises(RequestError, match="not served here; allowed: GET /v1/models"):
        check_request({"method": "POST", "path": "/shutdown", "body": {}})
    with pytest.raises(RequestError, match="'body' must be a JSON object"):
        check_request({"method": "POST", "path": "/v1/embeddings", "body": None})


def test_a_bad_dial_or_send_names_the_field() -> None:
    models = {"method": "GET", "path": "/v1/models", "body": None}
    dial = {"url": "http://127.0.0.1:8080", "token": "t", "endpoint": "e", "ca_file": None}
    assert check_request({**models, "send": False, "dial": dial})[1] == "/v1/models"
    with pytest.raises(RequestError, match="'send' must be true or false"):
        check_request({**models, "send": "no"})
    with pytest.raises(RequestError, match="'dial' must be"):
        check_request({**models, "dial": {**dial, "token": None}})
    with pytest.raises(RequestError, match="'dial' must be"):
        check_request({**models, "dial": "http://router"})


def test_stream_is_answered_without_starting_anything(tmp_path: Path) -> None:
    spec = infinity_spec("never-started", tmp_path, require=False)
    body = {"model": "x", "messages": [], "stream": True}
    envelope = node_runtime.handle(
        spec, {"method": "POST", "path": "/v1/chat/completions", "body": body}
    )
    assert envelope["status"] == 400
    assert "streaming" in envelope["body"]["error"]["message"]
    assert not list(tmp_path.iterdir())


def test_missing_weights_fail_at_once_with_the_path(tmp_path: Path) -> None:
    spec = infinity_spec("no-weights", tmp_path, require=False, weights=str(tmp_path / "nowhere"))
    began = time.monotonic()
    with pytest.raises(ServerStartError, match="weights folder .*nowhere does not exist"):
        node_runtime.handle(spec, {"method": "GET", "path": "/v1/models", "body": None})
    assert time.monotonic() - began < 2


def test_stop_group_stops_children_too(tmp_path: Path) -> None:
    pid = procs.spawn(
        ["sh", "-c", "sleep 300 & sleep 300 & trap '' TERM; sleep 300"],
        env=dict(os.environ),
        cwd=tmp_path,
        log=tmp_path / "log",
    )
    wait_until(lambda: len(procs.group_members(pid)) == 4, "the shell and its three sleeps")
    began = time.monotonic()
    assert procs.stop_group(pid, grace_s=0.5)  # the leader ignores TERM: KILL after grace
    assert procs.group_members(pid) == []
    assert not procs.is_alive(pid)
    assert time.monotonic() - began < 5


def test_is_alive_tells_a_reused_pid(tmp_path: Path) -> None:
    ticks = procs.start_ticks(os.getpid())
    assert procs.is_alive(os.getpid(), ticks)
    assert not procs.is_alive(os.getpid(), (ticks or 0) + 1)
    assert not procs.is_alive(0)


class _Echo(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
        raw = self.rfile.read(int(self.headers["Content-Length"]))
        status = 418 if b"teapot" in raw else 200
        out = raw if status == 200 else b"not json at all"
        self.send_response(status)
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *args: Any) -> None:
        pass


class _Quiet(http.server.ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that timed out and hung up is what some tests do on purpose


@pytest.fixture
def echo_port() -> Iterator[int]:
    server = _Quiet(("127.0.0.1", 0), _Echo)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def test_vision_content_passes_through_unchanged(echo_port: int) -> None:
    image = "data:image/png;base64," + "iVBORw0KGgo" * 20000
    body = {
        "model": "m",
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "what is this?"},
                    {"type": "image_url", "image_url": {"url": image}},
                ],
            }
        ],
    }
    for _ in range(2):  # the second call reuses the kept connection
        status, answer = backend.call(echo_port, "POST", "/v1/chat/completions", body, 5)
        assert (status, answer) == (200, body)


def test_a_json_less_error_becomes_an_openai_error_body(echo_port: int) -> None:
    status, answer = backend.call(echo_port, "POST", "/v1/completions", {"p": "teapot"}, 5)
    assert status == 418
    assert answer["error"]["message"] == "not json at all"
    assert answer["error"]["code"] == 418


def test_an_expired_request_starts_the_server_but_is_not_sent(
    echo_port: int, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A task that reaches its node after its caller gave up (the router's 503) sends nothing."""
    sent: list[tuple[Any, ...]] = []

    def call(*args: Any) -> tuple[int, Any]:
        sent.append(args)
        return 200, {}

    monkeypatch.setattr(backend, "call", call)

    @contextlib.contextmanager
    def ready_server(spec: Any) -> Iterator[ServerHandle]:
        yield ServerHandle(echo_port, "s-1", True, 1.5, str(tmp_path))

    monkeypatch.setattr(proxy, "use_server", ready_server)
    spec = vllm_spec("tiny-expired", tmp_path, require=False)  # use_server is replaced
    request = {"method": "POST", "path": "/v1/completions", "body": {"prompt": "x"}}
    late = proxy.handle(spec, {**request, "expires_at": time.time() - 1})
    assert late["status"] == 504 and late["expired"] is True and late["server"] == "started"
    assert late["node"]["server_id"] == "s-1" and "no longer awaited" in str(late["body"])
    assert sent == []
    on_time = proxy.handle(spec, {**request, "expires_at": time.time() + 60})
    assert on_time["status"] == 200 and "expired" not in on_time and len(sent) == 1
    with pytest.raises(RequestError, match="expires_at"):
        proxy.handle(spec, {**request, "expires_at": "soon"})


def run_serialized_serve(
    expected_version: str, spec: dict[str, Any], request: dict[str, Any], cwd: Path
) -> subprocess.CompletedProcess[str]:
    """Serialize serve as production registers it, then call it in an isolated interpreter."""
    from globus_compute_sdk.serialize import ComputeSerializer, PureSourceTextInspect
    from node_runtime.entrypoints import serve

    payload = ComputeSerializer(strategy_code=PureSourceTextInspect()).serialize(serve)
    script = textwrap.dedent("""
        import json, sys
        from globus_compute_sdk.serialize import ComputeSerializer
        payload, version, spec, request = json.load(sys.stdin)
        serve = ComputeSerializer().deserialize(payload)
        print(json.dumps(serve(version, spec, request)))
    """)
    stdin = json.dumps([payload, expected_version, spec, request])
    return subprocess.run(
        [sys.executable, "-I", "-c", script],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=600,
        check=False,
    )


def test_the_entry_point_is_self_contained() -> None:
    from node_runtime.entrypoints import serve

    namespace: dict[str, Any] = {}
    import inspect

    exec(inspect.getsource(serve), namespace)  # what PureSourceTextInspect does
    assert callable(namespace["serve"])


def test_version_mismatch_is_refused_and_nothing_starts(tmp_path: Path) -> None:
    state = tmp_path / "state"
    spec = infinity_spec("mismatch", state, require=False)
    result = run_serialized_serve(
        "0.0.0-other", spec, {"method": "GET", "path": "/v1/models", "body": None}, tmp_path
    )
    assert result.returncode != 0
    assert "node runtime version mismatch: the router expects 0.0.0-other" in result.stderr
    assert f"inference-node-runtime {node_runtime.__version__}" in result.stderr
    assert not state.exists()


def test_server_paths_keep_nodes_and_models_apart(tmp_path: Path) -> None:
    one = ServerPaths.for_model(str(tmp_path), "org/model:v1")
    two = ServerPaths.for_model(str(tmp_path), "org_model:v1")
    assert one.root != two.root
    assert one.root.parent.name == os.uname().nodename


class _Slow(_Echo):
    def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
        time.sleep(0.8 if self.path == "/v1/completions" else 0.1)
        super().do_POST()


def test_a_kept_connection_takes_the_new_timeout() -> None:
    server = _Quiet(("127.0.0.1", 0), _Slow)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    try:
        # a quick call with a short timeout, then a slow one on the same kept connection
        assert backend.call(port, "POST", "/v1/embeddings", {"a": 1}, 0.4) == (200, {"a": 1})
        assert backend.call(port, "POST", "/v1/completions", {"a": 2}, 5) == (200, {"a": 2})
        with pytest.raises(TimeoutError):
            backend.call(port, "POST", "/v1/completions", {"a": 3}, 0.2)
    finally:
        server.shutdown()
        server.server_close()


def test_the_watchdog_never_stops_a_server_with_a_request_in_flight(tmp_path: Path) -> None:
    paths, state = fake_server(tmp_path, idle_timeout_s=0.2)
    marker = hold_in_flight(paths)
    time.sleep(0.4)  # fixed: the idle timeout must pass (a clock rule), yet nothing is stopped
    assert watchdog.check_once(paths, "s1")[0] is True  # idle long enough, but busy
    assert procs.is_alive(state.pid)
    release_in_flight(paths, marker)  # stamps the end of the request
    assert watchdog.check_once(paths, "s1")[0] is True  # just used
    time.sleep(0.3)  # fixed: idle past its timeout is the rule under test, not an event
    assert watchdog.check_once(paths, "s1") == (False, 0.0)
    assert read_state(paths) is None
    assert not procs.is_alive(state.pid)


def test_the_watchdog_leaves_a_replaced_server_alone(tmp_path: Path) -> None:
    paths, state = fake_server(tmp_path, idle_timeout_s=0.1)
    time.sleep(0.2)  # fixed: idle past its timeout, so only the other id keeps it running
    assert watchdog.check_once(paths, "another-id") == (False, 0.0)
    assert procs.is_alive(state.pid)
    procs.stop_group(state.pgid, 1.0)
