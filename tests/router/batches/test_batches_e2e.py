"""Batches end to end: a real router, the batch twin's engine, real vLLM and the tiny model.

The router is the session's shared one (tests/conftest.py ``batch_router``): its batch job
and server may be warm from another batch module; this module's batch files, ids and users
are its own. Its last test runs a batch on that router's job (the restart test before it
runs its own routers' jobs), which test_batches_own_server_e2e.py, next, then finds warm.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from inference_bundle.router.auth import create_api_key
from tests import waiting
from tests.e2e_router import MINILM, TINY, RunningRouter, start_router, stop_router

# The restart test waits for a cold batch twice (COLD_S each) and starts two routers.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]
GUIDE = "/resource_server/local/vllm/v1/batches"
# A cold batch starts an engine and a vLLM server on a loaded CPU: minutes, not seconds.
COLD_S = 600


@pytest.fixture(scope="module")
def root(e2e_root: Path) -> Path:
    return e2e_root


@pytest.fixture(scope="module")
def router(batch_router: RunningRouter) -> RunningRouter:
    return batch_router


def request_line(n: int) -> dict[str, Any]:
    if n % 2:
        url, body = "/v1/completions", {"prompt": f"Count to {n}:", "max_tokens": 4}
    else:
        url = "/v1/chat/completions"
        body = {"messages": [{"role": "user", "content": f"hi {n}"}], "max_tokens": 4}
    return {
        "custom_id": f"req-{n}",
        "method": "POST",
        "url": url,
        "body": {"model": TINY, "temperature": 0, **body},
    }


def write_batch(root: Path, name: str, lines: list[Any]) -> Path:
    path = root / ".state" / "batches" / name
    with path.open("w") as handle:
        for item in lines:
            handle.write((item if isinstance(item, str) else json.dumps(item)) + "\n")
    return path


def headers(router: RunningRouter) -> dict[str, str]:
    return {"Authorization": f"Bearer {router.key}"}


def wait_until(
    router: RunningRouter, url: str, done: Callable[[dict[str, Any]], bool], limit_s: float
) -> dict[str, Any]:
    """The batch at ``url`` once ``done`` holds for it, looked at every 0.5 s."""
    last: dict[str, Any] = {}

    def look() -> dict[str, Any] | None:
        last.clear()
        last.update(httpx.get(router.url + url, headers=headers(router)).json())
        return dict(last) if done(last) else None

    return waiting.wait_until(look, lambda: f"{url} in the awaited state ({last})", limit_s, 0.5)


def test_a_200_line_batch_through_the_guides_api(router: RunningRouter, root: Path) -> None:
    source = write_batch(root, "two-hundred.jsonl", [request_line(n) for n in range(200)])
    began = time.monotonic()
    created = httpx.post(
        router.url + GUIDE,
        headers=headers(router),
        json={"model": TINY, "input_file": str(source)},
    )
    assert created.status_code == 200, created.text
    batch_id = created.json()["id"]
    batch = wait_until(router, f"{GUIDE}/{batch_id}", lambda b: b["status"] == "completed", COLD_S)
    print(f"200-line batch (its job cold or warm): {time.monotonic() - began:.1f} s")
    assert batch["request_counts"] == {"total": 200, "completed": 200, "failed": 0}
    result = httpx.get(f"{router.url}{GUIDE}/{batch_id}/result", headers=headers(router)).json()
    lines = [json.loads(x) for x in Path(result["output_file_path"]).read_text().splitlines()]
    assert sorted(x["custom_id"] for x in lines) == sorted(f"req-{n}" for n in range(200))
    by_id = {x["custom_id"]: x["response"] for x in lines}
    assert by_id["req-0"]["body"]["object"] == "chat.completion"
    assert by_id["req-1"]["body"]["object"] == "text_completion"
    assert all(
        r["status_code"] == 200 and r["body"]["usage"]["completion_tokens"] for r in by_id.values()
    )
    listed = httpx.get(f"{router.url}{GUIDE}?status=completed", headers=headers(router)).json()
    assert batch_id in [b["id"] for b in listed["data"]]

    # another user (this module's own) can neither see nor fetch it
    bob = {
        "Authorization": "Bearer "
        + create_api_key(root / ".state" / "keys.json", "bob@batches-e2e")
    }
    for url in (f"{GUIDE}/{batch_id}", f"{GUIDE}/{batch_id}/result", f"/v1/batches/{batch_id}"):
        assert httpx.get(router.url + url, headers=bob).status_code == 404
    content = f"/v1/files/{batch['output_file_id']}/content"
    assert httpx.get(router.url + content, headers=bob).status_code == 404
    assert httpx.get(router.url + GUIDE, headers=bob).json()["data"] == []


def test_a_200_line_batch_through_the_openai_sdk(router: RunningRouter) -> None:
    client = router.client("/v1")
    data = "".join(json.dumps(request_line(2 * n)) + "\n" for n in range(200))
    uploaded = client.files.create(file=("chat.jsonl", data.encode()), purpose="batch")
    batch = client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    deadline = time.monotonic() + COLD_S
    while batch.status not in ("completed", "failed", "cancelled"):
        assert time.monotonic() < deadline, batch
        time.sleep(0.5)
        batch = client.batches.retrieve(batch.id)
    assert batch.status == "completed", batch
    assert batch.request_counts is not None and batch.request_counts.completed == 200
    assert batch.output_file_id is not None
    answers = [json.loads(x) for x in client.files.content(batch.output_file_id).text.splitlines()]
    assert len({a["custom_id"] for a in answers}) == 200
    assert all(
        a["response"]["body"]["choices"][0]["message"]["role"] == "assistant" for a in answers
    )


def test_bad_batches_are_refused_before_they_run(router: RunningRouter, root: Path) -> None:
    malformed = write_batch(
        root, "malformed.jsonl", [request_line(0), "{not json", {**request_line(2), "url": "/v2"}]
    )
    answer = httpx.post(
        router.url + GUIDE,
        headers=headers(router),
        json={"model": TINY, "input_file": str(malformed)},
    )
    assert answer.status_code == 400
    assert [x["line"] for x in answer.json()["error"]["lines"]] == [2, 3]

    one = json.dumps(request_line(0))
    too_many = write_batch(
        root, "too-many.jsonl", [one.replace("req-0", f"req-{n}") for n in range(150_001)]
    )
    answer = httpx.post(
        router.url + GUIDE,
        headers=headers(router),
        json={"model": TINY, "input_file": str(too_many)},
        timeout=120,
    )
    assert answer.status_code == 400
    assert "150,001 requests" in answer.json()["error"]["message"]

    client = router.client("/v1")
    embed = {"custom_id": "e", "method": "POST", "url": "/v1/embeddings"}
    embed["body"] = {"model": MINILM, "input": "hello"}  # type: ignore[assignment]
    uploaded = client.files.create(file=("e.jsonl", json.dumps(embed).encode()), purpose="batch")
    with pytest.raises(openai.BadRequestError) as caught:
        client.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/embeddings", completion_window="24h"
        )
    assert MINILM in caught.value.message and "does not take batches" in caught.value.message


def test_router_restarted_mid_batch_resumes_it_without_answering_twice(
    router: RunningRouter, root: Path
) -> None:
    """Stopping the router cancels the batch job's block mid-run (a cut job); the next
    router submits the batch again, and the job resumes from its output file."""
    total = 1500
    source = write_batch(root, "restart.jsonl", [request_line(n) for n in range(total)])
    first = start_router(root, "restarting", wait_s=300)
    try:
        created = httpx.post(
            first.url + GUIDE,
            headers=headers(first),
            json={"model": TINY, "input_file": str(source)},
        ).json()
        url = f"/v1/batches/{created['id']}"
        wait_until(first, url, lambda b: b["request_counts"]["completed"] >= 50, COLD_S)
    finally:
        stop_router(first)
    cut = len(Path(created["output_file_path"]).read_text().splitlines())
    assert cut < total, "the batch ended before the router stopped; nothing to resume"
    second = start_router(root, "restarting", wait_s=300)
    try:
        batch = wait_until(second, url, lambda b: b["status"] == "completed", COLD_S)
        result = httpx.get(f"{second.url}{GUIDE}/{created['id']}/result", headers=headers(second))
        assert result.status_code == 200
    finally:
        stop_router(second)
    lines = [json.loads(x) for x in Path(batch["output_file_path"]).read_text().splitlines()]
    ids = [x["custom_id"] for x in lines]
    assert len(ids) == len(set(ids)) == total
    assert batch["request_counts"] == {"total": total, "completed": total, "failed": 0}


def test_cancel_mid_run_keeps_the_finished_lines(router: RunningRouter, root: Path) -> None:
    source = write_batch(root, "long.jsonl", [request_line(n) for n in range(5000)])
    created = httpx.post(
        router.url + GUIDE,
        headers=headers(router),
        json={"model": TINY, "input_file": str(source)},
    ).json()
    url = f"/v1/batches/{created['id']}"
    wait_until(router, url, lambda b: b["request_counts"]["completed"] > 0, COLD_S)
    cancelling = httpx.post(router.url + url + "/cancel", headers=headers(router)).json()
    assert cancelling["status"] == "cancelling"
    batch = wait_until(router, url, lambda b: b["status"] == "cancelled", 120)
    kept = [json.loads(x) for x in Path(batch["output_file_path"]).read_text().splitlines()]
    assert 0 < len(kept) < 5000
    assert batch["request_counts"]["completed"] == len(kept)
    assert len({x["custom_id"] for x in kept}) == len(kept)
