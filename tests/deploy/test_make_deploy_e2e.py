"""`make deploy` from a clean copy of the repository, used with the openai SDK, then stopped.

The copy gets its own bundle environment (as a newcomer's checkout would); the large vLLM
and Infinity environments are linked in from this checkout to keep the test short.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

ROOT = Path(__file__).resolve().parents[2]
# The first test includes `make deploy` from a clean copy (its own limit: 900 s).
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]


def clean_copy(target: Path) -> Path:
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        check=True,
        capture_output=True,
    ).stdout.split(b"\0")
    for name in filter(None, listed):
        source = ROOT / name.decode()
        if source.is_file():
            destination = target / name.decode()
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination)
    os.symlink(ROOT / ".venvs", target / ".venvs")
    return target


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def make(repo: Path, *targets: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "PYTHON"))}
    return subprocess.run(
        ["make", "--no-print-directory", *targets],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def ours(repo: Path) -> list[str]:
    """Command lines of live processes that belong to the copy."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if str(repo) in cmdline and "pytest" not in cmdline:
                found.append(cmdline[:160])
    return found


def listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, int, str]]:
    repo = clean_copy(tmp_path_factory.mktemp("fresh") / "repo")
    port = free_port()
    try:
        first = make(repo, "deploy", f"PORT={port}")
        assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
        assert "deployed; every model answered." in first.stdout
        key = (repo / ".state" / "router" / "local-api-key").read_text().strip()
        assert f'Bearer {key}"' in first.stdout
        yield repo, port, key
    finally:
        make(repo, "stop")


def test_openai_sdk_against_the_deployment(deployed: tuple[Path, int, str]) -> None:
    _, port, key = deployed
    base = f"http://127.0.0.1:{port}/resource_server/local"
    chat = openai.OpenAI(api_key=key, base_url=f"{base}/vllm/v1")
    reply = chat.chat.completions.create(
        model="local/tiny-llama", messages=[{"role": "user", "content": "Hello!"}], max_tokens=4
    )
    assert reply.usage is not None and reply.usage.completion_tokens == 4
    embed = openai.OpenAI(api_key=key, base_url=f"{base}/infinity/v1")
    vectors = embed.embeddings.create(model="sentence-transformers/all-MiniLM-L6-v2", input="hi")
    assert len(vectors.data[0].embedding) == 384


def test_a_small_batch_through_the_openai_sdk(deployed: tuple[Path, int, str]) -> None:
    _, port, key = deployed
    client = openai.OpenAI(api_key=key, base_url=f"http://127.0.0.1:{port}/v1")
    lines = [
        {
            "custom_id": f"question-{n}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {
                "model": "local/tiny-llama",
                "messages": [{"role": "user", "content": f"Question {n}"}],
                "max_tokens": 2,
            },
        }
        for n in range(5)
    ]
    data = "".join(json.dumps(line) + "\n" for line in lines).encode()
    uploaded = client.files.create(file=("questions.jsonl", data), purpose="batch")
    batch = client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    deadline = time.monotonic() + 600
    while batch.status not in ("completed", "failed", "cancelled"):
        assert time.monotonic() < deadline, batch
        time.sleep(1)
        batch = client.batches.retrieve(batch.id)
    assert batch.status == "completed", batch
    assert batch.output_file_id is not None
    answers = client.files.content(batch.output_file_id).text.splitlines()
    assert sorted(json.loads(a)["custom_id"] for a in answers) == [
        f"question-{n}" for n in range(5)
    ]


def test_second_deploy_is_a_no_op_that_says_so(deployed: tuple[Path, int, str]) -> None:
    repo, port, _ = deployed
    began = time.monotonic()
    again = make(repo, "deploy", f"PORT={port}")
    assert again.returncode == 0, again.stderr
    assert "already deployed and serving" in again.stdout and "nothing changed" in again.stdout
    assert time.monotonic() - began < 60


def test_status_table(deployed: tuple[Path, int, str]) -> None:
    repo, _, _ = deployed
    table = make(repo, "status").stdout
    assert "local-tiny-chat" in table and "local/tiny-llama" in table
    tiny = next(line for line in table.splitlines() if line.startswith("local-tiny-chat"))
    assert " ready " in tiny or " idle " in tiny


def test_stop_leaves_no_process_and_no_port(deployed: tuple[Path, int, str]) -> None:
    repo, port, _ = deployed
    stopped = make(repo, "stop")
    assert stopped.returncode == 0, stopped.stderr
    assert "router stopped" in stopped.stdout
    deadline = time.monotonic() + 30
    while (ours(repo) or listening(port)) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert ours(repo) == []
    assert not listening(port)
