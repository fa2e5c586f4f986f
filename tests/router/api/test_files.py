"""Files, fast tier: uploads streamed to private files, malformed forms and lines, caps, DELETE."""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Any

import pytest

from inference_bundle.router.auth import create_api_key
from inference_bundle.router.batches.store import BatchRecord
from tests.router.batch_fakes import line
from tests.router.conftest import Harness

pytestmark = pytest.mark.anyio
GOOD = (json.dumps(line(1)) + "\n").encode()
BOUNDARY = "b0undary"


async def upload(h: Harness, data: bytes, purpose: str = "batch", name: str = "in.jsonl") -> Any:
    return await h.client.post(
        "/v1/files", headers=h.auth, files={"file": (name, data)}, data={"purpose": purpose}
    )


def form(*parts: tuple[bytes, bytes], close: bool = True) -> bytes:
    """A multipart body of (Content-Disposition value, payload) parts, built by hand."""
    body = b"".join(
        b"--%s\r\nContent-Disposition: %s\r\n\r\n%s\r\n" % (BOUNDARY.encode(), head, payload)
        for head, payload in parts
    )
    return body + (b"--%s--\r\n" % BOUNDARY.encode() if close else b"")


async def post_form(h: Harness, body: bytes, content_type: str | None = None) -> Any:
    kind = content_type or f"multipart/form-data; boundary={BOUNDARY}"
    return await h.client.post("/v1/files", headers={**h.auth, "content-type": kind}, content=body)


def error(answer: Any, status: int) -> dict[str, Any]:
    assert answer.status_code == status, answer.text
    found: dict[str, Any] = answer.json()["error"]
    return found


def leftovers(h: Harness) -> list[Path]:
    """Temporary uploads left in the store's folder (there should be none)."""
    folder = h.service.batches.files_dir
    return sorted(folder.glob(".upload-*")) if folder.exists() else []


async def test_an_upload_is_stored_privately_and_deleted_by_its_owner(
    batches: Harness, tmp_path: Path
) -> None:
    answer = await upload(batches, GOOD * 3, name="dir/../my file.jsonl")
    assert answer.status_code == 200, answer.text
    made = answer.json()
    assert made["object"] == "file" and made["bytes"] == len(GOOD) * 3
    assert made["filename"] == "my file.jsonl" and made["purpose"] == "batch"
    svc = batches.service.batches
    path = Path(svc.store.file(made["id"], "alice@anl.gov").path)  # type: ignore[union-attr]
    assert path.read_bytes() == GOOD * 3 and path.parent == svc.files_dir
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(svc.files_dir.stat().st_mode) == 0o700
    assert leftovers(batches) == []

    bob = {"Authorization": f"Bearer {create_api_key(tmp_path / 'keys.json', 'bob@anl.gov')}"}
    for method in ("GET", "DELETE"):
        other = await batches.client.request(method, f"/v1/files/{made['id']}", headers=bob)
        assert error(other, 404)["code"] == "not_found"
    assert path.exists()

    gone = await batches.client.delete(f"/v1/files/{made['id']}", headers=batches.auth)
    assert gone.status_code == 200, gone.text
    assert gone.json() == {"id": made["id"], "object": "file", "deleted": True}
    assert not path.exists()
    for url in (f"/v1/files/{made['id']}", f"/v1/files/{made['id']}/content"):
        assert error(await batches.client.get(url, headers=batches.auth), 404)
    again = await batches.client.delete(f"/v1/files/{made['id']}", headers=batches.auth)
    assert error(again, 404)["code"] == "not_found"


async def test_a_file_an_unfinished_batch_reads_is_not_deleted(batches: Harness) -> None:
    made = (await upload(batches, GOOD)).json()
    svc = batches.service.batches
    record = svc.store.file(made["id"], "alice@anl.gov")
    assert record is not None
    batch = BatchRecord(
        id="batch_x", owner="alice@anl.gov", cluster="local", model="m", endpoint="",
        input_file_id=record.id, input_path=record.path, output_path="/o", error_path="/e",
        status="in_progress", total=1,
    )  # fmt: skip
    svc.store.save(batch)
    refused = await batches.client.delete(f"/v1/files/{made['id']}", headers=batches.auth)
    assert error(refused, 409)["code"] == "file_in_use"
    assert "batch_x" in refused.json()["error"]["message"] and Path(record.path).exists()
    svc.store.save(batch.with_(status="completed"))
    done = await batches.client.delete(f"/v1/files/{made['id']}", headers=batches.auth)
    assert done.status_code == 200 and not Path(record.path).exists()


@pytest.mark.parametrize(
    ("data", "named"),
    [
        (b'{"custom_id": "a\\ud800"}\n', "line 1 has a lone UTF-16 surrogate (an unpaired"),
        (GOOD + b'{"custom_id": "caf\xe9"}\n', "line 2 is not UTF-8 text (byte 0xe9 at offset"),
        (b"[" * 200_000 + b"\n", "line 1 is nested too deeply (more than 128 levels)"),
        (b"[" * 200 + b"]" * 200 + b"\n", "line 1 is nested too deeply"),
        (GOOD + b"\n\n{oops\n", "line 4 is not valid JSON: Expecting property name"),
        (b"[1, 2]\n" + GOOD + b"null\n", "line 1 is a JSON array, not an object; line 3 is null"),
    ],
)
async def test_unreadable_lines_are_400s_naming_the_line(
    batches: Harness, data: bytes, named: str
) -> None:
    found = error(await upload(batches, data), 400)
    assert found["code"] == "invalid_file" and found["param"] == "file"
    assert named in found["message"]
    assert leftovers(batches) == []
    assert batches.service.batches.store.files_usage(
        "alice@anl.gov", batches.service.batches.files_dir
    ) == (0, 0)


