"""Batches on a shared filesystem, fast tier: every path a user names, attacked.

In-process router, real ``node_runtime.batch`` jobs in threads over a fake model server.
Each test is one row of issue 11's table (or a check the design adds), asserting the defence.
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import stat
import time
from pathlib import Path
from typing import Any

import pytest

from inference_bundle.router.auth import create_api_key
from tests.responsiveness import responsive
from tests.router.batch_fakes import GUIDE, TINY, FakeModel, line, wait_for, write_lines
from tests.router.conftest import Harness

pytestmark = pytest.mark.anyio


async def submit(h: Harness, source: Path | str, **extra: Any) -> Any:
    body = {"model": TINY, "input_file": str(source), **extra}
    return await h.client.post(GUIDE, headers=h.auth, json=body)


async def health_fast_while(h: Harness, attack: Any) -> bool:
    """Whether /health, polled every 10 ms while ``attack`` runs, stayed fast.

    The rule is tests/responsiveness.py's: a held event loop holds every poll for the
    whole attack; the odd slow one is the shared machine's other load.
    """
    took: list[float] = []
    task = asyncio.ensure_future(attack)
    while True:
        began = time.monotonic()
        assert (await h.client.get("/health")).status_code == 200
        took.append(time.monotonic() - began)
        if task.done():
            break
        await asyncio.sleep(0.01)
    await task
    return responsive(took)


def no_reader(fifo: Path) -> bool:
    """True when nothing holds ``fifo`` open for reading (a writer cannot open it)."""
    try:
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    except OSError as err:
        return err.errno == errno.ENXIO
    return False


async def test_the_job_and_the_content_endpoint_use_the_bytes_checked_at_submit(
    batches: Harness, tmp_path: Path, model: FakeModel
) -> None:
    source = write_lines(tmp_path / "in" / "swap.jsonl", [line(n) for n in range(5)])
    model.gate.clear()
    created = await submit(batches, source)
    assert created.status_code == 200, created.text
    batch = created.json()
    # swapped for a link to a file the user may not read, while the job runs and after
    source.unlink()
    source.symlink_to("/etc/passwd")
    model.gate.set()
    done = await wait_for(batches, f"/v1/batches/{batch['id']}", ("completed",))
    content = await batches.client.get(
        f"/v1/files/{batch['input_file_id']}/content", headers=batches.auth
    )
    assert content.status_code == 200
    assert content.text == "".join(json.dumps(line(n)) + "\n" for n in range(5))
    assert "root:" not in content.text
    assert done["request_counts"] == {"total": 5, "completed": 5, "failed": 0}


async def test_links_in_an_input_path_are_refused(batches: Harness, tmp_path: Path) -> None:
    real = tmp_path / "in" / "real"
    real.mkdir()
    write_lines(real / "a.jsonl", [line(1)])
    (tmp_path / "in" / "linked").symlink_to(real)
    (tmp_path / "in" / "file-link.jsonl").symlink_to(real / "a.jsonl")
    for path in (tmp_path / "in" / "linked" / "a.jsonl", tmp_path / "in" / "file-link.jsonl"):
        answer = await submit(batches, path)
        assert answer.status_code == 400, answer.text
        error = answer.json()["error"]
        assert error["param"] == "input_file" and "symbolic link" in error["message"]


async def test_a_fifo_as_input_is_a_400_and_health_stays_fast(
    batches: Harness, tmp_path: Path
) -> None:
    fifo = tmp_path / "in" / "fifo.jsonl"
    os.mkfifo(fifo, 0o666)
    os.chmod(fifo, 0o666)
    answers: list[Any] = []

    async def attack() -> None:
        answers.extend(await asyncio.gather(*(submit(batches, fifo) for _ in range(50))))

    assert await health_fast_while(batches, attack())
    assert {a.status_code for a in answers} == {400}
    error = answers[0].json()["error"]
    assert error["param"] == "input_file" and "a FIFO" in error["message"]
    assert no_reader(fifo)


async def test_folders_and_oversized_inputs_are_refused(batches: Harness, tmp_path: Path) -> None:
    (tmp_path / "in" / "folder").mkdir()
    folder = await submit(batches, tmp_path / "in" / "folder")
    assert folder.status_code == 400 and "a folder" in folder.json()["error"]["message"]
    svc = batches.service.batches
    svc.upload_limits = svc.upload_limits.model_copy(update={"max_input_bytes": 2048})
    big = write_lines(tmp_path / "in" / "big.jsonl", [line(n) for n in range(40)])
    answer = await submit(batches, big)
    assert answer.status_code == 400
    assert "at most 2,048" in answer.json()["error"]["message"]


async def test_what_a_user_must_grant_is_checked_and_named(
    batches: Harness, tmp_path: Path
) -> None:
    private = tmp_path / "in" / "private"
    private.mkdir(mode=0o750)
    os.chmod(private, 0o750)
    write_lines(private / "a.jsonl", [line(1)])
    closed = await submit(batches, private / "a.jsonl")
    assert closed.status_code == 400
    assert closed.json()["error"]["param"] == "input_file"
    assert "o+x" in closed.json()["error"]["message"]
    unreadable = write_lines(tmp_path / "in" / "mine.jsonl", [line(1)])
    os.chmod(unreadable, 0o640)
    answer = await submit(batches, unreadable)
    assert answer.status_code == 400 and "o+r" in answer.json()["error"]["message"]
    source = write_lines(tmp_path / "in" / "ok.jsonl", [line(1)])
    shut = tmp_path / "in" / "shut"
    shut.mkdir(mode=0o755)
    os.chmod(shut, 0o755)
    answer = await submit(batches, source, output_file_path=str(shut / "results"))
    assert answer.status_code == 400
    error = answer.json()["error"]
    assert error["param"] == "output_file_path" and "o+w" in error["message"]
    existing = write_lines(tmp_path / "in" / "taken.jsonl", [line(1)])
    answer = await submit(batches, source, output_file_path=str(existing))
    assert answer.status_code == 400 and "already exists" in answer.json()["error"]["message"]


def shared_folder(tmp_path: Path) -> Path:
    shared = tmp_path / "in" / "shared"
    shared.mkdir()
    os.chmod(shared, 0o1777)
    return shared


async def test_results_are_published_in_a_new_folder_the_user_can_read(
    batches: Harness, tmp_path: Path
) -> None:
    source = write_lines(
        tmp_path / "in" / "pub.jsonl", [line(1), line(2, body={"model": TINY, "prompt": "fail"})]
    )
    target = shared_folder(tmp_path) / "results"
    batch = (await submit(batches, source, output_file_path=str(target))).json()
    done = await wait_for(batches, f"{GUIDE}/{batch['id']}", ("completed",))
    result = (
        await batches.client.get(f"{GUIDE}/{batch['id']}/result", headers=batches.auth)
    ).json()
    assert result["output_file_path"] == str(target / "output.jsonl")
    assert stat.S_IMODE(target.stat().st_mode) == 0o755
    for name in ("output.jsonl", "errors.jsonl"):
        assert stat.S_IMODE((target / name).stat().st_mode) == 0o644
    assert [json.loads(x)["custom_id"] for x in (target / "output.jsonl").open()] == ["r-1"]
    assert [json.loads(x)["custom_id"] for x in (target / "errors.jsonl").open()] == ["r-2"]
    assert done["errors"] is None


async def test_a_planted_output_link_is_never_written_through(
    batches: Harness, tmp_path: Path, model: FakeModel
) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    source = write_lines(tmp_path / "in" / "plant.jsonl", [line(n) for n in range(4)])
    shared = shared_folder(tmp_path)
    target = shared / "results"
    model.gate.clear()
    batch = (await submit(batches, source, output_file_path=str(target))).json()
    # planted after the submit's checks, before the job writes anything there; and the old
    # derived names beside the path the user chose
    target.symlink_to(tmp_path)
    for old in ("results.errors.jsonl", "results.progress.json", "results.cancel"):
        (shared / old).symlink_to(victim)
    model.gate.set()
    done = await wait_for(batches, f"{GUIDE}/{batch['id']}", ("completed",))
    assert victim.read_text() == "precious\n"
    assert not (tmp_path / "output.jsonl").exists()
    assert done["errors"]["data"][0]["code"] == "output_not_written"
    assert done["request_counts"]["completed"] == 4
    output = await batches.client.get(
        f"/v1/files/{done['output_file_id']}/content", headers=batches.auth
    )
    assert sorted(json.loads(x)["custom_id"] for x in output.text.splitlines()) == [
        f"r-{n}" for n in range(4)
    ]
    result = (
        await batches.client.get(f"{GUIDE}/{batch['id']}/result", headers=batches.auth)
    ).json()
    assert Path(result["output_file_path"]).parent.name == batch["id"]


async def test_a_fifo_beside_the_output_is_never_opened(
    batches: Harness, tmp_path: Path, model: FakeModel
) -> None:
    source = write_lines(tmp_path / "in" / "slow.jsonl", [line(n) for n in range(50)])
    shared = shared_folder(tmp_path)
    fifos = [shared / "res.progress.json", shared / "res.cancel", shared / "res.lock"]
    for fifo in fifos:
        os.mkfifo(fifo)
    model.gate.clear()
    batch = (await submit(batches, source, output_file_path=str(shared / "res"))).json()

    async def attack() -> None:
        for _ in range(20):
            got = await batches.client.get(f"/v1/batches/{batch['id']}", headers=batches.auth)
            assert got.status_code == 200
        listed = await batches.client.get("/v1/batches", headers=batches.auth)
        assert listed.status_code == 200

    assert await health_fast_while(batches, attack())
    assert all(no_reader(fifo) for fifo in fifos)
    model.gate.set()
    await wait_for(batches, f"/v1/batches/{batch['id']}", ("completed",))


async def test_each_batch_has_its_own_derived_files(
    batches: Harness, tmp_path: Path, model: FakeModel
) -> None:
    """The other user's error file: nothing derived is shared, nothing is skipped."""
    bob = {"Authorization": f"Bearer {create_api_key(tmp_path / 'keys.json', 'bob@anl.gov')}"}
    shared = shared_folder(tmp_path)
    failing = [line(n, body={"model": TINY, "prompt": "fail"}) for n in range(3)]
    alice_in = write_lines(tmp_path / "in" / "alice.jsonl", failing)
    alice = (await submit(batches, alice_in, output_file_path=str(shared / "a"))).json()
    alice_done = await wait_for(batches, f"{GUIDE}/{alice['id']}", ("completed",))
    bob_in = write_lines(tmp_path / "in" / "bob.jsonl", [line(n) for n in range(3)])
    # bob names alice's published folder, then a path whose old-style sibling is her errors
    taken = await batches.client.post(
        GUIDE,
        headers=bob,
        json={"model": TINY, "input_file": str(bob_in), "output_file_path": str(shared / "a")},
    )
    assert taken.status_code == 400
    (shared / "b.errors.jsonl").symlink_to(shared / "a" / "errors.jsonl")
    created = await batches.client.post(
        GUIDE,
        headers=bob,
        json={"model": TINY, "input_file": str(bob_in), "output_file_path": str(shared / "b")},
    )
    bob_id = created.json()["id"]
    deadline = time.monotonic() + 20
    while (got := (await batches.client.get(f"{GUIDE}/{bob_id}", headers=bob)).json())[
        "status"
    ] != "completed":
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    assert got["request_counts"] == {"total": 3, "completed": 3, "failed": 0}
    assert got["error_file_id"] != alice_done["error_file_id"]
    errors = await batches.client.get(f"/v1/files/{got['error_file_id']}/content", headers=bob)
    assert errors.text == ""
    foreign = await batches.client.get(
        f"/v1/files/{alice_done['error_file_id']}/content", headers=bob
    )
    assert foreign.status_code == 404
    assert len((shared / "a" / "errors.jsonl").read_text().splitlines()) == 3


