"""The real openai SDK against a running router: engine executor, real vLLM and Infinity.

The router is the session's shared one (tests/conftest.py, ``e2e_router``): a scratch root,
`python -m router`, its own runtime state, servers and logs.
"""

from __future__ import annotations

import concurrent.futures
import os
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from node_runtime.server_files import ServerPaths, idle_for

from inference_bundle.config.catalog import load_catalog
from inference_bundle.rendering.specs import server_spec
from tests.dataplane_e2e import wait_connected
from tests.e2e_router import MINILM, TINY, RunningRouter, start_router, stop_router

# The session's router starts vLLM and Infinity on first use (up to its wait_s, 300 s).
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


@pytest.fixture
def root(e2e_root: Path) -> Path:
    return e2e_root


@pytest.fixture
def router(e2e_router: RunningRouter) -> RunningRouter:
    return e2e_router


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
    assert TINY in [m.id for m in client.models.list().data]
    assert MINILM not in [m.id for m in client.models.list().data]  # Infinity's, not vLLM's


def _paths(router: RunningRouter) -> dict[str, float]:
    """router_request_paths_total by the way requests went: connection, task, none."""
    counts = {}
    token = (router.root / ".state" / "patient" / "metrics-token").read_text().strip()
    metrics = httpx.get(router.url + "/metrics", headers={"Authorization": f"Bearer {token}"})
    for line in metrics.text.splitlines():
        if line.startswith("router_request_paths_total{"):
            labels, value = line.rsplit(" ", 1)
            counts[labels.split('"')[1]] = float(value)
    return counts


def test_warm_requests_ride_the_servers_connection_and_keep_it_in_use(
    root: Path, router: RunningRouter
) -> None:
    client = router.client()
    chat(client)  # warm: the server has been told where to dial
    warmed = time.monotonic()
    catalog = load_catalog(root, "local")
    [entry] = [e for e in catalog.entries if e.endpoint.model == TINY]
    spec = server_spec(entry, catalog.profile)
    paths = ServerPaths.for_model(spec.state_dir, spec.name)
    wait_connected(router.url, router.key, TINY)  # the dial
    # Fixed, on purpose: the warm-up's use must be 1.5 s old, so that idle_for < 1.5 below
    # can only come from the connection's requests.
    time.sleep(max(0.0, 1.5 - (time.monotonic() - warmed)))
    before = _paths(router)
    answers = [chat(client, f"warm {i}") for i in range(4)]
    assert all(a.usage.completion_tokens >= 1 for a in answers)
    after = _paths(router)
    connection = after.get("connection", 0) - before.get("connection", 0)
    task = after.get("task", 0) - before.get("task", 0)
    # The engine's keep-alive is a background task of its own, never a user's request.
    assert (connection, task) == (4, 0)
    assert idle_for(paths) < 1.5  # stamped by the agent: the watchdog sees the use


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
    models = listing["clusters"]["local"]["frameworks"]["vllm"]["models"]
    [tiny] = [m for m in models if m["id"] == TINY]
    assert tiny["state"] == "ready"
