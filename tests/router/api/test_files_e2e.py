"""Files on the real router through the openai SDK: upload, read, delete, refusals, modes."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import httpx
import openai
import pytest

from tests.e2e_router import RunningRouter
from tests.router.api.test_upload_stream import SIX_MB, assert_responsive, poll_health_during

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
LINE = {
    "custom_id": "r-1",
    "method": "POST",
    "url": "/v1/chat/completions",
    "body": {"model": "local/tiny-llama", "messages": [{"role": "user", "content": "hi"}]},
}


def test_the_sdk_uploads_reads_and_deletes_a_file(
    e2e_router: RunningRouter, e2e_root: Path
) -> None:
    client = e2e_router.client("/v1")
    data = (json.dumps(LINE) + "\n").encode() * 3
    made = client.files.create(file=("questions.jsonl", data), purpose="batch")
    assert made.bytes == len(data) and made.filename == "questions.jsonl"
    assert client.files.retrieve(made.id).id == made.id
    assert client.files.content(made.id).content == data

    state = e2e_root / ".state" / "patient"
    stored = state / "batches" / "files" / f"{made.id}.jsonl"
    assert stat.S_IMODE(stored.stat().st_mode) == 0o600
    assert stat.S_IMODE(stored.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE((state / "batches.db").stat().st_mode) == 0o600
    assert stat.S_IMODE(state.stat().st_mode) == 0o700

    deleted = client.files.delete(made.id)
    assert deleted.id == made.id and deleted.deleted is True and deleted.object == "file"
    assert not stored.exists()
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(made.id)
    with pytest.raises(openai.NotFoundError):
        client.files.delete(made.id)


@pytest.mark.parametrize(
    ("data", "purpose", "param", "says"),
    [
        (b'{"custom_id": "\\ud800"}\n', "batch", "file", "line 1 has a lone UTF-16 surrogate"),
        (b"[" * 200_000 + b"\n", "batch", "file", "line 1 is nested too deeply"),
        (b'{"a": "\xff"}\n', "batch", "file", "line 1 is not UTF-8 text"),
        (b"{}\n", "assistants", "purpose", "purpose is 'assistants'"),
    ],
)
def test_the_sdk_gets_400s_naming_the_field(
    e2e_router: RunningRouter, data: bytes, purpose: str, param: str, says: str
) -> None:
    client = e2e_router.client("/v1")
    with pytest.raises(openai.BadRequestError) as refused:
        client.files.create(file=("bad.jsonl", data), purpose=purpose)
    error = refused.value.body
    assert isinstance(error, dict) and error["param"] == param and says in error["message"]


def test_health_answers_within_100_ms_while_the_router_takes_6_mb(
    e2e_router: RunningRouter,
) -> None:
    auth = {"Authorization": f"Bearer {e2e_router.key}"}

    def send() -> httpx.Response:
        # Three in a row: one alone may end within two polls on a quick machine.
        with httpx.Client(base_url=e2e_router.url, timeout=60) as client:
            for _ in range(3):
                files = {"file": ("newlines.jsonl", b"\n" * SIX_MB)}
                data = {"purpose": "batch"}
                answer = client.post("/v1/files", headers=auth, files=files, data=data)
            return answer

    answer, latencies = poll_health_during(e2e_router.url, send)
    assert answer.status_code == 400 and answer.json()["error"]["code"] == "empty_file"
    assert_responsive(latencies)