async def test_a_file_of_blank_lines_has_no_requests(batches: Harness) -> None:
    found = error(await upload(batches, b"\n" * 1000 + b"  \r\n"), 400)
    assert found["code"] == "empty_file"


PURPOSE = b'form-data; name="purpose"'
FILE = b'form-data; name="file"; filename="a"'


@pytest.mark.parametrize(
    ("body", "content_type", "param", "says"),
    [
        (form((PURPOSE, b"b\xffatch"), (FILE, GOOD)), None, "purpose", "purpose is not UTF-8"),
        (form((PURPOSE, b"assistants"), (FILE, GOOD)), None, "purpose", "purpose is 'assistants'"),
        (form((FILE, GOOD)), None, "purpose", "no 'purpose' field"),
        (form((PURPOSE, b"batch")), None, "file", "no 'file' part"),
        (form((PURPOSE, b"batch"), (FILE.replace(b'"a"', b'"\xff"'), GOOD)), None, "file",
         "file's name is not UTF-8"),
        (form((PURPOSE, b"batch"), (FILE, GOOD), (FILE, GOOD)), None, "file",
         "more than one 'file' part"),
        (form((PURPOSE, b"x" * 2000)), None, "purpose", "longer than 1024 bytes"),
        (form((b"form-data", b"batch")), None, None, "has no name"),
        (form((PURPOSE, b"batch"), (FILE, GOOD), close=False), None, None,
         "ended before its closing multipart boundary"),
        (b"not a form at all", None, None, "not valid multipart/form-data"),
        (GOOD, "application/json", None, "Upload the file as multipart/form-data"),
        (GOOD, "multipart/form-data", None, "has no boundary"),
    ],
)  # fmt: skip
async def test_malformed_forms_are_400s_naming_the_field(
    batches: Harness, body: bytes, content_type: str | None, param: str | None, says: str
) -> None:
    found = error(await post_form(batches, body, content_type), 400)
    assert says in found["message"] and found["param"] == param
    assert leftovers(batches) == []


async def test_an_upload_past_the_cap_stops_with_a_413(batches: Harness) -> None:
    batches.service.batches.max_file_bytes = 4096
    big = GOOD * (8192 // len(GOOD))
    found = error(await upload(batches, big), 413)
    assert found["code"] == "request_too_large" and "4,096 bytes" in found["message"]
    # Without a Content-Length, the stream itself is cut at the cap.
    chunks = [big[i : i + 1024] for i in range(0, len(big), 1024)]
    head = form((PURPOSE, b"batch"))[: -len(BOUNDARY) - 6]
    opening = b"--%s\r\nContent-Disposition: %s\r\n\r\n" % (BOUNDARY.encode(), FILE)
    sent: list[int] = []

    async def stream() -> Any:
        yield head + opening
        for chunk in chunks:
            sent.append(len(chunk))
            yield chunk

    kind = f"multipart/form-data; boundary={BOUNDARY}"
    streamed = await batches.client.post(
        "/v1/files", headers={**batches.auth, "content-type": kind}, content=stream()
    )
    assert error(streamed, 413)["code"] == "request_too_large"
    assert sum(sent) <= 4096 + 1024, "the upload was read past its cap"
    assert leftovers(batches) == []


async def test_per_user_caps_name_the_cap(batches: Harness, tmp_path: Path) -> None:
    limits = batches.service.batches.upload_limits
    batches.service.batches.upload_limits = limits.model_copy(
        update={"max_files_per_user": 2, "max_bytes_per_user": 3 * len(GOOD)}
    )
    first = (await upload(batches, GOOD)).json()
    assert (await upload(batches, GOOD)).status_code == 200
    full = error(await upload(batches, GOOD), 400)
    assert full["code"] == "file_limit_reached" and "max_files_per_user = 2" in full["message"]
    assert "DELETE /v1/files/{file_id}" in full["message"]
    bob = {"Authorization": f"Bearer {create_api_key(tmp_path / 'keys.json', 'bob@anl.gov')}"}
    theirs = await batches.client.post(
        "/v1/files", headers=bob, files={"file": ("b.jsonl", GOOD)}, data={"purpose": "batch"}
    )
    assert theirs.status_code == 200, "one user's uploads do not count against another's"
    await batches.client.delete(f"/v1/files/{first['id']}", headers=batches.auth)
    over = error(await upload(batches, GOOD * 3), 413)
    assert over["code"] == "storage_limit_reached" and "max_bytes_per_user" in over["message"]
    assert (await upload(batches, GOOD * 2)).status_code == 200
    assert leftovers(batches) == []
