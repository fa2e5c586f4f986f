"""Batches, fast tier: the two APIs run to the end, owners, cancel and resume.

Jobs run the real ``node_runtime.batch.run_batch`` in a thread, against a small stdlib HTTP
server standing in for the model's vLLM server (see batch_fakes.py).
"""

from __future__ import annotations

import asyncio
import json
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import node_runtime.batch
import node_runtime.batch_files
import openai
import pytest

from inference_bundle.router.auth import create_api_key
from inference_bundle.router.batches.store import BatchStore
from inference_bundle.router.store import open_sqlite
from tests.router.batch_fakes import GUIDE, TINY, FakeModel, ThreadJob, line, wait_for, write_lines
from tests.router.conftest import Harness

pytestmark = pytest.mark.anyio


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
    assert done["input_file"] == str(source)  # what the user named; the job ran a copy
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
    deadline = time.monotonic() + 20
    while not model.seen:
        assert time.monotonic() < deadline, "the batch sent the model no request within 20 s"
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
    folder = tmp_path / "batch"
    folder.mkdir(mode=0o700)
    write_lines(folder / "input.jsonl", [line(n) for n in range(30)])
    output = folder / "output.jsonl"
    done = [{"custom_id": f"r-{n}", "response": {"status_code": 200}} for n in range(10)]
    # ten answered lines, then a line torn by the kill
    output.write_text("".join(json.dumps(x) + "\n" for x in done) + '{"custom_id": "r-1')
    result = node_runtime.batch.feed(_spec(tmp_path), str(folder), concurrency=4)
    assert result["skipped"] == 10 and result["completed"] == 30 and result["state"] == "completed"
    ids = [json.loads(x)["custom_id"] for x in output.read_text().splitlines()]
    assert sorted(ids) == sorted(f"r-{n}" for n in range(30))
    assert len(model.seen) == 20
    progress = node_runtime.batch_files.read_progress(str(folder))
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
    deadline = time.monotonic() + 20
    while not runner.running(batch["id"]):
        assert time.monotonic() < deadline, f"batch {batch['id']} did not start within 20 s"
        await asyncio.sleep(0.01)
    runner.stop()
    cut.set_exception(RuntimeError("the block was cancelled"))
    assert runner.store.batch(batch["id"], None).status == "in_progress"  # type: ignore[union-attr]
    assert runner.store.batches(None, unfinished=True)[0].id == batch["id"]


def test_records_outlive_the_store(tmp_path: Path) -> None:
    store = BatchStore(open_sqlite(tmp_path / "b.db"))
    (tmp_path / "f").write_text("x\n")
    record = store.add_file("alice", "f", "batch", tmp_path / "f")
    store.close()
    again = BatchStore(open_sqlite(tmp_path / "b.db"))
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
