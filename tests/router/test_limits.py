"""Fair sharing on the request path: reserve before dispatch, settle with the backend's usage.

The router runs in-process over a scripted endpoint (the task path) and its SQLite store;
tests/router/test_fair_sharing_e2e.py runs the same over PostgreSQL with two routers.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from inference_bundle.config.problems import SettingsError
from inference_bundle.config.settings import LimitsSettings, load_settings
from inference_bundle.router.auth import create_api_key
from inference_bundle.router.limits.limiter import Usage
from inference_bundle.router.limits.reload import LimitsConfigError
from inference_bundle.router.limits.rules import Cost, Rules, estimate
from tests.router.conftest import ROOT, Harness, envelope

pytestmark = pytest.mark.anyio
TINY = "local/tiny-llama"
HELLO = [{"role": "user", "content": "hello"}]
URL = "/resource_server/local/vllm/v1/chat/completions"


def limits(**user: Any) -> dict[str, Any]:
    return {"clusters": {"local": {"user": user}}}


def answer_with_usage(prompt: int, completion: int) -> Callable[..., dict[str, Any]]:
    def handler(spec: dict[str, Any], request: dict[str, Any]) -> dict[str, Any]:
        return envelope(
            200,
            {
                "id": "chatcmpl-1",
                "object": "chat.completion",
                "model": spec["name"],
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}}],
                "usage": {
                    "prompt_tokens": prompt,
                    "completion_tokens": completion,
                    "total_tokens": prompt + completion,
                },
            },
        )

    return handler


async def chat(h: Harness, max_tokens: int = 4, key: str | None = None) -> httpx.Response:
    body = {"model": TINY, "messages": HELLO, "max_tokens": max_tokens}
    auth = {"Authorization": f"Bearer {key}"} if key else h.auth
    return await h.client.post(URL, json=body, headers=auth)


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


async def test_limits_in_the_settings_file_are_reloaded_and_a_bad_file_keeps_them(
    tmp_path: Path, make_harness: Callable[..., Harness], caplog: pytest.LogCaptureFixture
) -> None:
    from inference_bundle.router.limits.reload import LimitsWatcher

    h = make_harness(limits=limits(requests_per_minute=1))
    config = tmp_path / "router.yaml"
    data = {
        "clusters": ["local", "sophia"],
        "executor": "engine",
        "state_dir": str(tmp_path / "router"),
        "auth": {"mode": "keys", "keys_file": str(tmp_path / "keys.json")},
        "limits": limits(requests_per_minute=5),
    }
    config.write_text(yaml.safe_dump(data))
    h.service.config_path = config
    watcher = LimitsWatcher(h.service)
    assert watcher.reload()
    assert h.service.limiter.rules.settings.clusters["local"].user.requests_per_minute == 5
    config.write_text(yaml.safe_dump({**data, "limits": limits(requests_per_minute=-1)}))
    assert not watcher.reload()
    assert "limits.clusters.local.user.requests_per_minute" in caplog.text
    assert h.service.limiter.rules.settings.clusters["local"].user.requests_per_minute == 5
    config.write_text(
        yaml.safe_dump({**data, "limits": {"clusters": {"local": {"models": {"nope": {}}}}}})
    )
    assert not watcher.reload()
    assert "limits.clusters.local.models.nope" in caplog.text


def test_bad_limits_name_the_file_and_the_field(tmp_path: Path) -> None:
    config = tmp_path / "router.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "clusters": ["local"],
                "executor": "engine",
                "auth": {"mode": "keys"},
                "limits": {"clusters": {"local": {"user": {"requests_per_secnd": 10}}}},
            }
        )
    )
    with pytest.raises(SettingsError) as raised:
        load_settings(config, tmp_path)
    shown = [str(p) for p in raised.value.problems]
    assert any("limits.clusters.local.user.requests_per_secnd" in p for p in shown), shown
    assert all("router.yaml" in p for p in shown)


def test_limits_for_a_cluster_or_model_not_served_are_refused(tmp_path: Path) -> None:
    from inference_bundle.router.service import build_service
    from tests.router.conftest import settings

    for bad, field in [
        ({"clusters": {"polaris": {}}}, "limits.clusters.polaris"),
        ({"clusters": {"local": {"models": {"gpt-5": {}}}}}, "limits.clusters.local.models.gpt-5"),
    ]:
        with pytest.raises(LimitsConfigError, match=field):
            build_service(settings(tmp_path, limits=bad), ROOT, config_path=tmp_path / "r.yaml")


def test_the_estimate_covers_text_choices_and_non_text_parts() -> None:
    settings = LimitsSettings(prompt_bytes_per_token=2, default_max_tokens=100)
    chat = estimate(
        "/v1/chat/completions", {"messages": [{"role": "user", "content": "x" * 40}]}, settings
    )
    assert chat == Cost(prompt=(40 + len("user")) // 2 + 8, completion=100)  # values, not keys
    assert estimate(
        "/v1/completions", {"prompt": [1, 2, 3], "max_tokens": 5, "n": 2}, settings
    ) == Cost(3, 10)
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64," + "A" * 10**6}}
    vision = estimate(
        "/v1/chat/completions",
        {"messages": [{"role": "user", "content": [image]}], "max_tokens": 1},
        settings,
    )
    assert vision.prompt < 2000  # an image is not its base64 text
    assert estimate("/v1/embeddings", {"input": ["ab", "cd"]}, settings) == Cost(2, 0)


def test_a_caller_is_charged_to_the_group_with_limits_of_its_own() -> None:
    rules = Rules(
        LimitsSettings.model_validate(
            {"clusters": {"local": {"groups": {"climate": {"tokens_per_day": 5}}}}}
        )
    )
    assert rules.group_of("local", frozenset({"aaa", "climate"})) == "climate"
    assert rules.group_of("local", frozenset({"zeta", "beta"})) == "beta"
    assert rules.group_of("local", frozenset()) == ""
    assert not Rules(LimitsSettings()).active


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
        await asyncio.sleep(0.3)
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


def test_the_usage_tap_reads_the_last_chunk_and_drops_it_unless_asked() -> None:
    from inference_bundle.router.api.streams import UsageTap

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
