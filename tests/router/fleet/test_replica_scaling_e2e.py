"""Replicas grown and shrunk by demand, rotated before walltime, replaced when lost.

The real router (on uvicorn, its data plane and replica control) and the real dial-out
agent; behind them stand-in nodes of fixed capacity (tests/router/stand_in_nodes.py), so
that what is asserted does not hang on this machine's two cores. Each node takes
``START_S`` to start, as a job and a server load would.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from inference_bundle.router.fleet.replicas import Phase
from tests.router.scaled_router import START_S, WINDOW_S, scaled
from tests.waiting import until

pytestmark = [pytest.mark.anyio, pytest.mark.slow, pytest.mark.timeout(120)]


async def test_a_load_step_brings_replicas_and_its_end_lets_them_go(tmp_path: Path) -> None:
    async with scaled(tmp_path, {"min": 0, "max": 3}) as s:
        # Six users on servers that each run two at once, target 2: three replicas.
        began = time.monotonic()
        loading = asyncio.create_task(s.load(users=6, seconds=9))
        await until(lambda: s.phases() == ["ready"] * 3, lambda: f"3 ready: {s.phases()}", 30)
        grown = time.monotonic() - began
        # The first start (cold, by the first request), then two more: each at most its
        # start plus the window after the demand called for it (plus the checks' pace).
        assert grown <= 3 * (START_S + WINDOW_S) + 2, grown
        await loading
        assert s.failures == [] and len(s.answers) > 30
        # Every replica served; no more were asked for than the demand needed.
        assert sorted(s.nodes.engines) == [0, 1, 2]
        assert all(node.server.served > 0 for node in s.nodes.nodes)
        assert s.changes("out", "demand") == 2
        # Quiet: drained and stopped down to one (scale_in_idle_s 2, one at a time).
        await until(lambda: len(s.nodes.live()) == 1, lambda: f"one left: {s.phases()}", 30)
        await until(lambda: s.phases() == ["ready"], lambda: f"stopped: {s.phases()}", 5)
        assert s.changes("drain", "idle") == 2 and s.changes("in", "idle") == 2
        assert {n.how for n in s.nodes.nodes if n.stopped_at} == {"stopped"}


async def test_a_replica_on_its_way_holds_the_demand_it_was_asked_for(tmp_path: Path) -> None:
    # Three users: one replica more covers them. Its start (4 s) spans eight windows.
    async with scaled(tmp_path, {"min": 0, "max": 4}) as s:
        s.nodes.start_s = 4.0
        await s.load(users=3, seconds=7)
        assert s.failures == []
        assert sorted(s.nodes.engines) == [0, 1], s.nodes.engines


async def test_a_lost_node_fails_only_its_own_requests(tmp_path: Path) -> None:
    async with scaled(tmp_path, {"min": 2, "max": 2}, service_s=0.5) as s:
        await until(lambda: s.phases() == ["ready", "ready"], lambda: f"2: {s.phases()}", 30)
        await until(lambda: len(s.connected()) == 2, "two connections")
        loading = asyncio.create_task(s.load(users=4, seconds=6, stream_every=2))
        await asyncio.sleep(2)
        [victim, _] = s.nodes.live()
        in_flight = victim.server.in_flight
        s.nodes.kill(victim)
        await loading
        # Only what ran on the dead node failed; the other took the load, and min brought
        # a replacement.
        assert len(s.failures) <= in_flight, (s.failures, in_flight)
        assert len(s.answers) - len(s.failures) > 20
        await until(lambda: s.phases() == ["ready", "ready"], lambda: f"2: {s.phases()}", 30)
        assert s.changes("lost", "lost") == 1 and s.changes("out", "min") == 3
        s.failures.clear()
        await s.load(users=4, seconds=2)
        assert s.failures == []


async def test_walltime_is_a_non_event(tmp_path: Path) -> None:
    # Nodes end 8 s after they start, as the scheduler would end the job: each replica gets
    # a successor about 1 s (its start) + 1 s (the margin) before, and drains on its ready.
    async with scaled(tmp_path, {"min": 1, "max": 1}, walltime_s=8.0) as s:
        await until(lambda: s.phases() == ["ready"], lambda: f"ready: {s.phases()}", 30)
        await s.load(users=3, seconds=12)
        assert s.failures == [], s.failures
        ended = [n for n in s.nodes.nodes if n.stopped_at is not None]
        assert ended, "no rotation happened"
        # Each rotated node was stopped by the router, before the scheduler's end.
        assert {n.how for n in ended} == {"stopped"}, [(n.host, n.how) for n in ended]
        assert s.changes("out", "walltime") >= 1
        assert Phase.READY.value in s.phases()
