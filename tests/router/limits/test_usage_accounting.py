"""Usage records and charging: each request charged once whatever the retries, a user sees
their own usage and an admin everyone's, a batch pauses on a spent budget and is charged
each line once, the stream's usage chunk is read and dropped unless asked for.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from inference_bundle.config.settings import LimitsSettings
from inference_bundle.router.auth import create_api_key
from inference_bundle.router.limits.limiter import Usage
from tests.router.conftest import Harness
from tests.router.limits_helpers import HELLO, TINY, answer_with_usage, chat, limits

pytestmark = pytest.mark.anyio


async def test_a_users_usage_is_their_own_and_an_admin_sees_all(
    make_harness: Callable[..., Harness], tmp_path: Path
) -> None:
    h = make_harness()
    h.endpoint.handler = answer_with_usage(prompt=3, completion=2)
    bob = create_api_key(tmp_path / "keys.json", "bob@anl.gov")
    admin = create_api_key(tmp_path / "keys.json", "ops@anl.gov", admin=True)
    async with h.client:
        assert (await chat(h)).status_code == 200
        assert (await chat(h, key=bob)).status_code == 200
        assert (await chat(h, key=bob)).status_code == 200
        await h.service.limiter.flush()

        async def usage(key: str, query: str = "") -> httpx.Response:
            auth = {"Authorization": f"Bearer {key}"}
            return await h.client.get(f"/v1/usage?by=user{query}", headers=auth)

        own = (await usage(bob)).json()
        assert [(r["user"], r["requests"], r["total_tokens"]) for r in own["data"]] == [
            ("bob@anl.gov", 2, 10)
        ]
        denied = await usage(bob, "&user=alice@anl.gov")
        assert denied.status_code == 403
        assert denied.json()["error"]["code"] == "permission_denied"
        everyone = (await usage(admin)).json()
        assert {r["user"]: r["requests"] for r in everyone["data"]} == {
            "alice@anl.gov": 1,
            "bob@anl.gov": 2,
        }
        one = (await usage(admin, "&user=alice@anl.gov")).json()
        assert [r["user"] for r in one["data"]] == ["alice@anl.gov"]
        bad = await h.client.get("/v1/usage?by=colour", headers=h.auth)
        assert bad.status_code == 400
        assert bad.json()["error"]["param"] == "by"
        bad_day = await h.client.get("/v1/usage?since=yesterday", headers=h.auth)
        assert bad_day.status_code == 400
    text = h.service.metrics.registry.get_sample_value(
        "router_tokens_total", {"model": TINY, "kind": "prompt"}
    )
    assert text == 9


async def test_settling_twice_charges_once(make_harness: Callable[..., Harness]) -> None:
    h = make_harness(limits=limits(tokens_per_day=1000))
    limiter = h.service.limiter
    ticket = await limiter.admit(
        "req-1",
        "alice@anl.gov",
        frozenset(),
        "local",
        TINY,
        "/v1/chat/completions",
        {"messages": HELLO, "max_tokens": 5},
    )
    limiter.settle(ticket, 200, Usage(4, 5), 0.01, "task")
    limiter.settle(ticket, 200, Usage(4, 5), 0.01, "task")  # a retry after an ambiguous commit
    assert await limiter.flush()
    [row] = limiter.ledger.usage("2000-01-01", "2999-01-01", ["user"])
    assert (row["requests"], row["total_tokens"]) == (1, 9)


async def test_a_batch_over_its_budget_pauses_and_completes_once_the_budget_is_raised(
    make_harness: Callable[..., Harness], tmp_path: Path, model: Any
) -> None:
    """Each line costs 10 tokens (the fake model's usage); the day budget is 50."""
    from tests.router.batch_fakes import GUIDE, line, wait_for, write_lines
    from tests.router.conftest import batch_harness

    h = batch_harness(make_harness(limits=limits(tokens_per_day=50)), tmp_path)
    runner = h.service.batches.runner
    runner.concurrency = 1
    model.delay_s = 0.05
    source = write_lines(tmp_path / "in" / "lines.jsonl", [line(n) for n in range(30)])
    async with h.client:
        created = await h.client.post(
            GUIDE, headers=h.auth, json={"model": TINY, "input_file": str(source)}
        )
        batch = created.json()
        url = f"/v1/batches/{batch['id']}"
        paused: dict[str, Any] = {}
        for _ in range(200):
            await asyncio.to_thread(runner.watch_once)
            paused = (await h.client.get(url, headers=h.auth)).json()
            if paused["status"] == "paused":
                break
            await asyncio.sleep(0.05)
        assert paused["status"] == "paused", paused
        assert paused["paused"]["limit"] == "tokens_per_day"
        assert "limits.clusters.local.user.tokens_per_day" in paused["paused"]["reason"]
        done_then = paused["request_counts"]["completed"]
        assert 5 <= done_then < 30
        # Paused, nothing more is sent.
        await asyncio.to_thread(runner.watch_once)
        await asyncio.sleep(0.3)  # fixed: the assertion is that nothing more was sent
        assert (await h.client.get(url, headers=h.auth)).json()["request_counts"][
            "completed"
        ] == done_then
        h.service.limiter.update(LimitsSettings.model_validate(limits(tokens_per_day=10_000)))
        await asyncio.to_thread(runner.watch_once)
        done = await wait_for(h, url, ("completed",))
        await h.service.limiter.flush()
        usage = (await h.client.get("/v1/usage?by=user", headers=h.auth)).json()
    output = Path(done["output_file_path"]).read_text().splitlines()
    ids = [json.loads(x)["custom_id"] for x in output]
    assert sorted(ids) == sorted(f"r-{n}" for n in range(30))  # each answered once
    [row] = usage["data"]
    assert (row["requests"], row["total_tokens"]) == (30, 300)  # each line charged once


def test_the_usage_tap_reads_the_last_chunk_and_drops_it_unless_asked() -> None:
    from inference_bundle.router.api.stream_response import UsageTap

    events = (
        b'data: {"id":"c","choices":[{"index":0,"delta":{"content":"a"}}]}\n\n'
        b'data: {"id":"c","choices":[{"index":0,"delta":{"content":"b"}}]}\n\n'
        b'data: {"id":"c","choices":[],"usage":{"prompt_tokens":5,"completion_tokens":2,'
        b'"total_tokens":7}}\n\n'
        b"data: [DONE]\n\n"
    )
    for keep in (False, True):
        tap = UsageTap(keep=keep)
        # Cut anywhere, even inside an event: events come out whole, in order.
        out = b"".join(tap.feed(events[i : i + 7]) for i in range(0, len(events), 7))
        out += tap.rest()
        assert tap.usage == Usage(5, 2)
        assert (b'"usage"' in out) is keep
        assert out.endswith(b"data: [DONE]\n\n")
        assert out.count(b"data: ") == (4 if keep else 3)


@pytest.mark.parametrize(
    ("query", "param"),
    [
        ("until=0001-01-01", "until"),
        ("since=0001-01-01", "since"),
        ("until=1970-01-03", None),
        ("until=9999-12-31", None),
        ("since=9999-12-31&until=9999-12-31", None),
        ("until=10000-01-01", "until"),
        ("since=0000-00-00", "since"),
        ("since=" + "9" * 500, "since"),
        ("since=2024-02-30", "since"),
        ("since=2025-01-02&until=2025-01-01", "since"),
    ],
)
async def test_a_day_out_of_range_is_a_400_naming_its_parameter(
    harness: Harness, query: str, param: str | None
) -> None:
    answer = await harness.client.get(f"/v1/usage?{query}", headers=harness.auth)
    if param is None:
        assert answer.status_code == 200, answer.text
        return
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert (error["param"], error["code"]) == (param, "invalid_value")
    assert error["message"].startswith(f"'{param}' ")
    assert len(error["message"]) < 200  # a long value is not echoed whole
