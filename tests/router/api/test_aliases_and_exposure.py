"""Aliases reach the backend under the served name; errors and /metrics leak nothing.

In-process app over the real catalog with a scripted endpoint (tests/router/conftest.py);
the same alias against real vLLM and Infinity is tests/router/api/test_alias_e2e.py.
"""

from __future__ import annotations

import json
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from inference_bundle.router.auth import create_api_key
from tests.router.conftest import Harness, envelope, unsalted

pytestmark = pytest.mark.anyio
TINY = "local/tiny-llama"
TINY_ALIAS = "local/tiny-llama-previous"
MINILM = "sentence-transformers/all-MiniLM-L6-v2"
MINILM_ALIAS = "local/minilm-previous"
PRIVATE = "argonne-private/AuroraGPT-7B"  # endpoints/sophia/auroragpt-7b.yaml: groups [auroragpt]
HELLO = [{"role": "user", "content": "hi"}]


def embedding_answer(spec: dict[str, Any], request: dict[str, Any]) -> dict[str, Any]:
    """Infinity's answer: it names the model it serves, which is never an alias."""
    body = {
        "object": "list",
        "model": spec["name"],
        "data": [{"object": "embedding", "index": 0, "embedding": [0.5, 0.25]}],
        "usage": {"prompt_tokens": 1, "total_tokens": 1},
    }
    return envelope(200, body)


