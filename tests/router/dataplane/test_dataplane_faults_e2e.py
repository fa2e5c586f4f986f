"""The data plane when things go away: an idle server, a cut connection, a restarted router,
a server killed mid-stream. Real router, real vLLM and Infinity.

These stop servers and restart the router, so the module has a router and a scratch root of
its own (``faulty``); MiniLM's idle timeout there is short. Its tiny vLLM starts in the
background while the MiniLM tests run.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from node_runtime.server_files import read_state

from inference_bundle.router.dataplane.connections import server_label
from tests.dataplane_e2e import (
    CHAT,
    EMBEDDINGS,
    access_record,
    connected_servers,
    embedding,
    long_chat,
    pin_server,
    post,
    server_paths,
    server_state,
    short_chat,
    timed_stream,
    via,
    wait_connected,
)
from tests.e2e_router import MINILM, TINY, RunningRouter, scratch_root, stop_router, stop_servers
from tests.remote_node import restart_router, start_router_on

# A cold vLLM twice (at the start, and after it is killed) on a busy 2-core machine.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
NAME = "faulty"
MINILM_IDLE_S = 15


@dataclass
class Faults:
    """The module's router (a new one after a restart), its root, and TINY's first answer."""

    router: RunningRouter
    root: Path
    tiny_started: Future[httpx.Response]

    @property
    def log(self) -> Path:
        return self.root / ".state" / f"{NAME}.log"

    def post(self, path: str, body: dict[str, object]) -> httpx.Response:
        answer = post(self.router.url, self.router.key, path, body)
        assert answer.status_code == 200, answer.text
        return answer

    def tiny_connected(self) -> str:
        """TINY's server id, once it runs and has dialled in."""
        assert self.tiny_started.result(timeout=600).status_code == 200
        server_id = server_state(self.root, TINY).server_id
        wait_connected(self.router.url, self.router.key, TINY, server_id=server_id)
        return server_id


@pytest.fixture(scope="module")
def faults(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Faults]:
    root = scratch_root(tmp_path_factory.mktemp("dataplane-faults"))
    (root / ".state" / "batches").mkdir()  # the profile's batch_input_roots
    minilm = root / "endpoints" / "local" / "all-minilm-l6-v2.yaml"
    minilm.write_text(minilm.read_text() + f"idle_timeout_s: {MINILM_IDLE_S}\n")
    running = start_router_on(root, NAME, "127.0.0.1")
    with ThreadPoolExecutor(1) as pool:
        started = pool.submit(post, running.url, running.key, CHAT, short_chat(TINY))
        state = Faults(running, root, started)
        try:
            yield state
        finally:
            try:
                started.exception(timeout=600)
                stop_router(state.router)
            finally:
                stop_servers(root)


def log_since(log: Path, offset: int) -> str:
    with log.open("rb") as handle:
        handle.seek(offset)
        return handle.read().decode(errors="replace")


def wait_in_log(log: Path, offset: int, text: str, timeout_s: float = 30) -> str:
    """The log written since ``offset`` once it holds ``text``."""
    deadline = time.monotonic() + timeout_s
    while text not in (written := log_since(log, offset)):
        assert time.monotonic() < deadline, f"{text!r} not in {log} after {offset}:\n{written}"
        time.sleep(0.3)
    return written


def test_embeddings_go_through_a_task_then_ride_the_connection(faults: Faults) -> None:
    first = faults.post(EMBEDDINGS, embedding(MINILM))
    assert via(faults.log, first) == "task"
    [server] = wait_connected(faults.router.url, faults.router.key, MINILM)
    assert server["server"] == server_label(server_state(faults.root, MINILM).server_id)
    assert server["host"] == socket.gethostname()
    warm = [faults.post(EMBEDDINGS, embedding(MINILM)) for _ in range(3)]
    assert [via(faults.log, a) for a in warm] == ["connection"] * 3


