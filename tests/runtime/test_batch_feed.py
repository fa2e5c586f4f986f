"""The batch feed loop over a stand-in model server that dies: restarts, retries, aliases.

The server is a stdlib HTTP server behind a stand-in ``use_server`` (each call after a death
starts a new one), so these run in a second; the real vLLM path is
tests/router/test_batch_server_e2e.py.
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
from node_runtime.batch_files import ERRORS, INPUT, OUTPUT

from .local_backends import vllm_spec

SERVED = "tiny"
ALIAS = "tiny-previous"


class _Model(http.server.ThreadingHTTPServer):
    """Answers chat requests until it has answered ``lives`` of them, then drops every one."""

    def __init__(self, lives: int) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.lives = lives
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

    def __init__(self, lives: list[int]) -> None:
        self.lives = lives
        self.started: list[_Model] = []
        self.roles: list[str] = []

    @contextlib.contextmanager
    def use(self, spec: ServerSpec) -> Iterator[ServerHandle]:
        self.roles.append(spec.role)
        if not self.started or self.started[-1].lives <= 0:
            self.started.append(_Model(self.lives[min(len(self.started), len(self.lives) - 1)]))
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
