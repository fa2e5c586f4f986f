"""The batch feed loop over a stand-in model server that dies: restarts, retries, aliases;
and a batch paused (mid-file or before it starts), then resumed.

The server is a stdlib HTTP server behind a stand-in ``use_server`` (each call after a death
starts a new one), so these run in a second; the real vLLM path is
tests/router/batches/test_batches_own_server_e2e.py.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import node_runtime.batch
import pytest
from node_runtime import ServerHandle, ServerSpec
from node_runtime.batch_files import (
    ERRORS,
    INPUT,
    OUTPUT,
    clear_pause,
    request_cancel,
    request_pause,
)

from .local_backends import vllm_spec

SERVED = "tiny"
ALIAS = "tiny-previous"


class _Model(http.server.ThreadingHTTPServer):
    """Answers chat requests until it has answered ``lives`` of them, then drops every one."""

    def __init__(self, lives: int, pause_after: int | None, folder: Path | None) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.lives = lives
        self.answered = 0
        self.pause_after = pause_after  # then it leaves the pause marker in ``folder``
        self.folder = folder
        self.models: list[str] = []
        self.lock = threading.Lock()
        threading.Thread(target=self.serve_forever, daemon=True).start()


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Model

    def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with self.server.lock:
            alive = self.server.lives > 0
            self.server.lives -= 1
            if alive:
                self.server.answered += 1
                if self.server.answered == self.server.pause_after:
                    assert self.server.folder is not None
                    request_pause(str(self.server.folder))
        if not alive:
            self.close_connection = True  # gone: no status, no body
            return
        self.server.models.append(body["model"])
        data = json.dumps({"object": "chat.completion", "model": body["model"]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


class _Servers:
    """A stand-in for ``use_server``: the same server while it lives, a new one after."""

    def __init__(
        self, lives: list[int], pause_after: int | None = None, folder: Path | None = None
    ) -> None:
        self.lives = lives
        self.pause_after = pause_after
        self.folder = folder
        self.started: list[_Model] = []
        self.roles: list[str] = []

    @contextlib.contextmanager
    def use(self, spec: ServerSpec) -> Iterator[ServerHandle]:
        self.roles.append(spec.role)
        if not self.started or self.started[-1].lives <= 0:
            lives = self.lives[min(len(self.started), len(self.lives) - 1)]
            self.started.append(_Model(lives, self.pause_after, self.folder))
        port = self.started[-1].server_address[1]
        yield ServerHandle(int(port), "s", True, 0.0, "/nowhere")

    def close(self) -> None:
        for server in self.started:
            server.shutdown()
            server.server_close()


def _batch(tmp_path: Path, total: int) -> Path:
    folder = tmp_path / "batch"
    folder.mkdir(mode=0o700)
    with open(folder / INPUT, "w") as handle:
        for n in range(total):
            body = {"model": ALIAS if n % 3 == 0 else SERVED, "messages": []}
            line = {"custom_id": f"r{n}", "method": "POST", "url": "/v1/chat/completions"}
            handle.write(json.dumps({**line, "body": body}) + "\n")
    os.chmod(folder / INPUT, 0o600)
    return folder


def _lines(folder: Path, name: str) -> list[dict[str, Any]]:
    path = folder / name
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def _feed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, lives: list[int], total: int
) -> tuple[Path, _Servers, Any]:
    servers = _Servers(lives)
    monkeypatch.setattr(node_runtime.batch, "use_server", servers.use)
    folder = _batch(tmp_path, total)
    spec = vllm_spec(SERVED, tmp_path, require=False)
    try:
        return folder, servers, node_runtime.batch.feed(spec, str(folder), 4)
    except node_runtime.batch.BackendLost as lost:
        return folder, servers, lost
    finally:
        servers.close()


def test_a_server_that_dies_mid_file_is_started_again_and_every_line_answered_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder, servers, result = _feed(tmp_path, monkeypatch, [25, 1000], 100)
    assert len(servers.started) == 2  # one death, one restart
    assert set(servers.roles) == {"batch"}  # never the interactive server
    answers = _lines(folder, OUTPUT)
    assert sorted(a["custom_id"] for a in answers) == sorted(f"r{n}" for n in range(100))
    assert _lines(folder, ERRORS) == []
    assert (result["completed"], result["failed"], result["state"]) == (100, 0, "completed")
    # the server is asked for its served name; the answer names what the line asked for
    assert {m for s in servers.started for m in s.models} == {SERVED}
    for answer in answers:
        asked = ALIAS if int(answer["custom_id"][1:]) % 3 == 0 else SERVED
        assert answer["response"]["body"]["model"] == asked


def test_a_server_that_keeps_dying_fails_the_batch_and_records_no_unanswered_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder, servers, result = _feed(tmp_path, monkeypatch, [10], 200)
    assert isinstance(result, node_runtime.batch.BackendLost)
    assert len(servers.started) == 4  # the first start and three restarts
    assert "stopped answering mid-file 4 times" in str(result)
    assert "160 lines got no answer" in str(result)
    answered = [a["custom_id"] for a in _lines(folder, OUTPUT)]
    assert len(answered) == len(set(answered)) == 40
    assert _lines(folder, ERRORS) == []
    progress = json.loads((folder / "progress.json").read_text())
    assert (progress["completed"], progress["failed"], progress["state"]) == (40, 0, "failed")


def _run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, folder: Path, servers: _Servers
) -> dict[str, Any]:
    monkeypatch.setattr(node_runtime.batch, "use_server", servers.use)
    try:
        return node_runtime.batch.feed(vllm_spec(SERVED, tmp_path, require=False), str(folder), 4)
    finally:
        servers.close()


def _progress(folder: Path) -> dict[str, Any]:
    progress: dict[str, Any] = json.loads((folder / "progress.json").read_text())
    return progress


def test_a_batch_paused_mid_file_stops_and_resumes_where_it_stopped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = _batch(tmp_path, 100)
    first = _run(tmp_path, monkeypatch, folder, _Servers([1000], pause_after=30, folder=folder))
    assert first["state"] == "paused"
    # the lines in flight when the marker came (the 30th and at most 3 others, at
    # concurrency 4) finished; no new one was sent
    assert 30 <= first["completed"] <= 33 and first["failed"] == 0
    answered = [a["custom_id"] for a in _lines(folder, OUTPUT)]
    assert len(answered) == len(set(answered)) == first["completed"]
    assert (_progress(folder)["state"], _progress(folder)["completed"]) == (
        "paused",
        first["completed"],
    )

    clear_pause(str(folder))
    second = _run(tmp_path, monkeypatch, folder, _Servers([1000]))
    assert second["state"] == "completed" and second["skipped"] == first["completed"]
    answered = [a["custom_id"] for a in _lines(folder, OUTPUT)]
    assert sorted(answered) == sorted(f"r{n}" for n in range(100))  # each exactly once
    assert (second["completed"], _progress(folder)["state"]) == (100, "completed")


def test_a_batch_started_paused_returns_at_once_without_a_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = _batch(tmp_path, 10)
    request_pause(str(folder))
    servers = _Servers([1000])
    result = _run(tmp_path, monkeypatch, folder, servers)
    assert (result["state"], result["completed"], result["total"]) == ("paused", 0, 10)
    assert servers.roles == []  # use_server was never called: no model server started
    assert _progress(folder)["state"] == "paused" and _lines(folder, OUTPUT) == []


def test_a_cancel_wins_over_a_pause(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = _batch(tmp_path, 10)
    request_pause(str(folder))
    request_cancel(str(folder))
    result = _run(tmp_path, monkeypatch, folder, _Servers([1000]))
    assert (result["state"], result["completed"]) == ("cancelled", 0)
    assert _progress(folder)["state"] == "cancelled"