def test_a_model_used_only_over_its_connection_still_idles_out(faults: Faults) -> None:
    faults.post(EMBEDDINGS, embedding(MINILM))
    wait_connected(faults.router.url, faults.router.key, MINILM)
    paths = server_paths(faults.root, MINILM)
    state = server_state(faults.root, MINILM)
    # Used over the connection for longer than an idle timeout: with no task in between (the
    # router's refresh comes every 30 s), only the connection's requests keep it in use.
    began = time.monotonic()
    for _ in range(4):
        assert via(faults.log, faults.post(EMBEDDINGS, embedding(MINILM))) == "connection"
        time.sleep(MINILM_IDLE_S / 4 + 0.25)
    last_use = time.monotonic()
    deadline = last_use + MINILM_IDLE_S + 60
    while read_state(paths) is not None:
        assert time.monotonic() < deadline, "the idle server still runs"
        time.sleep(0.5)
    stopped = time.monotonic()
    assert stopped - last_use >= MINILM_IDLE_S - 6, (began, last_use, stopped)
    assert f"stopping server {state.server_id}" in (paths.root / "events.log").read_text()
    assert "idle for" in (paths.root / "events.log").read_text()
    # Its connection goes with it; the server said goodbye on its way out.
    deadline = time.monotonic() + 15
    while connected_servers(faults.router.url, faults.router.key, MINILM):
        assert time.monotonic() < deadline, "the stopped server is still listed as connected"
        time.sleep(0.3)
    assert f"server {state.server_id} on {socket.gethostname()} stopped" in faults.log.read_text()


def test_a_cut_connection_is_dialled_again(faults: Faults) -> None:
    server_id = faults.tiny_connected()
    assert via(faults.log, faults.post(CHAT, short_chat(TINY))) == "connection"
    offset = faults.log.stat().st_size
    port = urlsplit(faults.router.url).port
    # The node's end of its connection (every socket whose far end is the router's port).
    cut = subprocess.run(
        ["ss", "-K", "dst", "127.0.0.1", "dport", "=", str(port)], capture_output=True, text=True
    )
    assert f"127.0.0.1:{port}" in cut.stdout, cut
    here = f"server {server_id} on {socket.gethostname()}"
    # Dialled again with the same credential, with no task in between; the router saw the
    # old connection go.
    written = wait_in_log(faults.log, offset, f"{here} connected from")
    assert "refused" not in written
    wait_in_log(faults.log, offset, f"{here} disconnected")
    wait_connected(faults.router.url, faults.router.key, TINY, server_id=server_id)
    assert via(faults.log, faults.post(CHAT, short_chat(TINY))) == "connection"


def test_a_restarted_router_refuses_the_old_credential_until_a_task_brings_one(
    faults: Faults,
) -> None:
    server_id = faults.tiny_connected()
    pin_server(faults.root, TINY)
    offset = faults.log.stat().st_size
    faults.router = restart_router(faults.router, NAME)
    # The server dials again with its credential, which this router never minted.
    written = wait_in_log(faults.log, offset, "unknown or revoked credential")
    assert f"server {server_id}" in written and "refused" in written
    assert connected_servers(faults.router.url, faults.router.key, TINY) == []
    through_task = faults.post(CHAT, short_chat(TINY))
    assert via(faults.log, through_task) == "task"
    wait_connected(faults.router.url, faults.router.key, TINY, server_id=server_id)
    assert via(faults.log, faults.post(CHAT, short_chat(TINY))) == "connection"
    assert server_state(faults.root, TINY).server_id == server_id  # the same server throughout


def test_a_server_killed_mid_stream_ends_the_stream_with_an_error(faults: Faults) -> None:
    faults.tiny_connected()
    state = server_state(faults.root, TINY)

    def kill_on_the_third(n: int, _: str) -> bool:
        if n == 3:
            os.kill(state.pid, signal.SIGKILL)
        return True

    # Slowed by log-probabilities (see test_dataplane_e2e.py): killed long before its end.
    body = {**long_chat(TINY, 240), "logprobs": True, "top_logprobs": 20}
    stream = timed_stream(
        faults.router.url, faults.router.key, CHAT, body, on_event=kill_on_the_third, timeout_s=60
    )
    assert stream.status == 200 and stream.events[-1] == "[DONE]"
    *tokens, error = stream.json_events()
    assert 3 <= len(tokens) < 240
    assert error["error"]["code"] == "server_gone", error
    assert error["error"]["type"] == "server_error"
    record = access_record(faults.log, stream.request_id)
    assert (record["via"], record["status"]) == ("connection", 502)
    # The next request goes through a task, which starts the server again.
    again = faults.post(CHAT, short_chat(TINY))
    assert via(faults.log, again) == "task"
    restarted = server_state(faults.root, TINY)
    assert restarted.server_id != state.server_id
    wait_connected(faults.router.url, faults.router.key, TINY, server_id=restarted.server_id)
    assert via(faults.log, faults.post(CHAT, short_chat(TINY))) == "connection"
