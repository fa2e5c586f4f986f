"""Batches on a shared filesystem, end to end: a real router, real batch jobs, real vLLM.

Issue 11's attacks on the paths a user names, each asserting the defence, with /health
polled while the attack runs. The router is the session's shared one (tests/conftest.py
``batch_router``); this module's files, folders, ids and users are its own.
"""

from __future__ import annotations

import json
import os
import stat
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from inference_bundle.router.auth import create_api_key
from tests.e2e_router import SHARED_ROUTER, TINY, RunningRouter
from tests.responsiveness import responsive
from tests.router.batches.test_batches_e2e import COLD_S, GUIDE, headers, request_line, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]


# This module's other user (the router's own is alice).
BOB = "bob@batch-safety"


@pytest.fixture(scope="module")
def root(e2e_root: Path) -> Path:
    shared = e2e_root / ".state" / "batches" / "shared"
    shared.mkdir()
    os.chmod(shared, 0o1777)  # the guide's world-writable output folder
    return e2e_root


@pytest.fixture(scope="module")
def router(root: Path, batch_router: RunningRouter) -> RunningRouter:
    return batch_router


def write(root: Path, name: str, lines: list[Any]) -> Path:
    path = root / ".state" / "batches" / name
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


def create(router: RunningRouter, body: dict[str, Any], auth: Any = None) -> httpx.Response:
    return httpx.post(
        router.url + GUIDE, headers=auth or headers(router), json={"model": TINY, **body}
    )


class HealthWatch:
    """Polls /health in a thread while a block runs, keeping how long each answer took."""

    def __init__(self, router: RunningRouter) -> None:
        self.url = router.url + "/health"
        self.took: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        with httpx.Client(timeout=10) as client:
            while not self._stop.is_set():
                began = time.monotonic()
                assert client.get(self.url).status_code == 200
                self.took.append(time.monotonic() - began)
                time.sleep(0.02)

    def __enter__(self) -> HealthWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def fast(self) -> bool:
        """The loop was never held during the attack (see tests/responsiveness.py)."""
        return responsive(self.took)


def test_a_batch_runs_the_bytes_checked_at_submit_into_private_files(
    router: RunningRouter, root: Path
) -> None:
    """The symlink swap, FIFOs beside the output, the file modes; a cold batch."""
    lines = [request_line(n) for n in range(20)]
    source = write(root, "swap.jsonl", lines)
    target = root / ".state" / "batches" / "shared" / "first"
    created = create(router, {"input_file": str(source), "output_file_path": str(target)})
    assert created.status_code == 200, created.text
    batch_id = created.json()["id"]
    source.unlink()
    source.symlink_to("/etc/passwd")
    fifos = [target.parent / f"first{suffix}" for suffix in (".progress.json", ".cancel")]
    for fifo in fifos:
        os.mkfifo(fifo)
    with HealthWatch(router) as watch:
        for _ in range(20):
            got = httpx.get(f"{router.url}{GUIDE}/{batch_id}", headers=headers(router), timeout=10)
            assert got.status_code == 200
    assert watch.fast(), sorted(watch.took)[-5:]
    batch = wait_until(router, f"{GUIDE}/{batch_id}", lambda b: b["status"] == "completed", COLD_S)
    assert batch["request_counts"] == {"total": 20, "completed": 20, "failed": 0}
    content = httpx.get(
        f"{router.url}/v1/files/{batch['input_file_id']}/content", headers=headers(router)
    )
    assert content.text == "".join(json.dumps(x) + "\n" for x in lines)
    published = [json.loads(x)["custom_id"] for x in (target / "output.jsonl").open()]
    assert sorted(published) == sorted(f"req-{n}" for n in range(20))
    assert stat.S_IMODE((target / "output.jsonl").stat().st_mode) == 0o644
    folder = root / ".state" / "batches" / "results" / batch_id
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    for path in folder.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    db = root / ".state" / SHARED_ROUTER / "batches.db"
    assert stat.S_IMODE(db.stat().st_mode) == 0o600


