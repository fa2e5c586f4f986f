"""The model operations' own way in (api/operation_entry.py): which requests take it, and that
its answers and errors are those Starlette's routes gave."""

from __future__ import annotations

import logging

import pytest

from inference_bundle.router.api import operation_entry
from inference_bundle.router.api.operation_entry import operation_params
from tests.router.conftest import Harness

pytestmark = pytest.mark.anyio
HELLO = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize(
    ("path", "params"),
    [
        ("/v1/chat/completions", {"operation": "chat/completions"}),
        ("/v1/tokenize", {"operation": "tokenize"}),
        (
            "/resource_server/local/vllm/v1/embeddings",
            {"cluster": "local", "framework": "vllm", "operation": "embeddings"},
        ),
        ("/v1/batches", None),  # the batch API's, not an operation
        ("/v1/files", None),
        ("/v1/no/such/operation", None),
        ("/resource_server/local/v1/chat/completions", None),  # no framework
        ("/resource_server//vllm/v1/chat/completions", None),
        ("/resource_server/local/vllm/v2/chat/completions", None),
        ("/health", None),
    ],
)
def test_only_a_known_operations_url_takes_the_short_way(
    path: str, params: dict[str, str] | None
) -> None:
    assert operation_params(path) == params


async def test_an_operation_skips_starlettes_routes_and_others_do_not(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    matched: list[str] = []
    real = operation_entry.operation_params

    def counted(path: str) -> dict[str, str] | None:
        found = real(path)
        if found is not None:
            matched.append(path)
        return found

    monkeypatch.setattr(operation_entry, "operation_params", counted)
    chat = {"model": "local/tiny-llama", "messages": HELLO}
    answer = await harness.client.post("/v1/chat/completions", json=chat, headers=harness.auth)
    assert answer.status_code == 200, answer.text
    assert (await harness.client.get("/v1/models", headers=harness.auth)).status_code == 200
    assert matched == ["/v1/chat/completions"]


async def test_errors_on_the_short_way_are_openais(harness: Harness) -> None:
    chat = {"model": "local/tiny-llama", "messages": HELLO}
    unauthorized = await harness.client.post("/v1/chat/completions", json=chat)
    assert unauthorized.status_code == 401
    assert unauthorized.json()["error"]["code"] == "missing_credentials"
    unknown = await harness.client.post(
        "/v1/chat/completions", json={**chat, "model": "nope"}, headers=harness.auth
    )
    assert unknown.status_code == 404
    assert unknown.headers["x-request-id"]  # named as the access log names it
    assert unknown.json()["error"]["code"] == "model_not_found"
    # Not an operation: Starlette's routes answer, in the same shape.
    missing = await harness.client.post("/v1/no/such", json=chat, headers=harness.auth)
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "not_found"


async def test_a_failure_in_the_router_is_a_500_that_names_the_request(
    harness: Harness, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr("inference_bundle.router.api.openai.validate", broken)
    chat = {"model": "local/tiny-llama", "messages": HELLO}
    with caplog.at_level(logging.ERROR, logger="router"):
        answer = await harness.client.post("/v1/chat/completions", json=chat, headers=harness.auth)
    assert answer.status_code == 500
    error = answer.json()["error"]
    assert error["type"] == "server_error"
    assert "a bug" not in answer.text  # the traceback goes to the log only
    assert any("a bug" in (r.exc_text or "") or r.exc_info for r in caplog.records)
    request_id = error["message"].split("request id ")[1].split(")")[0]
    assert len(request_id) == 16
