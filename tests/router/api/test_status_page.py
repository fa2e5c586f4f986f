"""The status page and its JSON (/status, /v1/status) over the scripted harness (fast tier)."""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import re
import time
import tomllib
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from inference_bundle.config.profiles import MaintenanceWindow
from inference_bundle.router.api import status as status_api
from inference_bundle.router.auth import create_api_key
from inference_bundle.router.batches.store import BatchRecord
from inference_bundle.router.fleet.maintenance import Maintenance
from inference_bundle.router.limits.ledger import Settlement
from tests.router.conftest import ROOT, Harness, envelope

pytestmark = pytest.mark.anyio
CHAT = "/resource_server/local/vllm/v1/chat/completions"
ERROR_FIELDS = {
    "at", "request_id", "user", "group", "cluster", "model", "operation", "status", "via",
    "latency_ms",
}  # fmt: skip


def settlement(request_id: str, at: float, status: int, user: str = "bob@anl.gov") -> Settlement:
    return Settlement(
        request_id=request_id,
        at=at,
        user=user,
        group="",
        model="local/tiny-llama",
        cluster="local",
        operation="/v1/chat/completions",
        prompt_tokens=7 if status < 400 else 0,
        completion_tokens=4 if status < 400 else 0,
        latency_ms=12.5,
        status=status,
        via="task" if status != 429 else "none",
    )


def batch(batch_id: str, owner: str, status: str) -> BatchRecord:
    return BatchRecord(
        id=batch_id,
        owner=owner,
        cluster="local",
        model="local/tiny-llama",
        endpoint="/v1/chat/completions",
        input_file_id="file-1",
        input_path="/nowhere/input.jsonl",
        output_path="/nowhere/output.jsonl",
        error_path="/nowhere/errors.jsonl",
        status=status,
        total=3,
        created_at=int(time.time()),
    )


