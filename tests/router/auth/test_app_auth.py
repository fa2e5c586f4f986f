"""Auth through the HTTP app: 401s and 403s in OpenAI's shape, against the fake Globus Auth."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from inference_bundle.config.settings import parse_settings
from inference_bundle.router.app import create_app
from inference_bundle.router.executors.pool import ExecutorPool
from inference_bundle.router.service import build_service
from tests.router.conftest import ROOT, ScriptedEndpoint
from tests.router.fake_globus_auth import FakeGlobusAuth

pytestmark = pytest.mark.anyio
SECRET_ENV = "TEST_APP_GLOBUS_SECRET"
AURORA_GROUP = str(uuid.uuid4())
CHAT = "/resource_server/sophia/vllm/v1/chat/completions"
HELLO = [{"role": "user", "content": "hi"}]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeGlobusAuth]:
    with FakeGlobusAuth() as server:
        server.apply_env(monkeypatch)
        monkeypatch.setenv(SECRET_ENV, server.client_secret)
        yield server


@pytest.fixture
async def client(fake: FakeGlobusAuth, tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    settings = parse_settings(
        {
            "clusters": ["sophia"],
            "executor": "engine",
            "state_dir": str(tmp_path),
            "auth": {
                "mode": "globus",
                "globus": {
                    "client_id": fake.client_id,
                    "client_secret_env": SECRET_ENV,
                    "groups": {"auroragpt": AURORA_GROUP},
                },
                "policy": {"sophia": {"identity_domains": ["anl.gov"]}},
            },
        }
    )
    service = build_service(settings, ROOT)
    endpoint = ScriptedEndpoint()
    service.pool = ExecutorPool(lambda route, _replica: endpoint)
    service.dispatcher.pool = service.pool
    transport = httpx.ASGITransport(app=create_app(service))
    async with httpx.AsyncClient(transport=transport, base_url="http://router") as http:
        yield http


async def chat(
    client: httpx.AsyncClient, token: str | None, model: str = "Qwen/Qwen2.5-7B-Instruct"
) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return await client.post(CHAT, json={"model": model, "messages": HELLO}, headers=headers)


def error_of(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    assert {"message", "type", "param", "code"} <= set(error)
    return error


async def test_valid_token(client: httpx.AsyncClient, fake: FakeGlobusAuth) -> None:
    assert (await chat(client, fake.add_token("ada@anl.gov"))).status_code == 200


async def test_missing_token(client: httpx.AsyncClient) -> None:
    response = await chat(client, None)
    error_of(response, 401)
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


async def test_unknown_inactive_and_expired_tokens(
    client: httpx.AsyncClient, fake: FakeGlobusAuth
) -> None:
    error_of(await chat(client, "AT-not-issued"), 401)
    error_of(await chat(client, fake.add_token("ada@anl.gov", active=False)), 401)
    expired = fake.add_token("ada@anl.gov", exp=time.time() - 60)
    assert error_of(await chat(client, expired), 401)["code"] == "expired_token"


async def test_identity_outside_the_cluster_policy(
    client: httpx.AsyncClient, fake: FakeGlobusAuth
) -> None:
    error = error_of(await chat(client, fake.add_token("eve@example.org")), 403)
    assert "anl.gov" in error["message"]


async def test_private_model_needs_its_group(
    client: httpx.AsyncClient, fake: FakeGlobusAuth
) -> None:
    model = "argonne-private/AuroraGPT-7B"
    outsider = fake.add_token("ada@anl.gov")
    assert "auroragpt" in error_of(await chat(client, outsider, model), 403)["message"]
    member = fake.add_token("bob@anl.gov", groups=[AURORA_GROUP])
    assert (await chat(client, member, model)).status_code == 200


async def test_lists_hide_what_the_caller_may_not_use(
    client: httpx.AsyncClient, fake: FakeGlobusAuth
) -> None:
    token = fake.add_token("ada@anl.gov")
    headers = {"Authorization": f"Bearer {token}"}
    models = (await client.get("/v1/models", headers=headers)).json()["data"]
    assert "argonne-private/AuroraGPT-7B" not in {m["id"] for m in models}
    member = fake.add_token("bob@anl.gov", groups=[AURORA_GROUP])
    headers = {"Authorization": f"Bearer {member}"}
    models = (await client.get("/v1/models", headers=headers)).json()["data"]
    assert "argonne-private/AuroraGPT-7B" in {m["id"] for m in models}


async def test_access_log_has_no_prompt_and_no_token(
    client: httpx.AsyncClient, fake: FakeGlobusAuth, caplog: pytest.LogCaptureFixture
) -> None:
    token = fake.add_token("ada@anl.gov")
    secret_prompt = "the unpublished protein sequence MKTAYIAKQR"
    caplog.set_level(logging.DEBUG)
    response = await client.post(
        CHAT,
        json={
            "model": "Qwen/Qwen2.5-7B-Instruct",
            "messages": [{"role": "user", "content": secret_prompt}],
        },
        headers={"Authorization": f"Bearer {token}"},
    )
    assert response.status_code == 200
    access = [r.getMessage() for r in caplog.records if r.name == "router.access"]
    [line] = access
    assert '"user":"ada@anl.gov"' in line and '"status":200' in line
    assert '"model":"Qwen/Qwen2.5-7B-Instruct"' in line and '"latency_ms"' in line
    everything = "\n".join(r.getMessage() for r in caplog.records)
    assert secret_prompt not in everything and token not in everything
