"""Fair sharing across router replicas, end to end: real routers, PostgreSQL, nginx, vLLM.

Two router processes (``east`` and ``west``) share one PostgreSQL database, one keys file
and one scratch root, so they share the node runtime's tiny-model server (each gets its
own connection to it once one of its own tasks reached it). The root is the session's shared
one (tests/conftest.py ``e2e_root``), whose tiny-model server is warm by now when the shared
router's modules ran first; its batch server is this module's. The module starts them once;
its tests run in order: a burst against a requests-per-second limit split across both,
nginx in front of both, the database going down and coming back, and last, one router
stopped mid-batch while the other finishes the batch.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from inference_bundle.router.auth import create_api_key
from tests.dataplane_e2e import wait_connected
from tests.e2e_router import (
    TINY,
    RunningRouter,
    start_router,
    stop_router,
    stop_servers,
)
from tests.postgres import PostgresServer
from tests.replicas import Nginx

pytestmark = pytest.mark.slow
CHAT = "/resource_server/local/vllm/v1/chat/completions"
RATE = 10  # limits.clusters.local.user.requests_per_second
BURST = 64
LIMITS_ON = {"clusters": {"local": {"user": {"requests_per_second": RATE}}}}
# A cold vLLM (interactive, then the batch one) on a loaded 2-core CPU: minutes.
COLD_S = 600
BATCH_LINES = 1200
TAKEOVER_S = 300


@pytest.fixture(scope="module")
def root(e2e_root: Path) -> Iterator[Path]:
    """The shared root; the batch server the last test starts stops after the module."""
    yield e2e_root
    stop_servers(e2e_root, roles=("batch",))


@pytest.fixture(scope="module")
def routers(root: Path, postgres_url: str) -> Iterator[tuple[RunningRouter, RunningRouter]]:
    """``east`` and ``west``: two routers on one database, limited to RATE requests a second
    per user. A test may stop one; whatever still runs is stopped after the module."""
    extra = {"store": {"url": postgres_url}, "limits": LIMITS_ON}
    started = [start_router(root, "east", wait_s=COLD_S, extra=extra)]
    try:
        started.append(start_router(root, "west", wait_s=COLD_S, extra=extra))
        yield started[0], started[1]
    finally:
        for router in reversed(started):
            if router.process.poll() is None:
                stop_router(router)


def chat(content: str = "hi") -> dict[str, Any]:
    return {"model": TINY, "messages": [{"role": "user", "content": content}], "max_tokens": 1}


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def post_chat(url: str, key: str, content: str = "hi") -> httpx.Response:
    return httpx.post(url + CHAT, json=chat(content), headers=auth(key), timeout=COLD_S)


def log_lines(router: RunningRouter) -> list[str]:
    assert router.log is not None
    return router.log.read_text(errors="replace").splitlines()


def access_record(router: RunningRouter, request_id: str) -> dict[str, Any] | None:
    for line in log_lines(router):
        if request_id in line and line.startswith("{"):
            record: dict[str, Any] = json.loads(line)
            if record.get("request_id") == request_id:
                return record
    return None


def served_by(
    routers: tuple[RunningRouter, ...], request_id: str, timeout_s: float = 20
) -> tuple[int, dict[str, Any]]:
    """Which router (its index) logged ``request_id``, and its access-log record; the
    request must be in exactly one router's log."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = [(n, access_record(r, request_id)) for n, r in enumerate(routers)]
        hits = [(n, record) for n, record in found if record is not None]
        assert len(hits) <= 1, f"request {request_id} is in several routers' logs: {hits}"
        if hits:
            return hits[0]
        assert time.monotonic() < deadline, f"request {request_id} is in no router's log"
        time.sleep(0.2)


def set_limits(router: RunningRouter, limits: dict[str, Any], timeout_s: float = 15) -> None:
    """Rewrite the router's settings file with these limits; wait until it reloaded them."""
    assert router.config is not None
    before = sum("limits reloaded from" in line for line in log_lines(router))
    settings = yaml.safe_load(router.config.read_text())
    settings["limits"] = limits
    router.config.write_text(yaml.safe_dump(settings))
    deadline = time.monotonic() + timeout_s
    while sum("limits reloaded from" in line for line in log_lines(router)) == before:
        assert time.monotonic() < deadline, f"{router.config}: limits not reloaded"
        time.sleep(0.2)