def model_in(body: dict[str, Any], cluster: str, model: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = [
        m for m in body["clusters"][cluster]["models"] if m["id"] == model
    ]
    assert len(found) == 1, f"{model} not listed once on {cluster}"
    return found[0]


async def test_a_user_sees_their_models_states_use_and_batches(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(status_api, "SHARED_FOR_S", 0.0)  # each call reads the ledger anew
    answer = await harness.client.get("/v1/status", headers=harness.auth)
    assert answer.status_code == 200
    body = answer.json()
    assert body["object"] == "status"
    assert body["caller"] == {"user": "alice@anl.gov", "admin": False}
    assert body["recent_window_s"] == 3600
    assert "last_errors" not in body  # admins only
    assert set(body["clusters"]) == {"local", "sophia"}
    local = body["clusters"]["local"]
    assert local["maintenance"] is None
    tiny = model_in(body, "local", "local/tiny-llama")
    minutes = tiny.pop("last_hour_by_minute")
    assert minutes["step_s"] == 60 and datetime.fromisoformat(minutes["start"]).tzinfo == UTC
    assert minutes["requests"] == minutes["errors"] == [0] * 60
    assert minutes["median_latency_ms"] == [None] * 60
    assert tiny == {
        "id": "local/tiny-llama",
        "endpoint": tiny["endpoint"],
        "framework": "vllm",
        "kind": "chat",
        "state": "cold",
        "waiting_since": None,
        "last_used": None,
        "in_flight": 0,
        "last_error": None,
        "last_hour": {
            "requests": 0,
            "errors": 0,
            "prompt_tokens": 0,
            "completion_tokens": 0,
            "total_tokens": 0,
        },
        # No request has taken a place on its servers yet (router.dispatch.admission).
        "queue": {
            "waiting": 0,
            "by_class": {},
            "in_use": 0,
            "capacity": None,
            "refused": 0,
            "shares": {},
        },
    }
    # A model limited to a group the caller is not in is not listed at all.
    sophia = [m["id"] for m in body["clusters"]["sophia"]["models"]]
    assert sophia and "argonne-private/AuroraGPT-7B" not in sophia
    assert body["batches_in_flight"] == []

    chat = {"model": "local/tiny-llama", "messages": [{"role": "user", "content": "hi"}]}
    assert (await harness.client.post(CHAT, json=chat, headers=harness.auth)).status_code == 200
    await harness.service.limiter.flush()  # the usage records (the router's writer runs this)
    store = harness.service.batches.store
    store.save(batch("batch_mine", "alice@anl.gov", "in_progress"))
    store.save(batch("batch_done", "alice@anl.gov", "completed"))
    store.save(batch("batch_theirs", "bob@anl.gov", "in_progress"))

    body = (await harness.client.get("/v1/status", headers=harness.auth)).json()
    tiny = model_in(body, "local", "local/tiny-llama")
    assert tiny["state"] == "ready"
    assert tiny["last_used"] is not None
    minutes = tiny["last_hour_by_minute"]
    assert sum(minutes["requests"]) == 1 and sum(minutes["errors"]) == 0
    assert [m for m in minutes["median_latency_ms"] if m is not None] != []
    assert tiny["last_hour"] == {
        "requests": 1,
        "errors": 0,
        "prompt_tokens": 3,
        "completion_tokens": 2,
        "total_tokens": 5,
    }
    assert [b["id"] for b in body["batches_in_flight"]] == ["batch_mine"]
    assert body["batches_in_flight"][0]["request_counts"]["total"] == 3


async def test_open_pages_share_the_ledgers_answers(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    ledger = harness.service.limiter.ledger
    asked: list[float] = []

    def recent_by_model(since: float) -> list[dict[str, Any]]:
        asked.append(since)
        return []

    monkeypatch.setattr(ledger, "recent_by_model", recent_by_model)
    for _ in range(3):
        answer = await harness.client.get("/v1/status", headers=harness.auth)
        assert answer.status_code == 200
    assert len(asked) == 1
    monkeypatch.setattr(status_api, "SHARED_FOR_S", 0.0)
    await harness.client.get("/v1/status", headers=harness.auth)
    assert len(asked) == 2


async def test_a_waiting_model_says_since_when(make_harness: Callable[..., Harness]) -> None:
    h = make_harness()
    route = next(r for r in h.service.table.routes("local") if r.model == "local/tiny-llama")
    h.service.tracker.begin(route.endpoint_name)
    async with h.client:
        body = (await h.client.get("/v1/status", headers=h.auth)).json()
    tiny = model_in(body, "local", "local/tiny-llama")
    assert tiny["state"] == "queued"
    assert tiny["in_flight"] == 1
    since = h.service.tracker.status(route.endpoint_name).since
    assert tiny["waiting_since"] == status_api._iso(since)


async def test_an_admin_also_sees_the_last_errors(
    make_harness: Callable[..., Harness], tmp_path: Path
) -> None:
    h = make_harness()
    admin_key = create_api_key(tmp_path / "keys.json", "root@anl.gov", admin=True)
    now = time.time()
    h.service.limiter.ledger.settle(
        [
            settlement("old-500", now - 2 * 86400, 500),  # past the last day: not shown
            settlement("two-hours", now - 7200, 200),  # not in the last hour
            settlement("ok", now - 60, 200),
            settlement("failed", now - 30, 502),
            settlement("refused", now - 10, 429, user="alice@anl.gov"),
            settlement("client-error", now - 5, 400),  # the caller's mistake, not listed
        ]
    )
    async with h.client:
        answer = await h.client.get("/v1/status", headers={"Authorization": f"Bearer {admin_key}"})
        users = await h.client.get("/v1/status", headers=h.auth)
    body = answer.json()
    assert body["caller"] == {"user": "root@anl.gov", "admin": True}
    errors = body["last_errors"]
    assert [(e["request_id"], e["status"], e["user"]) for e in errors] == [
        ("refused", 429, "alice@anl.gov"),
        ("failed", 502, "bob@anl.gov"),
    ]
    assert all(set(e) == ERROR_FIELDS for e in errors)  # who, what, when: no prompt
    assert errors[0]["at"].endswith("+00:00")
    assert errors[1]["via"] == "task" and errors[1]["latency_ms"] == 12.5
    # The last hour counts everyone's requests on the model (errors among them).
    assert model_in(body, "local", "local/tiny-llama")["last_hour"] == {
        "requests": 4,
        "errors": 2,
        "prompt_tokens": 7,
        "completion_tokens": 4,
        "total_tokens": 11,
    }
    assert "last_errors" not in users.json()


async def test_a_planned_maintenance_window_is_in_the_cluster_notice(
    make_harness: Callable[..., Harness],
) -> None:
    h = make_harness()
    maintenance = h.service.dispatcher.maintenance
    assert maintenance is not None
    start = datetime.now(UTC) + timedelta(hours=2)
    window = MaintenanceWindow(start=start, end=start + timedelta(hours=4), reason="new racks")
    profiles = dict(maintenance.profiles)
    profiles["local"] = profiles["local"].model_copy(update={"maintenance": [window]})
    h.service.dispatcher.maintenance = Maintenance(profiles)
    async with h.client:
        body = (await h.client.get("/v1/status", headers=h.auth)).json()
    notice = body["clusters"]["local"]["maintenance"]
    assert notice["reason"] == "new racks"
    assert notice["active"] is False
    assert datetime.fromisoformat(notice["start"]) == start
    assert datetime.fromisoformat(notice["end"]) == start + timedelta(hours=4)
    assert body["clusters"]["sophia"]["maintenance"] is None


async def test_status_needs_a_key_and_the_page_does_not(harness: Harness) -> None:
    answer = await harness.client.get("/v1/status")
    assert answer.status_code == 401
    assert answer.json()["error"]["code"] == "missing_credentials"
    also = await harness.client.get("/resource_server/v1/status", headers=harness.auth)
    assert also.status_code == 200 and also.json()["object"] == "status"


async def test_the_page_is_served_with_a_policy_that_lets_only_its_own_script_run(
    harness: Harness,
) -> None:
    page = await harness.client.get("/status")
    assert page.status_code == 200
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    html = page.text
    assert "<title>Inference endpoints: status</title>" in html
    script = re.search(r"<script>(.*?)</script>", html, re.DOTALL)
    assert script is not None
    digest = base64.b64encode(hashlib.sha256(script.group(1).encode()).digest()).decode()
    policy = page.headers["content-security-policy"]
    assert f"script-src 'sha256-{digest}';" in policy
    assert "connect-src 'self'" in policy and "default-src 'none'" in policy
    # No external assets: the page works with no internet.
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html)
    # Data is written as text, never parsed as HTML.
    assert "innerHTML" not in html and "insertAdjacentHTML" not in html
    # The paths the page asks for are relative: it works under any prefix.
    for path in ("v1/status", "resource_server/list-endpoints", "v1/usage?by=user"):
        assert f'"{path}' in html


def test_the_page_ships_with_the_package() -> None:
    """pyproject's package-data names the page, so an installed router serves it too."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    globs = pyproject["tool"]["setuptools"]["package-data"]["inference_bundle.router"]
    package = ROOT / "inference_bundle" / "router"
    shipped = {path for pattern in globs for path in package.glob(pattern)}
    assert package / "static" / "status.html" in shipped


@pytest.mark.timeout(30)
async def test_an_errors_request_id_is_the_same_in_its_answer_the_access_log_and_the_list(
    make_harness: Callable[..., Harness], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An operator goes from the status page's error to its access-log line (and the user's
    X-Request-Id) by one id."""
    h = make_harness()
    admin_key = create_api_key(tmp_path / "keys.json", "root@anl.gov", admin=True)
    admin = {"Authorization": f"Bearer {admin_key}"}
    h.endpoint.handler = lambda spec, request: envelope(
        502, {"error": {"message": "the model server fell over", "type": "server_error"}}
    )
    chat = {"model": "local/tiny-llama", "messages": [{"role": "user", "content": "hi"}]}
    with caplog.at_level(logging.INFO, logger="router.access"):
        async with h.client:
            answer = await h.client.post(CHAT, json=chat, headers=h.auth)
            await h.service.limiter.flush()
            body = (await h.client.get("/v1/status", headers=admin)).json()
    assert answer.status_code == 502
    request_id = answer.headers["x-request-id"]
    logged = [json.loads(r.getMessage()) for r in caplog.records if r.name == "router.access"]
    assert [(line["request_id"], line["status"]) for line in logged] == [(request_id, 502)]
    assert [(e["request_id"], e["status"]) for e in body["last_errors"]] == [(request_id, 502)]
    minutes = model_in(body, "local", "local/tiny-llama")["last_hour_by_minute"]
    assert sum(minutes["errors"]) == 1  # and the chart counts it
