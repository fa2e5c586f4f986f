"""Batches, fast tier: validation, the two APIs, owners, cancel and resume.

Jobs run the real ``node_runtime.batch.run_batch`` in a thread, against a small stdlib HTTP
server standing in for the model's vLLM server (``use_server`` is replaced).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import Future
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import node_runtime.batch
import openai
import pytest

from inference_bundle.router.auth import create_api_key
from inference_bundle.router.batches.store import BatchStore
from inference_bundle.router.batches.validation import MAX_REQUESTS, check_lines, rejection

from .conftest import Harness

pytestmark = pytest.mark.anyio
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


class _Answer(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
        server = self.server
        assert isinstance(server, FakeModel)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        server.seen.append(json.dumps(body))
        server.gate.wait()
        answer: dict[str, Any]
        if "fail" in json.dumps(body):
            status, answer = 400, {"error": {"message": "bad prompt", "type": "BadRequest"}}
        else:
            status, answer = 200, {"object": "chat.completion", "model": body["model"]}
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


@pytest.fixture
def model(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeModel]:
    server = FakeModel()
    threading.Thread(target=server.serve_forever, daemon=True).start()

    @contextlib.contextmanager
    def use_server(spec: Any) -> Iterator[Any]:
        yield node_runtime.ServerHandle(server.server_address[1], "fake", False, 0.0, "")

    monkeypatch.setattr(node_runtime.batch, "use_server", use_server)
    yield server
    server.gate.set()
    server.shutdown()


@pytest.fixture
async def batches(
    make_harness: Callable[..., Harness], tmp_path: Path, model: FakeModel
) -> AsyncIterator[Harness]:
    h = make_harness()
    svc = h.service.batches
    paths = svc.profiles["local"].paths.model_copy(
        update={
            "batch_input_roots": [str(tmp_path / "in")],
            "batch_output_root": str(tmp_path / "out"),
        }
    )
    svc.profiles["local"] = svc.profiles["local"].model_copy(update={"paths": paths})
    job = ThreadJob()
    svc.runner.executor_for = lambda route: job
    (tmp_path / "in").mkdir()
    async with h.client:
        yield h


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
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        got = (await h.client.get(url, headers=h.auth)).json()
        if got["status"] in states:
            return dict(got)
        await asyncio.sleep(0.05)
    raise AssertionError(f"{url} never reached {states}: {got}")


# Validation


def test_every_bad_line_is_named_with_its_reason() -> None:
    lines = [
        b"not json\n",
        json.dumps(line(2)).encode(),
        json.dumps(line(2)).encode(),  # duplicate custom_id
        json.dumps(line(4, method="GET")).encode(),
        json.dumps(line(5, url="/v1/embeddings")).encode(),
        json.dumps(line(6, body={"model": "other", "prompt": "x"})).encode(),
        json.dumps({"method": "POST"}).encode(),
        b"\n",
        json.dumps(line(9, url="/v1/completions")).encode(),
    ]
    check = check_lines(lines, TINY, ("/v1/chat/completions", "/v1/completions"))
    assert check.requests == 8
    assert [n for n, _ in check.problems] == [1, 3, 4, 5, 6, 7]
    reasons = dict(check.problems)
    assert "not a JSON object" in reasons[1]
    assert "'r-2' is used by an earlier line" in reasons[3]
    assert "only POST" in reasons[4]
    assert "/v1/embeddings" in reasons[5]
    assert "not the batch's model" in reasons[6]
    assert "custom_id is missing" in reasons[7]
    error = rejection(check, "input_file")
    assert error is not None and error.status == 400
    assert error.body()["error"]["lines"][0] == {"line": 1, "reason": "not a JSON object"}


def test_only_the_first_twenty_problems_are_listed() -> None:
    check = check_lines([b"x"] * 25, TINY, ("/v1/chat/completions",))
    error = rejection(check, "input_file")
    assert error is not None
    assert len(check.problems) == 20 and check.problem_lines == 25
    assert "25 lines that cannot run, the first 20 shown" in error.message


def test_more_than_150000_requests_are_refused() -> None:
    raw = json.dumps(line(0)).encode()
    lines = (raw.replace(b"r-0", f"r-{n}".encode()) for n in range(MAX_REQUESTS + 1))
    error = rejection(check_lines(lines, TINY, ("/v1/chat/completions",)), "input_file")
    assert error is not None and error.status == 400
    assert "150,001 requests; a batch takes at most 150,000" in error.message


async def test_a_malformed_file_gets_400_with_line_numbers(
    batches: Harness, tmp_path: Path
) -> None:
    source = write_lines(tmp_path / "in" / "bad.jsonl", [line(1), "{oops", line(3, url="/x")])
    answer = await batches.client.post(
        GUIDE, headers=batches.auth, json={"model": TINY, "input_file": str(source)}
    )
    assert answer.status_code == 400
    error = answer.json()["error"]
    assert [x["line"] for x in error["lines"]] == [2, 3]
    assert "line 2: not a JSON object" in error["message"]


async def test_a_model_without_batch_support_is_refused(batches: Harness, tmp_path: Path) -> None:
    source = write_lines(tmp_path / "in" / "a.jsonl", [line(1)])
    model = "meta-llama/Meta-Llama-3.1-405B-Instruct"
    answer = await batches.client.post(
        "/resource_server/sophia/vllm/v1/batches",
        headers=batches.auth,
        json={"model": model, "input_file": str(source)},
    )
    assert answer.status_code == 400
    assert answer.json()["error"]["code"] == "batch_not_supported"
    assert model in answer.json()["error"]["message"]


@pytest.mark.parametrize("where", ["/etc/passwd", "{in}/../escape.jsonl"])
async def test_paths_outside_the_batch_roots_are_refused(
    batches: Harness, tmp_path: Path, where: str
) -> None:
    (tmp_path / "escape.jsonl").write_text(json.dumps(line(1)) + "\n")
    path = where.format(**{"in": tmp_path / "in"})
    answer = await batches.client.post(
        GUIDE, headers=batches.auth, json={"model": TINY, "input_file": path}
    )
    assert answer.status_code == 400
    assert answer.json()["error"]["code"] == "path_not_allowed"


# The guide's API


async def test_a_guide_batch_runs_to_completion(
    batches: Harness, tmp_path: Path, model: FakeModel
) -> None:
    lines = [line(n, "/v1/completions" if n % 2 else "/v1/chat/completions") for n in range(40)]
    lines[7]["body"]["prompt"] = "fail here"
    source = write_lines(tmp_path / "in" / "mixed.jsonl", lines)
    created = await batches.client.post(
        GUIDE, headers=batches.auth, json={"model": TINY, "input_file": str(source)}
    )
    assert created.status_code == 200, created.text
    batch = created.json()
    assert batch["object"] == "batch" and batch["status"] == "in_progress"
    done = await wait_for(batches, f"{GUIDE}/{batch['id']}", ("completed",))
    assert done["request_counts"] == {"total": 40, "completed": 39, "failed": 1}
    output = [json.loads(x) for x in Path(done["output_file_path"]).read_text().splitlines()]
    assert sorted(x["custom_id"] for x in output) == sorted(f"r-{n}" for n in range(40) if n != 7)
    assert all(x["response"]["status_code"] == 200 and x["error"] is None for x in output)
    result = await batches.client.get(f"{GUIDE}/{batch['id']}/result", headers=batches.auth)
    assert result.status_code == 200
    errors = Path(result.json()["error_file_path"]).read_text().splitlines()
    assert json.loads(errors[0])["response"]["status_code"] == 400
    listed = await batches.client.get(GUIDE + "?status=completed", headers=batches.auth)
    assert [b["id"] for b in listed.json()["data"]] == [batch["id"]]
    none = await batches.client.get(GUIDE + "?status=failed", headers=batches.auth)
    assert none.json()["data"] == []


async def test_cancel_stops_after_in_flight_requests_and_keeps_them(
    batches: Harness, tmp_path: Path, model: FakeModel
) -> None:
    source = write_lines(tmp_path / "in" / "long.jsonl", [line(n) for n in range(200)])
    model.gate.clear()
    batch = (
        await batches.client.post(
            GUIDE, headers=batches.auth, json={"model": TINY, "input_file": str(source)}
        )
    ).json()
    while not model.seen:
        await asyncio.sleep(0.02)
    cancelled = await batches.client.post(f"/v1/batches/{batch['id']}/cancel", headers=batches.auth)
    assert cancelled.json()["status"] == "cancelling"
    model.gate.set()
    done = await wait_for(batches, f"/v1/batches/{batch['id']}", ("cancelled",))
    kept = Path(done["output_file_path"]).read_text().splitlines()
    assert 0 < len(kept) < 200
    assert done["request_counts"]["completed"] == len(kept)
    content = await batches.client.get(
        f"/v1/files/{done['output_file_id']}/content", headers=batches.auth
    )
    assert content.text.splitlines() == kept


# OpenAI's flow, through the openai SDK


async def test_the_openai_sdk_flow(batches: Harness) -> None:
    # typed Any: the SDK's stubs pin their own httpx
    http_client: Any = batches.client
    sdk = openai.AsyncOpenAI(
        api_key=batches.key, base_url="http://router/v1", http_client=http_client, max_retries=0
    )
    data = "".join(json.dumps(line(n, "/v1/completions")) + "\n" for n in range(25))
    uploaded = await sdk.files.create(file=("in.jsonl", data.encode()), purpose="batch")
    assert uploaded.purpose == "batch" and uploaded.bytes == len(data)
    batch = await sdk.batches.create(
        input_file_id=uploaded.id,
        endpoint="/v1/completions",
        completion_window="24h",
        metadata={"run": "one"},
    )
    assert batch.metadata == {"run": "one"}
    deadline = time.monotonic() + 20
    while batch.status != "completed" and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        batch = await sdk.batches.retrieve(batch.id)
    assert batch.status == "completed" and batch.output_file_id
    assert batch.request_counts is not None and batch.request_counts.completed == 25
    content = await sdk.files.content(batch.output_file_id)
    assert len(content.text.splitlines()) == 25
    listed = await sdk.batches.list()
    assert [b.id for b in listed.data] == [batch.id]
    with pytest.raises(openai.BadRequestError, match="does not serve /v1/embeddings"):
        await sdk.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/embeddings", completion_window="24h"
        )


async def test_another_user_sees_nothing(batches: Harness, tmp_path: Path) -> None:
    source = write_lines(tmp_path / "in" / "mine.jsonl", [line(1)])
    batch = (
        await batches.client.post(
            GUIDE, headers=batches.auth, json={"model": TINY, "input_file": str(source)}
        )
    ).json()
    done = await wait_for(batches, f"{GUIDE}/{batch['id']}", ("completed",))
    bob = {"Authorization": "Bearer " + create_api_key(tmp_path / "keys.json", "bob@anl.gov")}
    for url in (
        f"{GUIDE}/{batch['id']}",
        f"{GUIDE}/{batch['id']}/result",
        f"/v1/batches/{batch['id']}",
        f"/v1/files/{done['output_file_id']}",
        f"/v1/files/{done['output_file_id']}/content",
        f"/v1/files/{done['input_file_id']}",
    ):
        assert (await batches.client.get(url, headers=bob)).status_code == 404, url
    cancel = await batches.client.post(f"/v1/batches/{batch['id']}/cancel", headers=bob)
    assert cancel.status_code == 404
    assert (await batches.client.get("/v1/batches", headers=bob)).json()["data"] == []
    assert (await batches.client.get(GUIDE, headers=bob)).json()["data"] == []


# The job: resume, and records that outlive the router


def test_a_cut_job_resumes_without_answering_twice(tmp_path: Path, model: FakeModel) -> None:
    source = write_lines(tmp_path / "in.jsonl", [line(n) for n in range(30)])
    output, errors = tmp_path / "out" / "o.jsonl", tmp_path / "out" / "o.errors.jsonl"
    output.parent.mkdir()
    done = [{"custom_id": f"r-{n}", "response": {"status_code": 200}} for n in range(10)]
    # ten answered lines, then a line torn by the kill
    output.write_text("".join(json.dumps(x) + "\n" for x in done) + '{"custom_id": "r-1')
    result = node_runtime.batch.feed(
        _spec(tmp_path), str(source), str(output), str(errors), concurrency=4
    )
    assert result["skipped"] == 10 and result["completed"] == 30 and result["state"] == "completed"
    ids = [json.loads(x)["custom_id"] for x in output.read_text().splitlines()]
    assert sorted(ids) == sorted(f"r-{n}" for n in range(30))
    assert len(model.seen) == 20
    progress = node_runtime.batch.read_progress(str(output))
    assert progress is not None and progress["completed"] == 30 and progress["total"] == 30


async def test_a_job_cut_by_the_routers_stop_stays_unfinished(
    batches: Harness, tmp_path: Path
) -> None:
    """The router's own stop cuts its jobs; they are resumed later, not failed."""
    runner = batches.service.batches.runner
    cut: Future[Any] = Future()
    job = ThreadJob()
    job.submit = lambda function, *args: cut  # type: ignore[method-assign]
    runner.executor_for = lambda route: job
    source = write_lines(tmp_path / "in" / "cut.jsonl", [line(1)])
    batch = (
        await batches.client.post(
            GUIDE, headers=batches.auth, json={"model": TINY, "input_file": str(source)}
        )
    ).json()
    while not runner.running(batch["id"]):
        await asyncio.sleep(0.01)
    runner.stop()
    cut.set_exception(RuntimeError("the block was cancelled"))
    assert runner.store.batch(batch["id"], None).status == "in_progress"  # type: ignore[union-attr]
    assert runner.store.batches(None, unfinished=True)[0].id == batch["id"]


