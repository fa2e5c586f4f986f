"""Warm schedules with an injected clock: windows in a time zone (past midnight, across
daylight saving time), the lead before a window, ensures through it, nothing after."""

from __future__ import annotations

import asyncio
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from inference_bundle.config.catalog import WarmWindow
from inference_bundle.router.errors import APIError
from inference_bundle.router.fleet.states import ModelState, ModelStatus
from inference_bundle.router.fleet.warm_schedules import (
    RETRY_S,
    WarmKeeper,
    due_window,
    occurrences,
)
from inference_bundle.router.node_envelope import Envelope, Timings
from inference_bundle.router.routes import Route
from tests.router.warm_fakes import Clock, scheduled, status, utc

pytestmark = pytest.mark.anyio
CHICAGO = ZoneInfo("America/Chicago")
WEEKDAYS = {"days": ["mon", "tue", "wed", "thu", "fri"], "from": "08:00", "to": "18:00"}
# Monday 7 December 2026, 08:00 in Chicago (CST, UTC-6) is 14:00 UTC.
MONDAY_OPENS = "2026-12-07T14:00:00+00:00"


def windows(*written: dict[str, Any]) -> list[WarmWindow]:
    return [WarmWindow.model_validate(w) for w in written]


def spans(schedule: list[WarmWindow], now: str, days: int = 3) -> list[tuple[str, str]]:
    found = occurrences(schedule, CHICAGO, utc(now), days=days)
    return [(o.start.isoformat(), o.end.isoformat()) for o in found]


def test_weekday_windows_in_the_cluster_time_zone() -> None:
    # From the day before Friday 11 December to the day after: Thursday and Friday only.
    assert spans(windows(WEEKDAYS), "2026-12-11T12:00:00+00:00", days=2) == [
        ("2026-12-10T14:00:00+00:00", "2026-12-11T00:00:00+00:00"),
        ("2026-12-11T14:00:00+00:00", "2026-12-12T00:00:00+00:00"),
    ]


def test_a_window_past_midnight_belongs_to_the_day_it_opens() -> None:
    friday_night = windows({"days": ["fri"], "from": "22:00", "to": "06:00"})
    # Saturday 05:00 in Chicago: Friday's window is still open (from the day before).
    saturday = "2026-12-12T11:00:00+00:00"
    assert spans(friday_night, saturday, days=1) == [
        ("2026-12-12T04:00:00+00:00", "2026-12-12T12:00:00+00:00")
    ]
    assert due_window(friday_night, CHICAGO, utc(saturday), lead_s=0) is not None
    after = utc("2026-12-12T12:00:00+00:00")  # 06:00 Saturday: closed
    assert due_window(friday_night, CHICAGO, after, lead_s=0) is None
    whole_days = windows({"from": "00:00", "to": "24:00"})
    [today] = [o for o in occurrences(whole_days, CHICAGO, after) if o.start <= after < o.end]
    assert (today.start.isoformat(), today.end.isoformat()) == (
        "2026-12-12T06:00:00+00:00",
        "2026-12-13T06:00:00+00:00",
    )


def test_windows_keep_their_wall_clock_hours_across_daylight_saving_time() -> None:
    # Chicago moves to CDT (UTC-5) on Sunday 8 March 2026 and back on Sunday 1 November.
    schedule = windows(WEEKDAYS)
    spring = dict(spans(schedule, "2026-03-06T12:00:00+00:00", days=4))
    assert "2026-03-06T14:00:00+00:00" in spring  # Friday, CST
    assert spring["2026-03-09T13:00:00+00:00"] == "2026-03-09T23:00:00+00:00"  # Monday, CDT
    autumn = dict(spans(schedule, "2026-10-30T12:00:00+00:00", days=4))
    assert "2026-10-30T13:00:00+00:00" in autumn  # Friday, CDT
    assert autumn["2026-11-02T14:00:00+00:00"] == "2026-11-03T00:00:00+00:00"  # Monday, CST
    # An opening in the hour skipped in spring is read with the offset before the change.
    skipped = windows({"days": ["sun"], "from": "02:30", "to": "04:00"})
    assert ("2026-03-08T08:30:00+00:00", "2026-03-08T09:00:00+00:00") in spans(
        skipped, "2026-03-08T12:00:00+00:00", days=1
    )


class Model:
    """The tracker's view of one model and the ensures it got, as the keeper sees them."""

    def __init__(self, clock: Clock, state: ModelState = ModelState.COLD) -> None:
        self.clock = clock
        self.current = status(state)
        self.ensured: list[float] = []
        self.fail: APIError | None = None

    def status(self, route: Route) -> ModelStatus:
        return self.current

    async def ensure(self, route: Route) -> Envelope:
        self.ensured.append(self.clock())
        if self.fail is not None:
            self.current = status(ModelState.STOPPED)
            raise self.fail
        started = self.current.state != ModelState.READY
        self.current = status(ModelState.READY, self.current.last_start_s)
        timings = Timings(start_wait_s=0.0, latency_s=0.0)
        return Envelope("test", 200, None, timings, "started" if started else "reused")


def keeper(
    clock: Clock, model: Model, keep_warm: list[dict[str, Any]], **changes: Any
) -> WarmKeeper:
    route, maintenance = scheduled(keep_warm, clock, **changes)
    return WarmKeeper([route], maintenance, model.ensure, model.status, clock=clock)


