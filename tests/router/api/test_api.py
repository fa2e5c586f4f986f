"""The router's HTTP behaviour with a scripted endpoint: formats, errors, waiting, streaming."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from inference_bundle.config.catalog import load_catalog
from inference_bundle.router.auth import AuthConfigError
from inference_bundle.router.executors.base import FunctionFailed
from inference_bundle.router.service import build_service
from tests.router.conftest import ROOT, Harness, envelope, settings, unsalted

pytestmark = pytest.mark.anyio
CHAT = "/resource_server/local/vllm/v1/chat/completions"
TINY = "local/tiny-llama"
HELLO = [{"role": "user", "content": "hi"}]


def openai_client(h: Harness, base: str = "/resource_server/local/vllm/v1") -> Any:
    """The real openai SDK over the ASGI app (typed Any: its stubs pin their own httpx)."""
    http_client: Any = h.client
    return openai.AsyncOpenAI(
        api_key=h.key, base_url=f"http://router{base}", http_client=http_client, max_retries=0
    )


async def test_chat_through_the_openai_sdk(harness: Harness) -> None:
    answer = await openai_client(harness).chat.completions.create(model=TINY, messages=HELLO)
    assert answer.choices[0].message.content == "hello there"
    [sent] = harness.endpoint.submitted
    expires_at = sent.pop("expires_at")  # when the caller stops waiting (see test_bounds.py)
    assert expires_at > time.time()
    assert {**sent, "body": unsalted(sent["body"])} == {
        "method": "POST",
        "path": "/v1/chat/completions",
        "body": {"model": TINY, "messages": HELLO},
    }


async def test_one_base_url_across_clusters(harness: Harness) -> None:
    answer = await openai_client(harness, "/v1").chat.completions.create(model=TINY, messages=HELLO)
    assert answer.model == TINY


async def test_streaming_is_valid_openai_sse(harness: Harness) -> None:
    stream = await openai_client(harness).chat.completions.create(
        model=TINY,
        messages=HELLO,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "hello there"
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == 5
    finish = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finish[-1] == "length"
    # The runtime is asked for a whole answer.
    assert "stream" not in harness.endpoint.submitted[0]["body"]


async def test_streaming_tells_the_state_while_waiting(harness: Harness) -> None:
    harness.endpoint.delay_s = 0.3
    harness.endpoint.held = False
    body = {"model": TINY, "messages": HELLO, "stream": True}
    async with harness.client.stream("POST", CHAT, json=body, headers=harness.auth) as response:
        lines = [line async for line in response.aiter_lines() if line]
    assert lines[0].startswith(f": {TINY} is queued, waited")
    assert lines[-1] == "data: [DONE]"
    assert json.loads(lines[-2].removeprefix("data: "))["object"] == "chat.completion.chunk"


async def test_models_lists_what_the_caller_may_use(harness: Harness) -> None:
    models = await openai_client(harness).models.list()
    assert [m.id for m in models.data] == [
        entry.endpoint.name for entry in load_catalog(ROOT, "local").enabled()
        if entry.endpoint.framework == "vllm"
    ]  # fmt: skip
    assert TINY in [m.id for m in models.data]
    everything = await openai_client(harness, "/v1").models.list()
    names = {m.id for m in everything.data}
    assert "sentence-transformers/all-MiniLM-L6-v2" in names
    assert "meta-llama/Meta-Llama-3.1-8B-Instruct" in names
    assert "deepseek-ai/DeepSeek-R1" not in names  # disabled


async def post(h: Harness, content: bytes | None = None, **kwargs: Any) -> httpx.Response:
    headers = {**h.auth, "Content-Type": "application/json"}
    return await h.client.post(CHAT, content=content, headers=headers, **kwargs)


def assert_openai_error(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    assert {"message", "type", "param", "code"} <= set(error)
    return error


async def test_malformed_json(harness: Harness) -> None:
    error = assert_openai_error(await post(harness, b'{"model": '), 400)
    assert error["message"].startswith("The request body is not valid JSON")


async def test_body_not_an_object(harness: Harness) -> None:
    assert_openai_error(await post(harness, b"[1, 2]"), 400)


async def test_missing_field(harness: Harness) -> None:
    error = assert_openai_error(await post(harness, json.dumps({"model": TINY}).encode()), 400)
    assert (error["param"], error["message"]) == ("messages", "'messages' is a required property.")


async def test_wrong_type(harness: Harness) -> None:
    body = json.dumps({"model": TINY, "messages": "hi"}).encode()
    assert assert_openai_error(await post(harness, body), 400)["param"] == "messages"


async def test_body_too_large(harness: Harness) -> None:
    big = json.dumps({"model": TINY, "messages": [{"role": "user", "content": "x" * 70_000}]})
    assert_openai_error(await post(harness, big.encode()), 413)


async def test_unknown_model(harness: Harness) -> None:
    body = json.dumps({"model": "local/tiny-lama", "messages": HELLO}).encode()
    error = assert_openai_error(await post(harness, body), 404)
    assert "Did you mean: local/tiny-llama" in error["message"]


async def test_embedding_model_on_vllm(harness: Harness) -> None:
    body = {"model": "sentence-transformers/all-MiniLM-L6-v2", "input": "x"}
    response = await harness.client.post(
        "/resource_server/local/vllm/v1/embeddings", json=body, headers=harness.auth
    )
    error = assert_openai_error(response, 400)
    assert "/resource_server/local/infinity/v1" in error["message"]


async def test_backend_error_keeps_its_status_and_body(harness: Harness) -> None:
    vllm_error = {
        "error": {
            "message": "This model's maximum context length is 256 tokens.",
            "type": "BadRequestError",
            "param": None,
            "code": 400,
        }
    }
    harness.endpoint.handler = lambda spec, request: envelope(400, vllm_error)
    body = json.dumps({"model": TINY, "messages": HELLO}).encode()
    response = await post(harness, body)
    assert response.status_code == 400 and response.json() == vllm_error


async def test_function_failure_is_a_502(harness: Harness) -> None:
    def fail(spec: dict[str, Any], request: dict[str, Any]) -> dict[str, Any]:
        raise FunctionFailed("ServerStartError: weights not found")

    harness.endpoint.handler = fail
    body = json.dumps({"model": TINY, "messages": HELLO}).encode()
    error = assert_openai_error(await post(harness, body), 502)
    assert "weights not found" in error["message"] and error["code"] == "function_failed"


async def test_wait_exceeded_is_a_503_with_retry_after(
    make_harness: Callable[..., Harness],
) -> None:
    h = make_harness(wait_s=0.2)
    h.endpoint.delay_s = 1.0
    h.endpoint.held = False
    async with h.client:
        body = json.dumps({"model": TINY, "messages": HELLO}).encode()
        response = await post(h, body)
    error = assert_openai_error(response, 503)
    assert response.headers["Retry-After"] == "60"
    assert error["state"] == "queued" and error["waited_s"] >= 0.2
    assert error["code"] == "model_not_ready"


async def test_no_credentials_is_a_401(harness: Harness) -> None:
    response = await harness.client.post(CHAT, json={"model": TINY, "messages": HELLO})
    assert_openai_error(response, 401)


async def test_private_model_is_a_403(harness: Harness) -> None:
    body = {"model": "argonne-private/AuroraGPT-7B", "messages": HELLO}
    response = await harness.client.post(
        "/resource_server/sophia/vllm/v1/chat/completions", json=body, headers=harness.auth
    )
    assert_openai_error(response, 403)


async def test_list_endpoints(harness: Harness) -> None:
    await openai_client(harness).chat.completions.create(model=TINY, messages=HELLO)
    response = await harness.client.get("/resource_server/list-endpoints", headers=harness.auth)
    local = response.json()["clusters"]["local"]["frameworks"]
    assert local["vllm"]["models"][0] == {
        "id": TINY,
        "aliases": ["local/tiny-llama-previous"],
        "kind": "chat",
        "batch": True,
        "state": "ready",
        "connected_servers": [],  # this harness's servers never dial in (task path only)
        "replicas": [],  # nor say where they run (no node in their envelopes)
        # No job listed (NoScheduler); ready, so no estimate; its start took no time here.
        "job": None,
        "estimated_start": None,
        "estimated_ready_at": None,
        "estimated_wait_s": None,
        "estimate_basis": "unknown",
        "queue_position": None,
        "last_start_s": pytest.approx(0, abs=5),
    }
    assert local["vllm"]["endpoints"]["chat_completions"] == CHAT
    sophia = response.json()["clusters"]["sophia"]["frameworks"]["vllm"]["models"]
    assert {"argonne-private/AuroraGPT-7B"}.isdisjoint(m["id"] for m in sophia)
    r1 = next(m for m in sophia if m["id"] == "deepseek-ai/DeepSeek-R1")
    assert r1["state"] == "disabled" and "A100" in r1["disabled_reason"]


def pbs_job(endpoint: str, state: str, scheduler_state: str, reason: str | None) -> dict[str, Any]:
    return {
        "job_id": f"{len(endpoint)}.sophia-pbs",
        "endpoint": endpoint,
        "scheduler_state": scheduler_state,
        "reason": reason,
        "nodes": [] if scheduler_state == "queued" else ["sophia-gpu-07"],
        "walltime_used_s": 60,
        "walltime_s": 86400,
        "model": "ignored: the router names the model",
        "state": state,
    }


async def test_jobs_groups_the_scheduler_listing(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    listing = {
        "jobs": [
            pbs_job("sophia-meta-llama-3-1-8b-instruct", "ready", "running", None),
            pbs_job("sophia-qwen2-5-7b-instruct", "queued", "queued", "Not Running: busy"),
            pbs_job("sophia-auroragpt-7b", "starting", "running", None),  # not alice's
        ]
    }

    async def canned(cluster: str) -> dict[str, Any]:
        assert cluster == "sophia"
        return listing

    monkeypatch.setattr(harness.service.job_listing, "jobs", canned)
    response = await harness.client.get("/resource_server/sophia/jobs", headers=harness.auth)
    jobs = response.json()
    assert [j["model"] for j in jobs["running"]] == ["meta-llama/Meta-Llama-3.1-8B-Instruct"]
    [queued] = jobs["queued"]
    assert (queued["model"], queued["reason"]) == ("Qwen/Qwen2.5-7B-Instruct", "Not Running: busy")
    assert jobs["others"] == []


async def test_jobs_shows_a_model_waiting_for_its_job(harness: Harness) -> None:
    harness.endpoint.delay_s = 2.0
    harness.endpoint.held = False
    request = asyncio.create_task(
        harness.client.post(CHAT, json={"model": TINY, "messages": HELLO}, headers=harness.auth)
    )
    for _ in range(200):  # until the request has been submitted
        jobs = (
            await harness.client.get("/resource_server/local/jobs", headers=harness.auth)
        ).json()
        if jobs["queued"]:
            break
        await asyncio.sleep(0.01)
    [waiting] = jobs["queued"]
    assert (waiting["model"], waiting["model_status"]) == (TINY, "queued")
    assert waiting["requests_in_flight"] == 1
    assert (await request).status_code == 200


async def test_metrics(harness: Harness) -> None:
    await openai_client(harness).chat.completions.create(model=TINY, messages=HELLO)
    token = {"Authorization": f"Bearer {harness.service.metrics_token}"}
    text = (await harness.client.get("/metrics", headers=token)).text
    labels = 'model="local/tiny-llama",operation="/v1/chat/completions",status="200"'
    assert f"router_requests_total{{{labels}}} 1.0" in text
    assert 'router_cold_starts_total{model="local/tiny-llama"} 1.0' in text
    assert 'router_models{state="ready"} 1.0' in text


def test_globus_mode_needs_an_id_for_every_catalog_group(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GLOBUS_CLIENT_SECRET", "not-a-real-secret")
    auth = {"mode": "globus", "globus": {"client_id": "00000000-0000-0000-0000-000000000000"}}
    with pytest.raises(AuthConfigError) as caught:
        build_service(settings(tmp_path, auth=auth), ROOT)
    message = str(caught.value)
    assert message.startswith("auth.globus.groups: has no Globus group id for:")
    assert "endpoints/sophia/auroragpt-7b.yaml names group 'auroragpt'" in message


HOSTILE_BODIES = [
    b"",
    b"\xff\xfe\x00",
    b"null",
    b"123",
    b'"a string"',
    b"[" * 100_000 + b"]" * 100_000,
    b'{"model": null, "messages": []}',
    b'{"model": 5, "messages": [{"role": "user", "content": "hi"}]}',
    b'{"model": "local/tiny-llama", "messages": [1, 2]}',
    b'{"model": "local/tiny-llama", "messages": []}',
    b'{"model": "local/tiny-llama", "messages": [{"role": "user"}], "stream": {"a": 1}}',
    b'{"model": "", "messages": [{"role": "user", "content": "hi"}]}',
    b'{"model": "local/tiny-llama", "prompt": "completions body on the chat path"}',
]


@pytest.mark.parametrize("content", HOSTILE_BODIES, ids=range(len(HOSTILE_BODIES)))
async def test_hostile_bodies_get_a_4xx_in_openais_shape(harness: Harness, content: bytes) -> None:
    response = await post(harness, content)
    assert 400 <= response.status_code < 500, response.text
    assert_openai_error(response, response.status_code)
    assert "Traceback" not in response.text


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("POST", "/v1/no/such/operation", 404),
        ("GET", "/v1/chat/completions", 405),
        ("DELETE", "/v1/models", 405),
        ("GET", "/nowhere", 404),
        ("POST", "/resource_server/local/vllm/v1/batches/x/y", 404),
    ],
)
async def test_unknown_routes_and_methods(
    harness: Harness, method: str, path: str, status: int
) -> None:
    response = await harness.client.request(method, path, headers=harness.auth, json={})
    assert_openai_error(response, status)