def test_records_outlive_the_store(tmp_path: Path) -> None:
    store = BatchStore(tmp_path / "b.db")
    (tmp_path / "f").write_text("x\n")
    record = store.add_file("alice", "f", "batch", tmp_path / "f")
    store.close()
    again = BatchStore(tmp_path / "b.db")
    assert again.file(record.id, "alice") == record
    assert again.file(record.id, "bob") is None


def _spec(tmp_path: Path) -> dict[str, Any]:
    return {
        "spec_version": 1,
        "name": TINY,
        "framework": "vllm",
        "task": "generate",
        "weights": str(tmp_path),
        "args": [],
        "env": {},
        "python": "/usr/bin/python3",
        "port": 0,
        "idle_timeout_s": 60,
        "start_timeout_s": 60,
        "state_dir": str(tmp_path / "state"),
    }


async def test_an_upload_over_the_limit_is_a_413(batches: Harness) -> None:
    batches.service.batches.max_file_bytes = 1024
    data = "".join(json.dumps(line(n)) + "\n" for n in range(50))
    response = await batches.client.post(
        "/v1/files",
        headers=batches.auth,
        files={"file": ("in.jsonl", data.encode())},
        data={"purpose": "batch"},
    )
    assert response.status_code == 413, response.text
    assert response.json()["error"]["code"] == "request_too_large"
