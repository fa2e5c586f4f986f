"""No body gives a 500 and no stored record breaks a listing: surrogates, nesting, bad rows."""

from __future__ import annotations

import json
import sqlite3
import stat
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest

from inference_bundle.router import jsonsafe
from inference_bundle.router.batches.store import BatchRecord, BatchStore, UnstorableRecord
from inference_bundle.router.store import open_sqlite
from tests.router.conftest import Harness

pytestmark = pytest.mark.anyio
CHAT = "/resource_server/local/vllm/v1/chat/completions"


def record(batch_id: str, **changes: Any) -> BatchRecord:
    return BatchRecord(
        id=batch_id, owner="alice@anl.gov", cluster="local", model="m", endpoint="",
        input_file_id="file_1", input_path="/i", output_path="/o", error_path="/e",
        status="completed", total=1, created_at=1, finished_at=2,
    ).with_(**changes)  # fmt: skip


def test_the_store_and_its_folder_are_private(tmp_path: Path) -> None:
    folder = tmp_path / "state"
    folder.mkdir(mode=0o755)
    store = BatchStore(open_sqlite(folder / "batches.db"))
    store.save(record("batch_1"))
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    made = sorted(folder.iterdir())
    assert [p.name for p in made] == ["batches.db", "batches.db-shm", "batches.db-wal"]
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in made), [
        oct(p.stat().st_mode) for p in made
    ]
    store.close()


def test_text_that_is_not_unicode_is_never_stored(tmp_path: Path) -> None:
    store = BatchStore(open_sqlite(tmp_path / "b.db"))
    with pytest.raises(UnstorableRecord, match="The batch's metadata has a lone UTF-16") as bad:
        store.save(record("batch_1", metadata={"note": "a\ud800"}))
    assert bad.value.status == 400
    with pytest.raises(UnstorableRecord, match="The file's filename"):
        store.add_file("alice@anl.gov", "x\udcff.jsonl", "batch", tmp_path / "none")
    assert store.batches("alice@anl.gov") == []
    store.close()


async def test_bad_legacy_rows_never_fail_a_listing(
    batches: Harness, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    svc = batches.service.batches
    svc.store.save(record("batch_good"))
    db = sqlite3.connect(tmp_path / "router" / "batches.db")
    # As the router wrote them before text was checked: a lone surrogate, escaped.
    legacy = asdict(record("batch_surrogate", created_at=5, metadata={"note": "a\ud800b"}))
    rows = [
        ("batch_surrogate", json.dumps(legacy), 5),
        ("batch_garbage", "{not json", 4),
        ("batch_list", "[1, 2]", 3),
        ("batch_types", json.dumps({**asdict(record("batch_types")), "total": "many"}), 2),
        ("batch_missing", json.dumps({"id": "batch_missing"}), 2),
        ("batch_bytes", b"\xff\xfe", 2),
    ]
    for batch_id, text, created in rows:
        db.execute(
            "INSERT INTO batches (id, owner, record, status, created_at) VALUES (?, ?, ?, ?, ?)",
            (batch_id, "alice@anl.gov", text, "completed", created),
        )
    db.commit()
    db.close()
    for url in ("/v1/batches", "/resource_server/local/vllm/v1/batches"):
        listed = await batches.client.get(url, headers=batches.auth)
        assert listed.status_code == 200, listed.text
        data = listed.json()["data"]
        assert [b["id"] for b in data] == ["batch_surrogate", "batch_good"]
        assert data[0]["metadata"] == {"note": "a\ufffdb"}
    one = await batches.client.get("/v1/batches/batch_surrogate", headers=batches.auth)
    assert one.status_code == 200 and one.json()["metadata"] == {"note": "a\ufffdb"}
    gone = await batches.client.get("/v1/batches/batch_garbage", headers=batches.auth)
    assert gone.status_code == 404
    assert "batch batch_garbage is unreadable and left out" in caplog.text


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (b'{"model": "m", "input_file": "/x\\udc80"}', "lone UTF-16 surrogate"),
        (b'{"model": "m", "metadata": {"note": "\\ud83d"}}', "in metadata.note"),
        (b'{"model": "m", "metadata": {"\\udfff": "v"}}', "a key of metadata"),
        (b'{"model": "caf\xe9"}', "is not UTF-8 text (byte 0xe9 at offset 14)"),
        (b"[" * 60_000, "nested too deeply"),
        (b'{"a": ' * 500 + b"1" + b"}" * 500, "nested too deeply"),
        (b"{", "is not valid JSON: Expecting property name"),
    ],
)
async def test_malformed_bodies_are_400s(batches: Harness, body: bytes, says: str) -> None:
    for url in ("/v1/batches", "/resource_server/local/vllm/v1/batches", CHAT):
        answer = await batches.client.post(
            url, headers={**batches.auth, "content-type": "application/json"}, content=body
        )
        assert answer.status_code == 400, (url, answer.text)
        assert says in answer.json()["error"]["message"]
    listed = await batches.client.get("/v1/batches", headers=batches.auth)
    assert listed.status_code == 200 and listed.json()["data"] == []


def test_paired_surrogates_and_modest_nesting_are_fine() -> None:
    assert jsonsafe.parse(b'{"e": "\\ud83d\\ude00"}') == {"e": "\U0001f600"}
    assert jsonsafe.parse(b'"\\\\ud800"') == "\\ud800"  # an escaped backslash, not a surrogate
    deep = b"[" * 128 + b"]" * 128
    assert jsonsafe.parse(deep) is not None
    with pytest.raises(jsonsafe.JSONProblem, match="nested too deeply"):
        jsonsafe.parse(b"[" + deep + b"]")
    wide = json.dumps([[n, n] for n in range(10_000)]).encode()
    assert len(jsonsafe.parse(wide)) == 10_000
    with pytest.raises(jsonsafe.JSONProblem, match=r"in messages\[1\]\.content"):
        jsonsafe.parse(b'{"messages": [{"content": "ok"}, {"content": "\\udc00"}]}')
