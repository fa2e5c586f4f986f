"""Stand-ins for batch jobs: a fake vLLM server, a thread executor, request lines.

Jobs run the real ``node_runtime.batch.run_batch`` in a thread, against a small stdlib HTTP
server standing in for the model's vLLM server (``use_server`` is replaced by the ``model``
fixture in conftest.py).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tests.waiting import until

if TYPE_CHECKING:
    from tests.router.conftest import Harness

TINY = "local/tiny-llama"
GUIDE = "/resource_server/local/vllm/v1/batches"


class FakeModel(ThreadingHTTPServer):
    """Answers like vLLM: 200 with a completion, 400 when the prompt says 'fail'."""

    daemon_threads = True
    request_queue_size = 128

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Answer)
        self.gate = threading.Event()
        self.gate.set()
        self.seen: list[str] = []
        self.delay_s = 0.0  # before each answer


class _Answer(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
        server = self.server
        assert isinstance(server, FakeModel)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        server.seen.append(json.dumps(body))
        server.gate.wait()
        time.sleep(server.delay_s)
        answer: dict[str, Any]
        if "fail" in json.dumps(body):
            status, answer = 400, {"error": {"message": "bad prompt", "type": "BadRequest"}}
        else:
            status, answer = 200, {"object": "chat.completion", "model": body["model"]}
            answer["usage"] = {"prompt_tokens": 6, "completion_tokens": 4, "total_tokens": 10}
        raw = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class ThreadJob:
    """An executor that runs the submitted function in a thread (the batch endpoint)."""

    def submit(self, function: Callable[..., Any], *args: Any) -> Future[Any]:
        future: Future[Any] = Future()

        def run() -> None:
            try:
                future.set_result(function(*args))
            except BaseException as err:
                future.set_exception(err)

        threading.Thread(target=run, daemon=True).start()
        return future

    def node_held(self) -> bool:
        return True

    def shutdown(self) -> None:
        pass


def line(n: int, url: str = "/v1/chat/completions", **changes: Any) -> dict[str, Any]:
    body: dict[str, Any]
    if url == "/v1/completions":
        body = {"model": TINY, "prompt": f"prompt {n}", "max_tokens": 4}
    else:
        body = {"model": TINY, "messages": [{"role": "user", "content": f"hi {n}"}]}
    data = {"custom_id": f"r-{n}", "method": "POST", "url": url, "body": body}
    data.update(changes)
    return data


def write_lines(path: Path, lines: list[Any]) -> Path:
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    return path


async def wait_for(h: Harness, url: str, states: tuple[str, ...]) -> dict[str, Any]:
    """The batch at ``url`` once its status is one of ``states`` (within 20 s)."""
    last: dict[str, Any] = {}

    async def look() -> dict[str, Any] | None:
        last.clear()
        last.update((await h.client.get(url, headers=h.auth)).json())
        return dict(last) if last["status"] in states else None

    return await until(look, lambda: f"{url} reaching {states} (last seen: {last})", 20, 0.05)