@pytest.mark.parametrize(
    ("raw", "where"),
    [
        (b'{"custom_id": "\\ud800", "method": "POST"}\n', "surrogate"),
        (b'{"custom_id": "r-\xff", "method": "POST"}\n', "not UTF-8"),
        (b"[" * 200_000 + b"\n", "nested too deeply"),
    ],
)
async def test_malformed_lines_are_400s_naming_the_line(
    batches: Harness, tmp_path: Path, raw: bytes, where: str
) -> None:
    source = tmp_path / "in" / "bad.jsonl"
    source.write_bytes(json.dumps(line(1)).encode() + b"\n" + raw)
    answer = await submit(batches, source)
    assert answer.status_code == 400, answer.text
    assert "line 2:" in answer.json()["error"]["message"]
    assert where in answer.json()["error"]["message"]
    first = tmp_path / "in" / "first.jsonl"
    first.write_bytes(raw)
    upload = await batches.client.post(
        "/v1/files",
        headers=batches.auth,
        files={"file": ("x.jsonl", raw)},
        data={"purpose": "batch"},
    )
    assert upload.status_code < 500
    assert (await submit(batches, first)).status_code == 400
    assert (await batches.client.get(GUIDE, headers=batches.auth)).status_code == 200
    assert not any((tmp_path / "out").iterdir())  # a refused batch leaves no folder