def route_of(k: WarmKeeper) -> Route:
    [route] = k.routes
    return route


async def tick_at(k: WarmKeeper, clock: Clock, iso: str) -> list[str]:
    clock.at(iso)
    sent = k.tick()
    await k.settle()
    return sent


async def test_started_ahead_of_the_window_kept_up_through_it_and_left_after() -> None:
    clock = Clock(0)
    model = Model(clock)
    k = keeper(clock, model, [WEEKDAYS], start_timeout_s=300, idle_timeout_s=600)
    # Lead: the profile's start_timeout_s (no start seen yet) and a minute: 13:54 UTC.
    assert await tick_at(k, clock, "2026-12-07T13:53:59+00:00") == []
    assert await tick_at(k, clock, "2026-12-07T13:54:00+00:00") == ["local-tiny-chat"]
    assert model.current.state == ModelState.READY
    # Up: an ensure every half idle timeout (300 s), none in between.
    assert await tick_at(k, clock, "2026-12-07T13:58:59+00:00") == []
    assert await tick_at(k, clock, "2026-12-07T13:59:00+00:00") == ["local-tiny-chat"]
    assert await tick_at(k, clock, "2026-12-07T23:59:59+00:00") == ["local-tiny-chat"]
    # 18:00 in Chicago: the window is over and the model is left to idle out.
    assert await tick_at(k, clock, "2026-12-08T00:00:00+00:00") == []
    assert await tick_at(k, clock, "2026-12-08T06:00:00+00:00") == []
    assert len(model.ensured) == 3
    # Saturday and Sunday have no window.
    assert await tick_at(k, clock, "2026-12-12T15:00:00+00:00") == []


async def test_the_lead_is_the_last_start_when_one_was_seen() -> None:
    clock = Clock(0)
    model = Model(clock)
    model.current = status(ModelState.STOPPED, last_start_s=120.0)
    k = keeper(clock, model, [WEEKDAYS], start_timeout_s=1800)
    assert await tick_at(k, clock, "2026-12-07T13:56:59+00:00") == []
    assert await tick_at(k, clock, "2026-12-07T13:57:00+00:00") == ["local-tiny-chat"]


async def test_a_start_under_way_gets_no_second_task() -> None:
    clock = Clock(0)
    model = Model(clock, ModelState.STARTING)
    k = keeper(clock, model, [WEEKDAYS])
    assert await tick_at(k, clock, MONDAY_OPENS) == []
    model.current = status(ModelState.READY)  # a user's request started it
    assert await tick_at(k, clock, "2026-12-07T14:00:30+00:00") == ["local-tiny-chat"]


async def test_a_failed_start_is_tried_again_after_a_pause() -> None:
    clock = Clock(0)
    model = Model(clock)
    model.fail = APIError(502, "the endpoint failed", code="function_failed")
    k = keeper(clock, model, [WEEKDAYS])
    assert await tick_at(k, clock, MONDAY_OPENS) == ["local-tiny-chat"]
    assert model.current.state == ModelState.STOPPED
    again = clock.now + RETRY_S
    clock.now = again - 1
    assert k.tick() == []
    model.fail = None
    clock.now = again
    assert k.tick() == ["local-tiny-chat"]
    await k.settle()
    assert model.status(route_of(k)).state == ModelState.READY


async def test_no_start_that_a_maintenance_window_would_cut() -> None:
    clock = Clock(0)
    model = Model(clock)
    # Down 07:00-12:00 in Chicago that Monday: the 08:00 window waits for its end.
    down = {"start": "2026-12-07T07:00:00-06:00", "end": "2026-12-07T12:00:00-06:00", "reason": "x"}
    k = keeper(clock, model, [WEEKDAYS], maintenance=[down], start_timeout_s=300)
    assert await tick_at(k, clock, "2026-12-07T12:56:00+00:00") == []  # 300 s before it
    assert await tick_at(k, clock, MONDAY_OPENS) == []  # during it
    assert await tick_at(k, clock, "2026-12-07T18:00:00+00:00") == ["local-tiny-chat"]


async def test_endpoints_without_a_schedule_are_not_kept() -> None:
    clock = Clock(0)
    route, maintenance = scheduled([], clock)
    model = Model(clock)
    k = WarmKeeper([route], maintenance, model.ensure, model.status, clock=clock)
    assert k.routes == []
    k.start()  # nothing to run
    await k.stop()


async def test_rounds_run_in_the_background_until_stopped() -> None:
    clock = Clock(utc(MONDAY_OPENS).timestamp())
    model = Model(clock)
    route, maintenance = scheduled([WEEKDAYS], clock, idle_timeout_s=1)
    k = WarmKeeper([route], maintenance, model.ensure, model.status, clock=clock, period_s=0.01)
    k.start()
    for _ in range(200):
        if len(model.ensured) >= 2:
            break
        clock.now += 1  # past keep_up_s (the period here) each round
        await asyncio.sleep(0.01)
    await k.stop()
    assert len(model.ensured) >= 2
    count = len(model.ensured)
    clock.now += 60
    await asyncio.sleep(0.05)  # fixed: the assertion is that no round runs (an absence)
    assert len(model.ensured) == count  # stopped: no more rounds
