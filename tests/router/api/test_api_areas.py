"""The API's areas alone: shared auth and bodies, route order, handlers called directly."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from starlette.requests import Request
from starlette.routing import Route as HTTPRoute

from inference_bundle.router.api import common, health, listings, uploads
from inference_bundle.router.app import api_routes
from inference_bundle.router.auth import Caller
from inference_bundle.router.errors import APIError
from tests.router.conftest import Harness

pytestmark = pytest.mark.anyio
ALICE = Caller(user="alice", identity_id=None, groups=frozenset())


def request(
    body: bytes = b"",
    headers: dict[str, str] | None = None,
    path_params: dict[str, str] | None = None,
) -> Request:
    """A Starlette request as a handler sees it, without an app around it."""
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/",
        "query_string": b"",
        "headers": [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()],
        "path_params": path_params or {},
    }
    return Request(scope, receive)


class CachedOnly:
    """An authenticator that knows the caller at once and must never be asked in a thread."""

    def __init__(self, known: Caller | None) -> None:
        self.known = known
        self.slow_calls = 0

    def authenticate(self, authorization: str | None) -> Caller:
        self.slow_calls += 1
        return ALICE

    def authenticate_at_once(self, authorization: str | None) -> Caller | None:
        return self.known


async def test_a_known_caller_skips_the_slow_path() -> None:
    fast = CachedOnly(ALICE)
    assert await common.authenticate(fast, request()) == ALICE
    assert fast.slow_calls == 0
    slow = CachedOnly(None)
    assert await common.authenticate(slow, request()) == ALICE
    assert slow.slow_calls == 1


async def test_batch_and_file_routes_use_the_fast_path(harness: Harness) -> None:
    fast = CachedOnly(ALICE)
    harness.service.batches.authenticator = fast
    for url in ("/v1/batches", "/resource_server/local/vllm/v1/batches", "/v1/files/nope"):
        await harness.client.get(url)
    assert fast.slow_calls == 0


async def test_unknown_cluster_is_the_route_tables_404(harness: Harness) -> None:
    table = harness.service.table
    with pytest.raises(APIError) as looked_up:
        table.lookup("", "nowhere")
    with pytest.raises(APIError) as required:
        common.require_cluster(table, "nowhere")
    assert required.value.status == 404
    assert required.value.body() == looked_up.value.body()
    common.require_cluster(table, "local")
    for url in ("/resource_server/nowhere/jobs", "/resource_server/nowhere/vllm/v1/models"):
        answer = await harness.client.get(url, headers=harness.auth)
        assert answer.status_code == 404
        assert answer.json() == looked_up.value.body()


async def test_operation_bodies() -> None:
    assert await common.read_json(request(b"[1]"), 1024) == [1]
    with pytest.raises(APIError, match="The request body is not valid JSON: Expecting"):
        await common.read_json(request(b"{"), 1024)
    with pytest.raises(APIError, match="nested too deeply"):
        await common.read_json(request(b"[" * 100_000), 10**6)
    with pytest.raises(APIError) as big:
        await common.read_json(request(b"x" * 2048), 1024)
    assert big.value.status == 413 and big.value.code == "request_too_large"
    assert big.value.message.endswith("send less per request or use the batch API.")


async def test_batch_create_bodies() -> None:
    assert await common.read_json_object(request(b'{"a": 1}')) == {"a": 1}
    with pytest.raises(APIError, match=r"^The request body is not valid JSON: Expecting"):
        await common.read_json_object(request(b"{"))
    with pytest.raises(APIError, match="must be a JSON object"):
        await common.read_json_object(request(b"[]"))
    with pytest.raises(APIError, match=r"^The upload is larger than 1 MB\.$") as big:
        await common.read_json_object(request(b" " * (2**20 + 1)))
    assert big.value.status == 413


async def test_uploads_must_be_multipart() -> None:
    with pytest.raises(APIError, match="multipart/form-data"):
        await uploads.receive(request(b"x", {"content-type": "text/plain"}), Path("/nowhere"), 1024)


async def test_routes_keep_their_order(harness: Harness) -> None:
    """Batch and file routes before the catch-all operations, operations before the lists."""
    guide = "/resource_server/{cluster}/{framework}/v1"
    expected = [
        (f"{guide}/batches", "POST", "guide_create"),
        (f"{guide}/batches", "GET", "list_batches"),
        (f"{guide}/batches/{{batch_id}}", "GET", "get_batch"),
        (f"{guide}/batches/{{batch_id}}/result", "GET", "guide_result"),
        (f"{guide}/batches/{{batch_id}}/cancel", "POST", "cancel_batch"),
        ("/v1/batches", "POST", "openai_create"),
        ("/v1/batches", "GET", "list_batches"),
        ("/v1/batches/{batch_id}", "GET", "get_batch"),
        ("/v1/batches/{batch_id}/cancel", "POST", "cancel_batch"),
        ("/v1/files", "POST", "upload_file"),
        ("/v1/files/{file_id}", "GET", "get_file"),
        ("/v1/files/{file_id}", "DELETE", "delete_file"),
        ("/v1/files/{file_id}/content", "GET", "file_content"),
        ("/v1/usage", "GET", "usage"),
        ("/resource_server/v1/usage", "GET", "usage"),
        ("/status", "GET", "status_page"),
        ("/v1/status", "GET", "status"),
        ("/resource_server/v1/status", "GET", "status"),
        (f"{guide}/{{operation:path}}", "POST", "operation"),
        ("/v1/{operation:path}", "POST", "operation"),
        (f"{guide}/models", "GET", "models"),
        ("/resource_server/{cluster}/jobs", "GET", "jobs"),
        ("/resource_server/list-endpoints", "GET", "list_endpoints"),
        ("/v1/models", "GET", "models"),
        ("/metrics", "GET", "metrics"),
        ("/health", "GET", "health"),
    ]
    got = []
    for route in api_routes(harness.service):
        assert isinstance(route, HTTPRoute)
        methods = sorted((route.methods or set()) - {"HEAD"})
        got.append((route.path, ",".join(methods), route.name))
    assert got == expected


async def test_405_names_the_first_route_of_a_path(harness: Harness) -> None:
    """DELETE /v1/models meets the POST operation route before the GET list."""
    answer = await harness.client.delete("/v1/models", headers=harness.auth)
    assert answer.status_code == 405
    assert answer.headers["allow"] == "POST"


async def test_handlers_run_without_an_app(harness: Harness) -> None:
    answer = await health.health(harness.service, request())
    assert json.loads(bytes(answer.body)) == {"status": "ok"}
    listed = await listings.models(
        harness.service,
        request(headers=harness.auth, path_params={"cluster": "local", "framework": "vllm"}),
    )
    ids = [m["id"] for m in json.loads(bytes(listed.body))["data"]]
    assert "local/tiny-llama" in ids