async def burst(targets: list[tuple[str, str]]) -> list[tuple[httpx.Response, float]]:
    """POST one chat to each (url, key) at once; each answer, and when it came (seconds
    from the first request)."""
    limits = httpx.Limits(max_connections=len(targets), max_keepalive_connections=0)
    async with httpx.AsyncClient(timeout=COLD_S, limits=limits) as client:
        began = time.monotonic()

        async def one(n: int, url: str, key: str) -> tuple[httpx.Response, float]:
            answer = await client.post(url + CHAT, json=chat(f"burst {n}"), headers=auth(key))
            return answer, time.monotonic() - began

        return list(await asyncio.gather(*(one(n, *target) for n, target in enumerate(targets))))


@pytest.mark.timeout(COLD_S + 300)
def test_a_burst_split_across_two_routers_gets_exactly_the_limit(
    routers: tuple[RunningRouter, RunningRouter],
) -> None:
    east, west = routers
    # Warm: the first request reaches the model's server through east's task (starting it
    # if the shared root's is not running yet); west's first reaches the same server through
    # its own task.
    for router in routers:
        answer = post_chat(router.url, router.key, "warm up")
        assert answer.status_code == 200, answer.text
    time.sleep(1.5)  # the warm-up requests leave the one-second window

    targets = [(east.url, east.key) if n % 2 == 0 else (west.url, west.key) for n in range(BURST)]
    timed = asyncio.run(burst(targets))
    answers = [answer for answer, _ in timed]
    # A refusal comes back as soon as it is decided: the last one bounds how long
    # admitting the burst took, which must stay well under the limit's one second.
    refused_in = max((at for answer, at in timed if answer.status_code == 429), default=0.0)
    took = f"all answered in {max(at for _, at in timed):.2f} s, refused in {refused_in:.2f} s"
    print(f"{BURST} requests over two routers: {took}")

    statuses = [answer.status_code for answer in answers]
    assert sorted(set(statuses)) == [200, 429], statuses
    assert statuses.count(200) == RATE, f"{statuses} ({took})"
    assert statuses.count(429) == BURST - RATE
    for answer in answers:
        if answer.status_code == 200:
            assert answer.json()["choices"][0]["message"]["role"] == "assistant"
            continue
        assert int(answer.headers["retry-after"]) >= 1, answer.headers
        error = answer.json()["error"]
        assert error["code"] == "rate_limit_exceeded", error
        assert error["limit"] == "requests_per_second", error
        assert "requests_per_second" in error["message"], error
        assert "limits.clusters.local.user.requests_per_second" in error["message"], error
    # Both routers refused some: the limit held across them, not per router.
    refused_by = {n % 2 for n, answer in enumerate(answers) if answer.status_code == 429}
    assert refused_by == {0, 1}


@pytest.mark.timeout(300)
def test_nginx_alternates_between_routers_that_both_reach_the_warm_model_directly(
    routers: tuple[RunningRouter, RunningRouter],
) -> None:
    # Each router has had a task reach the server (the test above): each gets its own
    # connection from it.
    for router in routers:
        wait_connected(router.url, router.key, TINY, timeout_s=120)
    time.sleep(1.5)  # out of the earlier requests' one-second window
    east = routers[0]
    with Nginx([router.url for router in routers]) as proxy:
        answers = [post_chat(proxy.url, east.key, f"through nginx {n}") for n in range(8)]
    assert [a.status_code for a in answers] == [200] * 8, [a.text for a in answers]
    seen = [served_by(routers, a.headers["x-request-id"]) for a in answers]
    owners = [n for n, _ in seen]
    assert sorted(owners) == [0, 0, 0, 0, 1, 1, 1, 1], owners
    assert all(a != b for a, b in zip(owners, owners[1:], strict=False)), owners
    assert [record["via"] for _, record in seen] == ["connection"] * 8, seen
    for router in routers:
        assert len(wait_connected(router.url, router.key, TINY)) >= 1


