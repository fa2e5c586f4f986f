"""Batches, fast tier: what a batch request must be (its lines, model, paths and size)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from inference_bundle.router.batches.validation import MAX_REQUESTS, check_lines, rejection
from tests.router.batch_fakes import GUIDE, TINY, line, write_lines
from tests.router.conftest import Harness

pytestmark = pytest.mark.anyio


# The lines


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
    assert reasons[1].startswith("the line is not valid JSON")
    assert "'r-2' is used by an earlier line" in reasons[3]
    assert "only POST" in reasons[4]
    assert "/v1/embeddings" in reasons[5]
    assert "not the batch's model" in reasons[6]
    assert "custom_id is missing" in reasons[7]
    error = rejection(check, "input_file")
    assert error is not None and error.status == 400
    assert error.body()["error"]["lines"][0] == {"line": 1, "reason": reasons[1]}


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


# The request


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
    assert "line 2: the line is not valid JSON" in error["message"]


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
