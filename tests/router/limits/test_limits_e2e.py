"""Token budgets on real streams: the session's router, real vLLM, limits reloaded live.

The limits go into the shared router's settings file for one user of this module only (a
``users`` override), and the router rereads them within a second; they are taken out again
at the end.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from inference_bundle.router.auth import create_api_key
from tests.e2e_router import SHARED_ROUTER, TINY, RunningRouter

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600), pytest.mark.anyio]
USER = "streamer@anl.gov"
MAX_TOKENS = 8
BUDGET = 400
URL = "/resource_server/local/vllm/v1/chat/completions"


@pytest.fixture
def budgeted(
    e2e_router: RunningRouter,
) -> Iterator[tuple[RunningRouter, str, Callable[[], None]]]:
    """The shared router, a key for USER, and a function that puts a day budget on USER."""
    config = e2e_router.root / "config" / "router" / f"{SHARED_ROUTER}.yaml"
    before = config.read_text()
    key = create_api_key(e2e_router.root / ".state" / "keys.json", USER)

    def limit() -> None:
        data = yaml.safe_load(before)
        data["limits"] = {"clusters": {"local": {"users": {USER: {"tokens_per_day": BUDGET}}}}}
        config.write_text(yaml.safe_dump(data))

    try:
        yield e2e_router, key, limit
    finally:
        config.write_text(before)


def stream_body(include_usage: bool) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": TINY,
        "messages": [{"role": "user", "content": "count to ten"}],
        "max_tokens": MAX_TOKENS,
        "ignore_eos": True,  # vLLM's: every answer is MAX_TOKENS long
        "temperature": 0,
        "stream": True,
    }
    if include_usage:
        body["stream_options"] = {"include_usage": True}
    return body


async def read_stream(client: httpx.AsyncClient, key: str, include_usage: bool) -> dict[str, Any]:
    auth = {"Authorization": f"Bearer {key}"}
    async with client.stream("POST", URL, json=stream_body(include_usage), headers=auth) as r:
        raw = (await r.aread()).decode()
    events = [line[6:] for line in raw.splitlines() if line.startswith("data: ")]
    chunks = [json.loads(e) for e in events if e != "[DONE]"]
    usage = [c["usage"] for c in chunks if c.get("usage")]
    return {"status": r.status_code, "raw": raw, "usage": usage, "done": events[-1:] == ["[DONE]"]}


def usage_of(router: RunningRouter, key: str) -> dict[str, Any]:
    auth = {"Authorization": f"Bearer {key}"}
    found: dict[str, Any] = httpx.get(router.url + "/v1/usage?by=user", headers=auth).json()
    return found


async def test_a_budget_under_32_concurrent_streams_is_never_overshot_by_more_than_one(
    budgeted: tuple[RunningRouter, str, Callable[[], None]],
) -> None:
    router, key, limit = budgeted
    async with httpx.AsyncClient(base_url=router.url, timeout=300) as client:
        # Warm (the router learns the model's tokens), then put the budget on: the router
        # rereads its settings file.
        probe = await read_stream(client, key, include_usage=True)
        assert probe["status"] == 200 and probe["done"], probe["raw"]
        [reported] = probe["usage"]
        assert reported["completion_tokens"] == MAX_TOKENS
        per_request = reported["prompt_tokens"] + MAX_TOKENS
        limit()
        deadline = time.monotonic() + 30
        while usage_of(router, key)["limits"] == []:
            assert time.monotonic() < deadline, "the router did not reload its limits"
            await asyncio.sleep(0.2)
        answers = await asyncio.gather(
            *(read_stream(client, key, include_usage=n % 2 == 0) for n in range(32))
        )
    ok = [a for a in answers if a["status"] == 200]
    refused = [a for a in answers if a["status"] == 429]
    assert len(ok) + len(refused) == 32, [a["raw"][:200] for a in answers]
    assert ok and refused
    assert all(a["done"] for a in ok)
    for n, answer in enumerate(answers):
        if answer["status"] == 200:
            # The usage chunk the router asked for reaches only those who asked for it.
            assert len(answer["usage"]) == (1 if n % 2 == 0 else 0), answer["raw"]
    assert all(json.loads(a["raw"])["error"]["code"] == "insufficient_quota" for a in refused)
    deadline = time.monotonic() + 15
    while True:
        usage = usage_of(router, key)
        [row] = usage["data"] or [{"requests": 0}]
        if row["requests"] == len(ok) + 1 or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.2)
    # Each request charged what vLLM reported, the probe included.
    assert row["requests"] == len(ok) + 1
    assert row["total_tokens"] == per_request * (len(ok) + 1)
    # The probe came before the budget: what the budget was charged is the rest.
    assert row["total_tokens"] - per_request <= BUDGET + MAX_TOKENS
    [standing] = usage["limits"]
    assert standing["limit"] == "tokens_per_day" and standing["value"] == BUDGET


def test_the_access_log_names_the_group_and_usage_counts_tokens_per_model(
    e2e_router: RunningRouter,
) -> None:
    log = Path(e2e_router.root / ".state" / f"{SHARED_ROUTER}.log").read_text()
    lines = [json.loads(x) for x in log.splitlines() if x.startswith('{"ts"')]
    mine = [x for x in lines if x.get("user") == USER]
    assert mine and all("group" in x for x in mine)
    assert "ticket" not in mine[0]
