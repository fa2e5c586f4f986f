"""Fair when full: a light user beside a heavy one, equal shares, classes, and the bounds.

The real router (on uvicorn, its data plane and admission) and the real dial-out agent, in
front of a stand-in server of fixed capacity (tests/router/stand_in_nodes.py: 2 requests at
once, each about ``service_s`` long, first come first served as vLLM is), so that what is asserted
hangs on the router's queue and not on this machine's two cores. The endpoint's
target_in_flight is 2 (tests/router/scaled_router.py): the server's whole capacity.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest

from inference_bundle.router.auth import create_api_key
from tests.router.scaled_router import CHAT, ENDPOINT, TINY, Scaled, scaled
from tests.waiting import until

pytestmark = [pytest.mark.anyio, pytest.mark.slow, pytest.mark.timeout(120)]

BODY = {"model": TINY, "messages": [{"role": "user", "content": "hi"}]}


async def ready(s: Scaled) -> None:
    await until(lambda: len(s.connected()) == 1, "the stand-in connected", 30)


def client(s: Scaled, key: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=s.url, headers={"Authorization": f"Bearer {key}"}, timeout=60)


async def timed(c: httpx.AsyncClient, body: dict[str, Any] = BODY) -> float:
    began = time.monotonic()
    answer = await c.post(CHAT, json=body)
    assert answer.status_code == 200, answer.text
    return time.monotonic() - began


async def loop(c: httpx.AsyncClient, until_t: float, answered: Counter[str], who: str) -> None:
    """One request after another until ``until_t``; each answer counted for ``who``."""
    while time.monotonic() < until_t:
        answer = await c.post(CHAT, json=BODY)
        assert answer.status_code == 200, answer.text
        answered[who] += 1


def key_for(tmp_path: Path, user: str) -> str:
    return create_api_key(tmp_path / "keys.json", user)


async def test_a_light_user_waits_for_a_place_not_for_a_heavy_users_backlog(
    tmp_path: Path,
) -> None:
    async with scaled(tmp_path, {"min": 1, "max": 1}, service_s=0.2, jitter=0.25) as s:
        await ready(s)
        light_key = key_for(tmp_path, "light@anl.gov")
        async with client(s, s.key) as heavy, client(s, light_key) as light:
            alone = statistics.median([await timed(light) for _ in range(15)])
            end = time.monotonic() + 6
            answered: Counter[str] = Counter()
            loading = [asyncio.create_task(loop(heavy, end, answered, "heavy")) for _ in range(64)]
            await until(lambda: s.service.dispatcher.admission.waiting(ENDPOINT) >= 50, "backlog")
            loaded = []
            while time.monotonic() < end - 0.5:
                loaded.append(await timed(light))
            await asyncio.gather(*loading)
        # 62 of the heavy user's requests wait at any time; the light user's each wait for
        # the next place to free (0.05 s on average), not behind them (62 / 2 × 0.2 s = 6 s).
        assert statistics.median(loaded) <= 2 * alone, (alone, loaded)
        assert answered["heavy"] > 40


async def test_two_users_of_equal_demand_get_equal_shares(tmp_path: Path) -> None:
    async with scaled(tmp_path, {"min": 1, "max": 1}, service_s=0.1) as s:
        await ready(s)
        other_key = key_for(tmp_path, "bob@anl.gov")
        answered: Counter[str] = Counter()
        async with client(s, s.key) as a, client(s, other_key) as b:
            end = time.monotonic() + 5
            await asyncio.gather(
                *(loop(a, end, answered, "alice") for _ in range(32)),
                *(loop(b, end, answered, "bob") for _ in range(32)),
            )
        low, high = sorted(answered.values())
        assert low + high > 60 and (high - low) / high <= 0.10, answered
        shares = s.service.dispatcher.admission.describe(ENDPOINT, lambda user: True)["shares"]
        assert abs(shares["alice@anl.gov"] - shares["bob@anl.gov"]) <= 0.10, shares


async def test_a_higher_class_goes_first(tmp_path: Path) -> None:
    classes = {"classes": {"users": {"vip@anl.gov": 1}}}
    async with scaled(tmp_path, {"min": 1, "max": 1}, service_s=0.1, queue=classes) as s:
        await ready(s)
        vip_key = key_for(tmp_path, "vip@anl.gov")
        answered: Counter[str] = Counter()
        async with client(s, s.key) as plain, client(s, vip_key) as vip:
            end = time.monotonic() + 4
            await asyncio.gather(
                *(loop(plain, end, answered, "plain") for _ in range(16)),
                *(loop(vip, end, answered, "vip") for _ in range(16)),
            )
        # The plain user gets a place only while none of the vip's requests waits.
        assert answered["vip"] >= 4 * answered["plain"], answered


async def test_bounds_a_waiting_stream_and_a_client_that_leaves(tmp_path: Path) -> None:
    bounds = {"max_waiting_per_user": 3, "max_queue_wait_s": 1.0}
    async with scaled(tmp_path, {"min": 1, "max": 1}, service_s=1.5, queue=bounds) as s:
        await ready(s)
        admission = s.service.dispatcher.admission
        async with client(s, s.key) as c:
            # Two take the places (1.5 s each), three wait, the sixth is turned away.
            sent = [asyncio.create_task(c.post(CHAT, json=BODY)) for _ in range(5)]
            await until(lambda: admission.waiting(ENDPOINT) == 3, "three waiting")
            refused = await c.post(CHAT, json=BODY)
            assert refused.status_code == 429
            error = refused.json()["error"]
            assert error["code"] == "model_saturated" and error["limit"] == (
                "queue.max_waiting_per_user"
            )
            assert int(refused.headers["Retry-After"]) >= 1
            statuses = sorted(a.status_code for a in await asyncio.gather(*sent))
            # The three waited past max_queue_wait_s (1 s) before a place freed (1.5 s).
            assert statuses == [200, 200, 503, 503, 503]
            late = [a for a in (t.result() for t in sent) if a.status_code == 503][0]
            assert late.json()["error"]["code"] == "queue_timeout"
            assert "queue.max_queue_wait_s is 1" in late.json()["error"]["message"]

            # A stream that finds the model full begins at once and says its place.
            busy = [asyncio.create_task(c.post(CHAT, json=BODY)) for _ in range(2)]
            await until(lambda: s.nodes.nodes[0].server.in_flight == 2, "both places taken")
            async with c.stream("POST", CHAT, json={**BODY, "stream": True}) as stream:
                first = await anext(stream.aiter_text())
                assert first.startswith(f": {TINY} is full; place 1 of 1 waiting"), first
                assert admission.waiting(ENDPOINT) == 1
            # Its client left: its place in line is given up at once.
            await until(lambda: admission.waiting(ENDPOINT) == 0, "the queue empty", 1)
            await asyncio.gather(*busy)
