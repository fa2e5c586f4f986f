"""A 6 MB upload received and checked while /health is polled, on a real uvicorn server.

An in-process ASGI transport runs the app inside the test's own calls, so a stalled event
loop would not show; here the router serves on a socket from a process of its own (see
upload_server.py), with the HTTP parser and loop of `python -m inference_bundle.router`.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from inference_bundle.router.auth import create_api_key
from tests.e2e_router import free_port
from tests.responsiveness import describe, responsive
from tests.router.conftest import ROOT

pytestmark = pytest.mark.timeout(90)
SIX_MB = 6 * 1024 * 1024


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[dict[str, str], str]]:
    """The router on a socket, in its own process; the Authorization header and its URL."""
    key = create_api_key(tmp_path / "keys.json", "alice@anl.gov")
    port = free_port()
    log = (tmp_path / "router.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.router.upload_server", str(tmp_path), str(port)],
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, (tmp_path / "router.log").read_text()
            assert time.monotonic() < deadline, "the router did not come up in 60 s"
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        auth = {"Authorization": f"Bearer {key}"}
        # First requests warm up what every later one reuses (the key's hash, connections).
        for _ in range(10):
            httpx.get(url + "/health", timeout=5)
        assert httpx.get(url + "/v1/files/file_none", headers=auth, timeout=5).status_code == 404
        yield auth, url
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=30)


def poll_health_during(url: str, work: Callable[[], Any]) -> tuple[Any, list[float]]:
    """Run ``work`` in a thread and time GET /health every 20 ms until it is done."""
    result: list[Any] = []
    worker = threading.Thread(target=lambda: result.append(work()), daemon=True)
    latencies: list[float] = []
    with httpx.Client(base_url=url, timeout=10) as client:
        worker.start()
        deadline = time.monotonic() + 60
        while worker.is_alive():
            assert time.monotonic() < deadline, "the upload did not finish in 60 s"
            began = time.monotonic()
            assert client.get("/health").status_code == 200
            latencies.append(time.monotonic() - began)
            time.sleep(0.02)
    worker.join()
    return result[0], latencies


def assert_responsive(latencies: list[float]) -> None:
    """The upload never held the event loop (see tests/responsiveness.py)."""
    assert len(latencies) >= 3, f"the upload took only {len(latencies)} polls"
    assert responsive(latencies), describe(latencies)


@pytest.mark.parametrize(
    ("data", "status", "code"),
    [
        (b"\n" * SIX_MB, 400, "empty_file"),
        # Checked line by line in a thread: 300,000 requests of about 20 bytes each.
        (b'{"custom_id": "x"}\n' * (SIX_MB // 19), 200, None),
    ],
)
def test_health_answers_within_100_ms_through_a_6_mb_upload(
    served: tuple[dict[str, str], str], data: bytes, status: int, code: str | None
) -> None:
    auth, url = served

    def send() -> list[httpx.Response]:
        # Three in a row: a quick machine reads one in fewer polls than the check needs.
        with httpx.Client(base_url=url, timeout=60) as client:
            files = {"file": ("big.jsonl", data)}
            return [
                client.post("/v1/files", headers=auth, files=files, data={"purpose": "batch"})
                for _ in range(3)
            ]

    answers, latencies = poll_health_during(url, send)
    for answer in answers:
        assert answer.status_code == status, answer.text
        if code is not None:
            assert answer.json()["error"]["code"] == code
        else:
            assert answer.json()["bytes"] == len(data)
    assert_responsive(latencies)


def test_an_upload_cut_off_midway_leaves_nothing_behind(
    served: tuple[dict[str, str], str], tmp_path: Path
) -> None:
    auth, url = served
    port = int(url.rsplit(":", 1)[1])
    head = (
        b'--bnd\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n'
        b'--bnd\r\nContent-Disposition: form-data; name="file"; filename="a"\r\n\r\n'
    )
    files = tmp_path / "router" / "batches" / "files"
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(
            b"POST /v1/files HTTP/1.1\r\nHost: router\r\n"
            + f"Authorization: {auth['Authorization']}\r\n".encode()
            + b"Content-Type: multipart/form-data; boundary=bnd\r\n"
            + b"Content-Length: 10000000\r\n\r\n"
            + head
            + b"{}\n" * 100_000
        )
        deadline = time.monotonic() + 30
        while not list(files.glob(".upload-*")):
            assert time.monotonic() < deadline, "the upload never reached the disk"
            time.sleep(0.05)
    deadline = time.monotonic() + 30
    while list(files.glob(".upload-*")):
        assert time.monotonic() < deadline, "the cut-off upload's temporary file was left"
        time.sleep(0.05)
    assert httpx.get(url + "/health", timeout=5).status_code == 200
