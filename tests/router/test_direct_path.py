"""The direct path: warm requests go straight to a model server on this host.

The endpoint is scripted and the 'model server' is a small HTTP server recorded in a real
node-runtime state folder, so that the lease, the fallbacks and the refresh are exercised
with the runtime's own files and locks, in milliseconds. The slow tier checks the same
with real vLLM (test_openai_e2e.py).
"""

from __future__ import annotations

import fcntl
import http.server
import json
import os
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from node_runtime import procs
from node_runtime.state import ServerPaths, ServerState, clear_state, idle_for, write_state

from inference_bundle.router.states import StateTracker

from .conftest import Harness, envelope

pytestmark = pytest.mark.anyio
CHAT = "/resource_server/local/vllm/v1/chat/completions"
TINY = "local/tiny-llama"


class _ModelServer(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if body.get("max_tokens") == 13:  # the server dies mid-request: no answer at all
            self.close_connection = True
            return
        if body.get("max_tokens", 1) > 100:
            self._send(400, {"error": {"message": "too long for the context", "code": 400}})
            return
        self._send(
            200,
            {
                "object": "chat.completion",
                "model": body["model"],
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "direct"}}],
            },
        )

    def _send(self, status: int, answer: dict[str, Any]) -> None:
        data = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def model_server(tmp_path: Path) -> Iterator[tuple[ServerPaths, ServerState]]:
    """A recorded, ready 'server': its process is a sleep, its port a local HTTP server."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _ModelServer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    paths = ServerPaths.for_model(str(tmp_path / "node"), TINY)
    pid = procs.spawn(["sleep", "300"], env=dict(os.environ), cwd=tmp_path, log=tmp_path / "l")
    state = ServerState(
        server_id="s1",
        name=TINY,
        framework="vllm",
        pid=pid,
        pid_ticks=procs.start_ticks(pid),
        pgid=pid,
        port=server.server_address[1],
        spec_hash="h",
        started_at=time.time(),
        ready_at=time.time(),
        idle_timeout_s=60,
        stop_grace_s=1.0,
        anchors=((os.getpid(), None),),
    )
    write_state(paths, state)
    yield paths, state
    procs.stop_group(pid, 1.0)
    server.shutdown()
    server.server_close()


@pytest.fixture
async def direct(
    make_harness: Callable[..., Harness], model_server: tuple[ServerPaths, ServerState]
) -> AsyncIterator[Harness]:
    paths, state = model_server

    def from_the_node(spec: dict[str, Any], request: dict[str, Any]) -> dict[str, Any]:
        answer = envelope(200, {"object": "chat.completion", "model": spec["name"]})
        answer["node"] = {
            "host": socket.gethostname(),
            "port": state.port,
            "server_id": state.server_id,
            "folder": str(paths.root),
        }
        return answer

    h = make_harness(direct_path={"refresh_s": 0.5})
    h.endpoint.handler = from_the_node
    async with h.client:
        yield h
    assert h.service.dispatcher.direct is not None
    await h.service.dispatcher.direct.close()


async def _chat(h: Harness, max_tokens: int = 4) -> tuple[int, dict[str, Any]]:
    body = {"model": TINY, "messages": [{"role": "user", "content": "hi"}]}
    response = await h.client.post(CHAT, headers=h.auth, json={**body, "max_tokens": max_tokens})
    return response.status_code, response.json()


async def test_warm_requests_skip_the_endpoint_and_stamp_the_last_use(
    direct: Harness, model_server: tuple[ServerPaths, ServerState]
) -> None:
    paths, _ = model_server
    assert (await _chat(direct))[1]["model"] == TINY  # through the endpoint: learns the server
    assert len(direct.endpoint.submitted) == 1
    paths.last_use.touch()
    os.utime(paths.last_use, (time.time() - 30, time.time() - 30))
    for _ in range(3):
        status, body = await _chat(direct)
        assert (status, body["choices"][0]["message"]["content"]) == (200, "direct")
    assert len(direct.endpoint.submitted) == 1
    assert idle_for(paths) < 5  # the watchdog sees the direct requests as use
    status, body = await _chat(direct, max_tokens=1000)  # a backend error keeps its status
    assert status == 400 and "context" in body["error"]["message"]
    status, body = await _chat(direct, max_tokens=13)  # no answer: a 502, in OpenAI's shape
    assert status == 502 and body["error"]["type"] == "server_error"
    assert "no answer from its server" in body["error"]["message"]
    token = {"Authorization": f"Bearer {direct.service.metrics_token}"}
    metrics = (await direct.client.get("/metrics", headers=token)).text
    assert 'router_request_paths_total{via="direct"} 5.0' in metrics


async def test_a_gone_or_busy_server_sends_the_request_through_the_endpoint(
    direct: Harness, model_server: tuple[ServerPaths, ServerState]
) -> None:
    paths, state = model_server
    await _chat(direct)
    with open(paths.lock, "a") as lock:  # a start or stop under way holds the model's lock
        fcntl.flock(lock, fcntl.LOCK_EX)
        assert (await _chat(direct))[0] == 200
        assert len(direct.endpoint.submitted) == 2
    clear_state(paths)  # the watchdog stopped the server
    assert (await _chat(direct))[0] == 200
    assert len(direct.endpoint.submitted) == 3
    write_state(paths, state.replace(server_id="s2"))  # replaced by another server
    await _chat(direct)
    assert len(direct.endpoint.submitted) == 4


async def test_one_request_each_refresh_period_goes_through_the_endpoint(
    direct: Harness,
) -> None:
    await _chat(direct)
    await _chat(direct)
    assert len(direct.endpoint.submitted) == 1
    time.sleep(0.6)  # past refresh_s: the engine must see a task, or it gives the job back
    await _chat(direct)
    assert len(direct.endpoint.submitted) == 2
    await _chat(direct)
    assert len(direct.endpoint.submitted) == 2


async def test_a_server_on_another_host_is_never_reached_directly(
    make_harness: Callable[..., Harness], model_server: tuple[ServerPaths, ServerState]
) -> None:
    paths, state = model_server

    def elsewhere(spec: dict[str, Any], request: dict[str, Any]) -> dict[str, Any]:
        answer = envelope(200, {"object": "chat.completion", "model": spec["name"]})
        answer["node"] = {"host": "x3006c0s13b0n0", "port": state.port, "server_id": "s1"}
        answer["node"]["folder"] = str(paths.root)
        return answer

    h = make_harness()
    h.endpoint.handler = elsewhere
    async with h.client:
        await _chat(h)
        await _chat(h)
    assert len(h.endpoint.submitted) == 2


def test_a_direct_attempt_counts_no_start_and_a_fallback_counts_one() -> None:
    now = [1000.0]
    tracker = StateTracker(clock=lambda: now[0])
    tracker.register("m", idle_timeout_s=60)
    tracker.begin("m")
    tracker.finish("m", answered=True)
    now[0] += 120  # past the idle timeout: the router believes the server stopped
    tracker.begin_direct("m")
    assert tracker.status("m").in_flight == 1
    tracker.finish("m", answered=False)  # the lease was refused: through the endpoint now
    assert tracker.status("m").cold_starts == 1
    assert tracker.begin("m") is True  # the start is counted here, once
    assert tracker.status("m").cold_starts == 2