@pytest.mark.parametrize(
    "body",
    [
        b'{"model": "local/tiny-llama", "input_file": "/in/\\udc80.jsonl"}',
        b'{"model": "local/tiny-llama", "input_file": "/in/x.jsonl", '
        b'"output_file_path": "/in/\\ud800"}',
        b'{"model": "local/tiny-llama", "input_file": "/in/\xff.jsonl"}',
        b'{"input_file_id": "file-x", "endpoint": "/v1/completions", '
        b'"completion_window": "24h", "metadata": {"k": "\\ud800"}}',
        b'{"input_file_id": "file-x", "endpoint": "/v1/completions", '
        b'"completion_window": "24h", "metadata": {"k": 1}}',
    ],
)
async def test_malformed_create_bodies_are_400s(batches: Harness, body: bytes) -> None:
    url = "/v1/batches" if b"input_file_id" in body else GUIDE
    headers = {**batches.auth, "Content-Type": "application/json"}
    answer = await batches.client.post(url, headers=headers, content=body)
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["message"]
    assert (await batches.client.get("/v1/batches", headers=batches.auth)).status_code == 200


async def test_a_batchs_files_are_private(batches: Harness, tmp_path: Path) -> None:
    source = write_lines(
        tmp_path / "in" / "modes.jsonl", [line(1), line(2, body={"model": TINY, "prompt": "fail"})]
    )
    batch = (await submit(batches, source)).json()
    await wait_for(batches, f"{GUIDE}/{batch['id']}", ("completed",))
    folder = tmp_path / "out" / batch["id"]
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    names = {p.name for p in folder.iterdir()}
    assert {"input.jsonl", "output.jsonl", "errors.jsonl", "progress.json"} <= names
    for path in folder.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
