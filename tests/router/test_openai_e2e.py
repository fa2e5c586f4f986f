"""The real openai SDK against a running router: engine executor, real vLLM and Infinity.

The router runs as `python -m router` over a scratch root (the repository's catalog, its
backends and models linked in), so its runtime state, servers and logs are the test's own.
"""

from __future__ import annotations

import concurrent.futures
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import node_runtime
import openai
import pytest
import yaml
from node_runtime.state import ServerPaths, idle_for

from deploy.catalog import load_catalog
from deploy.specs import server_spec
from router.auth import create_api_key

ROOT = Path(__file__).resolve().parents[2]
TINY = "local/tiny-llama"
MINILM = "sentence-transformers/all-MiniLM-L6-v2"
pytestmark = pytest.mark.slow


@dataclass
class RunningRouter:
    url: str
    key: str
    root: Path
    process: subprocess.Popen[bytes]

    def client(self, base: str = "/resource_server/local/vllm/v1") -> Any:
        return openai.OpenAI(api_key=self.key, base_url=self.url + base, max_retries=0)


def scratch_root(tmp: Path) -> Path:
    root = tmp / "root"
    for folder in ("endpoints", "config", "templates"):
        shutil.copytree(ROOT / folder, root / folder)
    (root / ".state").mkdir()
    os.symlink(ROOT / ".venvs", root / ".venvs")
    os.symlink(ROOT / ".state" / "models", root / ".state" / "models")
    return root


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_router(root: Path, name: str, wait_s: float) -> RunningRouter:
    port = free_port()
    keys = root / ".state" / "keys.json"
    key = create_api_key(keys, "alice@anl.gov")
    config = root / "config" / "router" / f"{name}.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "clusters": ["local"],
                "executor": "engine",
                "listen": {"host": "127.0.0.1", "port": port},
                "wait_s": wait_s,
                "state_dir": str(root / ".state" / name),
                "auth": {"mode": "keys", "keys_file": str(keys)},
                # no refresh through the endpoint within a test: the counts below are exact
                "direct_path": {"refresh_s": 3600},
            }
        )
    )
    log = (root / ".state" / f"{name}.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "router", "--config", str(config), "--root", str(root)],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert process.poll() is None, (root / ".state" / f"{name}.log").read_text()
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return RunningRouter(url, key, root, process)
        except httpx.TransportError:
            time.sleep(0.2)
    raise AssertionError(f"router {name} did not come up")


def stop_router(router: RunningRouter) -> None:
    router.process.send_signal(signal.SIGTERM)
    try:
        router.process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(router.process.pid, signal.SIGKILL)
        raise


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = scratch_root(tmp_path_factory.mktemp("router-e2e"))
    yield root
    catalog = load_catalog(root, "local")
    for entry in catalog.entries:
        node_runtime.stop_server(
            node_runtime.ServerSpec.from_dict(server_spec(entry, catalog.profile))
        )


@pytest.fixture(scope="module")
def router(root: Path) -> Iterator[RunningRouter]:
    running = start_router(root, "patient", wait_s=300)
    yield running
    stop_router(running)


def chat(client: Any, content: str = "hello", **extra: Any) -> Any:
    return client.chat.completions.create(
        model=TINY,
        messages=[{"role": "user", "content": content}],
        max_tokens=4,
        temperature=0,
        **extra,
    )


def served_processes(root: Path, marker: str) -> list[int]:
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                cmdline = Path(entry.path, "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if marker in cmdline and str(root) in cmdline:
                found.append(int(entry.name))
    return found


def test_sixteen_concurrent_cold_requests_start_one_server(router: RunningRouter) -> None:
    client = router.client()
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda i: chat(client, f"hi {i}"), range(16)))
    assert all(a.choices and a.usage.completion_tokens >= 1 for a in answers)
    assert len(served_processes(router.root, "vllm.entrypoints.openai.api_server")) == 1


def test_chat_completions_models_and_streaming(router: RunningRouter) -> None:
    client = router.client()
    first, second = chat(client), chat(client)
    assert first.model == TINY
    assert first.choices[0].message.content == second.choices[0].message.content  # temperature 0
    completion = client.completions.create(model=TINY, prompt="The sky is", max_tokens=3)
    assert completion.usage.completion_tokens == 3
    stream = chat(client, stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == (
        first.choices[0].message.content
    )
    assert chunks[-1].usage.total_tokens == first.usage.total_tokens
    assert [m.id for m in client.models.list().data] == [TINY]


def _direct_count(router: RunningRouter) -> float:
    metrics = httpx.get(router.url + "/metrics").text
    for line in metrics.splitlines():
        if line.startswith('router_request_paths_total{via="direct"}'):
            return float(line.split()[-1])
    return 0.0


def test_warm_requests_go_straight_to_the_server_and_keep_it_in_use(
    root: Path, router: RunningRouter
) -> None:
    client = router.client()
    chat(client)  # warm, and the router knows where its server listens
    catalog = load_catalog(root, "local")
    [entry] = [e for e in catalog.entries if e.endpoint.model == TINY]
    spec = node_runtime.ServerSpec.from_dict(server_spec(entry, catalog.profile))
    paths = ServerPaths.for_model(spec.state_dir, spec.name)
    time.sleep(1.5)
    before = _direct_count(router)
    answers = [chat(client, f"direct {i}") for i in range(3)]
    assert all(a.usage.completion_tokens >= 1 for a in answers)
    assert _direct_count(router) == before + 3
    assert idle_for(paths) < 1.5  # stamped: the watchdog sees the use


def test_backend_error_keeps_its_status(router: RunningRouter) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        chat(router.client(), "word " * 400)  # longer than max_model_len 256
    assert caught.value.status_code == 400
    assert "context" in str(caught.value.body).lower() or "length" in str(caught.value.body)


def test_cold_embedding_model_503_then_ready(root: Path, router: RunningRouter) -> None:
    impatient = start_router(root, "impatient", wait_s=1)
    try:
        client = impatient.client("/resource_server/local/infinity/v1")
        with pytest.raises(openai.APIStatusError) as caught:
            client.embeddings.create(model=MINILM, input="cold")
        response = caught.value.response
        assert response.status_code == 503
        assert int(response.headers["Retry-After"]) > 0
        error = response.json()["error"]
        assert error["state"] in ("queued", "starting") and error["waited_s"] >= 1
        deadline = time.monotonic() + 180
        while True:
            try:
                vectors = client.embeddings.create(model=MINILM, input=["one", "two"])
                break
            except openai.APIStatusError as err:
                assert err.status_code == 503 and time.monotonic() < deadline
                time.sleep(1)
        assert [len(d.embedding) for d in vectors.data] == [384, 384]
    finally:
        stop_router(impatient)
    # The patient router reuses the server the impatient one started.
    embeddings = router.client("/resource_server/local/infinity/v1").embeddings
    assert len(embeddings.create(model=MINILM, input="warm").data[0].embedding) == 384
    assert len(served_processes(root, "infinity_emb")) == 1


def test_jobs_and_list_endpoints_show_ready_models(router: RunningRouter) -> None:
    headers = {"Authorization": f"Bearer {router.key}"}
    jobs = httpx.get(router.url + "/resource_server/local/jobs", headers=headers).json()
    assert TINY in [job["model"] for job in jobs["running"]]
    listing = httpx.get(router.url + "/resource_server/list-endpoints", headers=headers).json()
    [tiny] = listing["clusters"]["local"]["frameworks"]["vllm"]["models"]
    assert tiny["state"] == "ready"
