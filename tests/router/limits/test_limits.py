"""Fair sharing on the request path: reserve before dispatch, settle with the backend's usage.

The router runs in-process over a scripted endpoint (the task path) and its SQLite store;
tests/router/limits/test_fair_sharing_e2e.py runs the same over PostgreSQL with two routers.

Here: admission (limits, windows, budgets, overrides, the reservation estimate learnt);
the limits as settings are test_limits_config.py, usage records and charging
test_usage_accounting.py.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from inference_bundle.config.settings import LimitsSettings
from inference_bundle.router.auth import create_api_key
from inference_bundle.router.limits.rules import Cost, Rules
from tests.router.conftest import Harness
from tests.router.limits_helpers import HELLO, TINY, answer_with_usage, chat, limits

pytestmark = pytest.mark.anyio


async def test_64_concurrent_requests_against_10_a_second_answer_exactly_10(
    make_harness: Callable[..., Harness],
) -> None:
    h = make_harness(limits=limits(requests_per_second=10))
    async with h.client:
        answers = await asyncio.gather(*(chat(h) for _ in range(64)))
    statuses = sorted(r.status_code for r in answers)
    assert statuses.count(200) == 10
    assert statuses.count(429) == 54
    refused = next(r for r in answers if r.status_code == 429)
    assert 1 <= int(refused.headers["retry-after"]) <= 1
    error = refused.json()["error"]
    assert error["code"] == "rate_limit_exceeded"
    assert error["type"] == "requests"
    assert error["limit"] == "requests_per_second"
    assert "limits.clusters.local.user.requests_per_second" in error["message"]
    assert "alice@anl.gov" in error["message"]
    assert len(h.endpoint.submitted) == 10  # the refused ones never reached the model
    await h.service.limiter.flush()
    refusals = [r.headers["x-request-id"] for r in answers if r.status_code == 429]
    records = h.service.limiter.ledger.records(refusals)
    assert [(r["status"], r["prompt_tokens"]) for r in records] == [(429, 0)] * 54


async def test_the_window_slides_a_second_later_requests_pass_again(
    make_harness: Callable[..., Harness],
) -> None:
    h = make_harness(limits=limits(requests_per_second=2))
    async with h.client:
        first = [await chat(h) for _ in range(3)]
        assert [r.status_code for r in first] == [200, 200, 429]
        # Fixed: the window slides with the clock; what is tested is the wait it names.
        await asyncio.sleep(float(first[2].headers["retry-after"]) + 0.05)
        assert (await chat(h)).status_code == 200


async def test_a_token_budget_under_concurrency_is_overshot_by_at_most_one_request(
    make_harness: Callable[..., Harness],
) -> None:
    """32 concurrent requests on a day budget: the sum charged stays within one request's
    max_tokens of the budget, and each is charged what the backend reported."""
    budget = 200
    h = make_harness(limits=limits(tokens_per_day=budget))
    h.endpoint.handler = answer_with_usage(prompt=7, completion=20)
    h.endpoint.delay_s = 0.05
    async with h.client:
        answers = await asyncio.gather(*(chat(h, max_tokens=20) for _ in range(32)))
        await h.service.limiter.flush()
        ok = [r for r in answers if r.status_code == 200]
        refused = [r for r in answers if r.status_code == 429]
        assert ok and refused
        assert refused[0].json()["error"]["code"] == "insufficient_quota"
        usage = (await h.client.get("/v1/usage?by=user", headers=h.auth)).json()
    [row] = usage["data"]
    assert row["requests"] == len(ok)  # refused ones are not records
    assert row["prompt_tokens"] == 7 * len(ok)
    assert row["completion_tokens"] == 20 * len(ok)
    assert row["total_tokens"] <= budget + 20
    [standing] = usage["limits"]
    assert standing["limit"] == "tokens_per_day"
    assert standing["used"] == row["total_tokens"]


async def test_a_request_that_alone_exceeds_a_limit_says_so(
    make_harness: Callable[..., Harness],
) -> None:
    h = make_harness(limits=limits(tokens_per_minute=100))
    async with h.client:
        refused = await chat(h, max_tokens=500)
    assert refused.status_code == 429
    assert "retry-after" not in refused.headers
    assert "alone" in refused.json()["error"]["message"]


async def test_concurrent_requests_are_bounded_and_the_slot_comes_back(
    make_harness: Callable[..., Harness],
) -> None:
    h = make_harness(limits=limits(concurrent=2))
    h.endpoint.delay_s = 0.3
    async with h.client:
        answers = await asyncio.gather(*(chat(h) for _ in range(5)))
        assert sorted(r.status_code for r in answers) == [200, 200, 429, 429, 429]
        await h.service.limiter.flush()  # the settled requests let go of their slots
        assert (await chat(h)).status_code == 200


async def test_overrides_per_user_group_and_model(
    make_harness: Callable[..., Harness], tmp_path: Path
) -> None:
    h = make_harness(
        limits={
            "clusters": {
                "local": {
                    "user": {"requests_per_minute": 1},
                    "users": {"bob@anl.gov": {"requests_per_minute": 3}},
                    "groups": {"climate": {"tokens_per_day": 10}},
                    "models": {"local/tiny-llama-previous": {"concurrent": 50}},
                }
            }
        }
    )
    bob = create_api_key(tmp_path / "keys.json", "bob@anl.gov", groups=["climate"])
    async with h.client:
        assert [(await chat(h)).status_code for _ in range(2)] == [200, 429]
        # Bob's own limit is 3 a minute, but his group's day budget is 10 tokens.
        refused = await chat(h, key=bob)
        assert refused.status_code == 429
        error = refused.json()["error"]
        assert "limits.clusters.local.groups.climate.tokens_per_day" in error["message"]
        assert error["scope"] == "group climate on local"
    rules = h.service.limiter.rules
    model = {c.scope: c for c in rules.counters("local", "x", "", TINY)}["local:model:" + TINY]
    # An override named by an alias applies to the model it serves.
    assert [(limit.field, limit.value) for limit in model.limits] == [("concurrent", 50)]


def test_one_thread_at_a_time_is_not_needed_for_sqlite_reservations(tmp_path: Path) -> None:
    """Reservations from several threads at once (the batch runner, the event loop) on one
    SQLite store still never pass a limit."""
    from inference_bundle.router.limits.ledger import Ledger
    from inference_bundle.router.store import open_sqlite

    ledger = Ledger(open_sqlite(tmp_path / "s.db"))
    rules = Rules(
        LimitsSettings.model_validate({"clusters": {"local": {"user": {"concurrent": 7}}}})
    )
    counters = rules.counters("local", "u", "", TINY)
    admitted = []

    def reserve(i: int) -> None:
        if ledger.reserve(f"r{i}", counters, Cost(1, 1), 60) is None:
            admitted.append(i)

    threads = [threading.Thread(target=reserve, args=(i,)) for i in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(admitted) == 7


async def test_reservations_learn_how_many_tokens_a_model_makes_of_a_prompt(
    make_harness: Callable[..., Harness],
) -> None:
    """The tiny model's template makes more tokens than the byte guess: after one answer the
    router reserves what that model really uses, so a budget is not overshot by the gap."""
    h = make_harness()
    h.endpoint.handler = answer_with_usage(prompt=40, completion=4)
    limiter = h.service.limiter
    body = {"messages": HELLO, "max_tokens": 4}
    async with h.client:
        assert (await chat(h)).status_code == 200
    limiter.update(LimitsSettings.model_validate(limits(tokens_per_day=10_000)))
    ticket = await limiter.admit(
        "r-2", "alice@anl.gov", frozenset(), "local", TINY, "/v1/chat/completions", body
    )
    assert ticket.cost is not None and ticket.cost.prompt == 40
    # A smaller ratio lowers it only slowly; a larger one is taken at once.
    limiter.calibration.learn(TINY, ticket.guessed_prompt, 10)
    assert limiter.calibration.prompt(TINY, ticket.guessed_prompt) >= 39
    limiter.calibration.learn(TINY, ticket.guessed_prompt, ticket.guessed_prompt * 5)
    assert limiter.calibration.prompt(TINY, ticket.guessed_prompt) == ticket.guessed_prompt * 5
