"""A Slurm site without the Globus cloud: `bundle deploy --cluster local-slurm --executor
engine` serves the tiny model through Parsl's real SlurmProvider on the local Slurm."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

ROOT = Path(__file__).resolve().parents[2]
# The first test includes the local Slurm's start and `bundle deploy` (its own limit: 900 s).
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]


def bundle(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "inference_bundle", "--root", str(root), *args],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )


@pytest.fixture(scope="module")
def deployed(
    local_slurm: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Path, str, str]]:
    root = tmp_path_factory.mktemp("slurm-site") / "root"
    for folder in ("endpoints", "config", "templates"):
        shutil.copytree(ROOT / folder, root / folder)
    (root / ".state").mkdir()
    os.symlink(ROOT / ".venvs", root / ".venvs")
    os.symlink(ROOT / ".state" / "models", root / ".state" / "models")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    try:
        done = bundle(
            root, "deploy", "--cluster", "local-slurm", "--executor", "engine", "--port", str(port)
        )
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        key = (root / ".state" / "router" / "local-slurm-api-key").read_text().strip()
        yield root, f"http://127.0.0.1:{port}", key
    finally:
        bundle(root, "stop")


def our_jobs() -> list[str]:
    listed = subprocess.run(
        ["squeue", "--noheader", "--format=%i %j"], capture_output=True, text=True, check=True
    )
    return [line for line in listed.stdout.splitlines() if "local-slurm-tiny-chat" in line]


def test_chat_is_served_from_a_slurm_job(deployed: tuple[Path, str, str]) -> None:
    _, url, key = deployed
    client = openai.OpenAI(api_key=key, base_url=f"{url}/resource_server/local-slurm/vllm/v1")
    reply = client.chat.completions.create(
        model="local/tiny-llama", messages=[{"role": "user", "content": "hi"}], max_tokens=2
    )
    assert reply.usage is not None and reply.usage.completion_tokens == 2
    [job] = our_jobs()
    jobs = httpx.get(
        f"{url}/resource_server/local-slurm/jobs", headers={"Authorization": f"Bearer {key}"}
    ).json()
    [running] = jobs["running"]
    assert running["job_id"] == job.split()[0]
    assert running["job_state"] == "running" and running["model"] == "local/tiny-llama"


def test_stop_cancels_the_job(deployed: tuple[Path, str, str]) -> None:
    root, _, _ = deployed
    assert bundle(root, "stop").returncode == 0
    deadline = time.monotonic() + 60
    while our_jobs() and time.monotonic() < deadline:
        time.sleep(1)
    assert our_jobs() == []