def completion_answer(spec: dict[str, Any], request: dict[str, Any]) -> dict[str, Any]:
    body = {
        "id": "cmpl-1",
        "object": "text_completion",
        "created": 1,
        "model": spec["name"],
        "choices": [{"index": 0, "text": " blue", "finish_reason": "length"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
    }
    return envelope(200, body)


async def test_an_alias_is_sent_as_the_served_name_and_answered_as_asked(
    harness: Harness,
) -> None:
    response = await harness.client.post(
        "/v1/chat/completions", json={"model": TINY_ALIAS, "messages": HELLO}, headers=harness.auth
    )
    assert response.status_code == 200, response.text
    assert response.json()["model"] == TINY_ALIAS
    assert harness.endpoint.submitted[-1]["body"]["model"] == TINY
    # The served name itself is answered as it is.
    response = await harness.client.post(
        "/v1/chat/completions", json={"model": TINY, "messages": HELLO}, headers=harness.auth
    )
    assert response.json()["model"] == TINY


async def test_an_alias_through_completions_embeddings_and_streams(harness: Harness) -> None:
    harness.endpoint.handler = completion_answer
    base = "/resource_server/local/vllm/v1"
    body = {"model": TINY_ALIAS, "prompt": "The sky is"}
    response = await harness.client.post(f"{base}/completions", json=body, headers=harness.auth)
    assert (response.status_code, response.json()["model"]) == (200, TINY_ALIAS)
    assert harness.endpoint.submitted[-1]["body"]["model"] == TINY

    stream = {**body, "stream": True, "stream_options": {"include_usage": True}}
    async with harness.client.stream(
        "POST", f"{base}/completions", json=stream, headers=harness.auth
    ) as answer:
        lines = [line async for line in answer.aiter_lines() if line.startswith("data: {")]
    chunks = [json.loads(line.removeprefix("data: ")) for line in lines]
    assert len(chunks) == 3 and {c["model"] for c in chunks} == {TINY_ALIAS}
    assert unsalted(harness.endpoint.submitted[-1]["body"]) == {
        "model": TINY,
        "prompt": "The sky is",
    }

    harness.endpoint.handler = embedding_answer
    body = {"model": MINILM_ALIAS, "input": "x"}
    response = await harness.client.post(
        "/resource_server/local/infinity/v1/embeddings", json=body, headers=harness.auth
    )
    assert (response.status_code, response.json()["model"]) == (200, MINILM_ALIAS)
    assert harness.endpoint.submitted[-1]["body"]["model"] == MINILM


async def test_hints_name_only_models_the_caller_may_use(
    make_harness: Callable[..., Harness], tmp_path: Path
) -> None:
    h = make_harness()
    member = create_api_key(tmp_path / "keys.json", "bob@anl.gov", ["auroragpt"])
    typo = {"model": "argonne-private/AuroraGPT-7", "messages": HELLO}
    async with h.client:
        outsider = await h.client.post("/v1/chat/completions", json=typo, headers=h.auth)
        inside = await h.client.post(
            "/v1/chat/completions", json=typo, headers={"Authorization": f"Bearer {member}"}
        )
    assert outsider.status_code == inside.status_code == 404
    assert PRIVATE not in outsider.json()["error"]["message"]
    assert f"Did you mean: {PRIVATE}" in inside.json()["error"]["message"]


async def test_wrong_framework_says_where_only_to_those_who_may_use_it(
    make_harness: Callable[..., Harness], tmp_path: Path
) -> None:
    h = make_harness()
    member = create_api_key(tmp_path / "keys.json", "bob@anl.gov", ["auroragpt"])
    path = "/resource_server/sophia/infinity/v1/chat/completions"
    body = {"model": PRIVATE, "messages": HELLO}
    async with h.client:
        outsider = await h.client.post(path, json=body, headers=h.auth)
        inside = await h.client.post(path, json=body, headers={"Authorization": f"Bearer {member}"})
    assert outsider.status_code == 403
    assert "/resource_server/sophia/vllm" not in outsider.text
    assert inside.status_code == 400 and inside.json()["error"]["code"] == "wrong_framework"
    assert "/resource_server/sophia/vllm/v1" in inside.json()["error"]["message"]
    assert h.endpoint.submitted == []


@pytest.mark.parametrize(
    "path", ["/v1/embeddings", "/resource_server/local/vllm/v1/embeddings"], ids=["v1", "guide"]
)
async def test_embeddings_with_a_chat_model_is_a_400_saying_where_it_is(
    harness: Harness, path: str
) -> None:
    response = await harness.client.post(
        path, json={"model": TINY_ALIAS, "input": "x"}, headers=harness.auth
    )
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["param"], error["code"]) == ("model", "wrong_operation")
    assert error["message"] == (
        f"The model '{TINY_ALIAS}' is a chat model: it answers /chat/completions, /completions, "
        "/responses, /messages, /tokenize, /detokenize under /resource_server/local/vllm/v1, "
        "not /v1/embeddings."
    )
    assert harness.endpoint.submitted == []


async def test_chat_with_an_embedding_model_says_where_it_is(harness: Harness) -> None:
    response = await harness.client.post(
        "/v1/chat/completions", json={"model": MINILM, "messages": HELLO}, headers=harness.auth
    )
    assert response.status_code == 400
    assert "answers /embeddings under /resource_server/local/infinity/v1" in response.text


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_metrics_by_default_need_the_operators_token(harness: Harness) -> None:
    token_file = Path(harness.service.settings.state_dir) / "metrics-token"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    token = token_file.read_text().strip()
    assert len(token) >= 32 and harness.service.metrics_token == token
    for headers in ({}, harness.auth, bearer(token + "x"), {"Authorization": token}):
        response = await harness.client.get("/metrics", headers=headers)
        assert response.status_code == 401, headers
        assert response.json()["error"]["code"] == "invalid_metrics_token"
        assert "router_requests" not in response.text
    response = await harness.client.get("/metrics", headers=bearer(token))
    assert response.status_code == 200 and "router_models" in response.text


async def test_metrics_public_or_off(make_harness: Callable[..., Harness], tmp_path: Path) -> None:
    public = make_harness(metrics={"access": "public"}, state_dir=str(tmp_path / "public"))
    async with public.client:
        assert (await public.client.get("/metrics")).status_code == 200
    assert not (tmp_path / "public" / "metrics-token").exists()
    off = make_harness(metrics={"access": "off"}, state_dir=str(tmp_path / "off"))
    async with off.client:
        response = await off.client.get("/metrics")
    assert response.status_code == 404 and "metrics.access: off" in response.text


async def test_a_token_file_of_the_operators_is_kept(
    make_harness: Callable[..., Harness], tmp_path: Path
) -> None:
    token_file = tmp_path / "secrets" / "metrics"
    token_file.parent.mkdir()
    token_file.write_text("operators-own-token\n")
    h = make_harness(metrics={"access": "key", "token_file": str(token_file)})
    async with h.client:
        response = await h.client.get("/metrics", headers=bearer("operators-own-token"))
    assert response.status_code == 200
    assert token_file.read_text() == "operators-own-token\n"


async def test_non_ascii_authorization_is_a_401(harness: Harness) -> None:
    response = await harness.client.get(
        "/metrics", headers=[(b"authorization", "Bearer caf\xe9".encode("latin-1"))]
    )
    assert response.status_code == 401