@pytest.mark.timeout(300)
def test_a_database_that_is_down_is_a_503_and_usage_is_counted_once_when_it_is_back(
    routers: tuple[RunningRouter, RunningRouter], root: Path, postgres: PostgresServer
) -> None:
    east = routers[0]
    carol = create_api_key(root / ".state" / "keys.json", "carol@fair-sharing")
    time.sleep(1.5)  # out of the earlier requests' one-second rate window (time, not a state)
    postgres.stop()
    try:
        # Limits on: admitting the request needs the database.
        refused = post_chat(east.url, carol, "while the database is down")
        assert refused.status_code == 503, refused.text
        assert refused.json()["error"]["code"] == "store_unavailable", refused.text
        assert refused.headers.get("retry-after"), refused.headers

        # Limits off: the request is answered; its usage record waits for the database.
        set_limits(east, {})
        answered = post_chat(east.url, carol, "answered while the database is down")
        assert answered.status_code == 200, answered.text
        usage = answered.json()["usage"]
        # /health says so, with the records that wait (it makes no database call itself).
        deadline = time.monotonic() + 20
        while "store" not in (health := httpx.get(east.url + "/health", timeout=10).json()):
            assert time.monotonic() < deadline, health
            time.sleep(0.3)
        assert health["store"]["status"] == "unavailable", health
        assert health["store"]["usage_records_waiting"] >= 1, health
    finally:
        postgres.start()

    def carols_usage() -> list[dict[str, Any]]:
        got = httpx.get(east.url + "/v1/usage?by=user", headers=auth(carol), timeout=30)
        assert got.status_code in (200, 503), got.text
        return list(got.json()["data"]) if got.status_code == 200 else []

    deadline = time.monotonic() + 20
    while not (rows := carols_usage()):
        assert time.monotonic() < deadline, "the usage queued while the database was down was lost"
        time.sleep(0.5)
    time.sleep(3)  # several more flush passes: a retried write must not count it again
    rows = carols_usage()
    assert rows == [
        {
            "user": "carol@fair-sharing",
            "requests": 1,
            "prompt_tokens": usage["prompt_tokens"],
            "completion_tokens": usage["completion_tokens"],
            "total_tokens": usage["prompt_tokens"] + usage["completion_tokens"],
        }
    ], rows


def batch_line(n: int) -> str:
    body = {
        "model": TINY,
        "messages": [{"role": "user", "content": f"Count to {n}:"}],
        "max_tokens": 8,
        "temperature": 0,
    }
    line = {"custom_id": f"req-{n}", "method": "POST", "url": "/v1/chat/completions"}
    return json.dumps({**line, "body": body}) + "\n"


@pytest.mark.timeout(COLD_S + 300)
def test_stopping_the_router_that_runs_a_batch_loses_none_of_it(
    routers: tuple[RunningRouter, RunningRouter],
) -> None:
    east, west = routers
    client = east.client("/v1")
    data = "".join(batch_line(n) for n in range(BATCH_LINES)).encode()
    uploaded = client.files.create(file=("handover.jsonl", data), purpose="batch")
    batch = client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    # Its job writes each answer to the batch's output file as it comes.
    output = Path(
        httpx.get(f"{east.url}/v1/batches/{batch.id}", headers=auth(east.key)).json()[
            "output_file_path"
        ]
    )
    deadline = time.monotonic() + COLD_S
    while not (output.exists() and output.read_text()):
        assert time.monotonic() < deadline, client.batches.retrieve(batch.id)
        time.sleep(0.1)
    began = time.monotonic()
    stop_router(east)  # SIGTERM mid-batch
    cut = len(output.read_text().splitlines())
    print(f"east stopped in {time.monotonic() - began:.1f} s, after {cut} of {BATCH_LINES} lines")
    assert 0 < cut < BATCH_LINES, "the batch ended before its router stopped"

    other = west.client("/v1")
    # West takes the batch over within a watch pass; the batch server is warm by now.
    deadline = time.monotonic() + TAKEOVER_S
    while (found := other.batches.retrieve(batch.id)).status not in (
        "completed",
        "failed",
        "cancelled",
        "expired",
    ):
        assert time.monotonic() < deadline, found
        time.sleep(0.5)
    print(f"west finished the batch {time.monotonic() - began:.1f} s after east was stopped")
    assert found.status == "completed", found
    assert found.request_counts is not None
    assert (found.request_counts.completed, found.request_counts.failed) == (BATCH_LINES, 0)
    assert found.output_file_id is not None
    answers = [json.loads(x) for x in other.files.content(found.output_file_id).text.splitlines()]
    ids = [answer["custom_id"] for answer in answers]
    assert len(ids) == len(set(ids)) == BATCH_LINES
    assert set(ids) == {f"req-{n}" for n in range(BATCH_LINES)}
    assert all(answer["response"]["status_code"] == 200 for answer in answers)