def test_a_planted_output_link_and_another_users_files(router: RunningRouter, root: Path) -> None:
    victim = root / ".state" / "batch-safety-victim.txt"
    victim.write_text("precious\n")
    shared = root / ".state" / "batches" / "shared"
    source = write(root, "plant.jsonl", [request_line(n) for n in range(4)])
    created = create(router, {"input_file": str(source), "output_file_path": str(shared / "p")})
    assert created.status_code == 200, created.text
    (shared / "p").symlink_to(victim)
    batch_id = created.json()["id"]
    batch = wait_until(router, f"{GUIDE}/{batch_id}", lambda b: b["status"] == "completed", COLD_S)
    assert victim.read_text() == "precious\n"
    assert batch["errors"]["data"][0]["code"] == "output_not_written"
    output = httpx.get(
        f"{router.url}/v1/files/{batch['output_file_id']}/content", headers=headers(router)
    )
    assert sorted(json.loads(x)["custom_id"] for x in output.text.splitlines()) == [
        f"req-{n}" for n in range(4)
    ]
    # another user: alice's folders are not theirs to write into, her files not theirs to read
    bob = {"Authorization": "Bearer " + create_api_key(root / ".state" / "keys.json", BOB)}
    bob_source = write(root, "bob.jsonl", [request_line(n) for n in range(4)])
    taken = create(
        router, {"input_file": str(bob_source), "output_file_path": str(shared / "first")}, bob
    )
    assert taken.status_code == 400 and taken.json()["error"]["param"] == "output_file_path"
    (shared / "b.errors.jsonl").symlink_to(shared / "first" / "output.jsonl")
    mine = create(
        router, {"input_file": str(bob_source), "output_file_path": str(shared / "b")}, bob
    )
    bob_id = mine.json()["id"]
    deadline = time.monotonic() + COLD_S
    while (got := httpx.get(f"{router.url}{GUIDE}/{bob_id}", headers=bob).json())[
        "status"
    ] != "completed":
        assert time.monotonic() < deadline, got
        time.sleep(0.5)
    assert got["request_counts"] == {"total": 4, "completed": 4, "failed": 0}
    errors = httpx.get(f"{router.url}/v1/files/{got['error_file_id']}/content", headers=bob)
    assert errors.status_code == 200 and errors.text == ""


def test_a_fifo_as_input_is_a_400_while_health_stays_fast(
    router: RunningRouter, root: Path
) -> None:
    fifo = root / ".state" / "batches" / "fifo.jsonl"
    os.mkfifo(fifo)
    os.chmod(fifo, 0o666)
    # more than the worker threads a held FIFO used to take for good (about 40); few client
    # threads, so that the test's own process does not slow the /health poller down
    with HealthWatch(router) as watch, ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda _: create(router, {"input_file": str(fifo)}), range(64)))
    assert {a.status_code for a in answers} == {400}
    assert "a FIFO" in answers[0].json()["error"]["message"]
    assert watch.fast(), sorted(watch.took)[-5:]


def test_malformed_inputs_are_400s_and_leave_the_list_working(
    router: RunningRouter, root: Path
) -> None:
    deep = root / ".state" / "batches" / "deep.jsonl"
    deep.write_bytes(b"[" * 200_000 + b"\n")
    bad = root / ".state" / "batches" / "latin1.jsonl"
    bad.write_bytes(json.dumps(request_line(0)).encode().replace(b"hi", b"h\xe9"))
    for path, why in ((deep, "nested too deeply"), (bad, "not UTF-8")):
        answer = create(router, {"input_file": str(path)})
        assert answer.status_code == 400 and "line 1" in answer.json()["error"]["message"]
        assert why in answer.json()["error"]["message"]
    raw = [
        b'{"model": "%s", "input_file": "/x/\\ud800.jsonl"}' % TINY.encode(),
        b'{"model": "%s", "input_file": "/x/\xff.jsonl"}' % TINY.encode(),
        b'{"input_file_id": "f", "endpoint": "/v1/completions", "completion_window": "24h", '
        b'"metadata": {"k": "\\udc00"}}',
    ]
    for body in raw:
        url = router.url + ("/v1/batches" if b"input_file_id" in body else GUIDE)
        answer = httpx.post(
            url, headers={**headers(router), "Content-Type": "application/json"}, content=body
        )
        assert answer.status_code == 400, answer.text
    assert httpx.get(router.url + "/v1/batches", headers=headers(router)).status_code == 200
