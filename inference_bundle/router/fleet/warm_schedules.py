"""Models kept warm on a schedule (an endpoint's ``keep_warm``, in its cluster's time zone).

Every ``period_s`` the keeper looks at each enabled endpoint with a schedule. Ahead of a
window (by the model's expected start time, router.fleet.maintenance) and through it, it sends the
task a cold stream sends first (``Dispatcher.ensure``: start the server, or find it up, and
send it nothing). That task also holds the server's in-flight marker, which stamps its last
use, so an ensure every ``keep_up_s`` (half the model's idle timeout, at most 30 min) keeps
both the server and its scheduler job from idling out. After the window the keeper sends
nothing, and the model idles out as any other. A start a maintenance window would cut is not
attempted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from inference_bundle.config.catalog import WEEKDAYS, WarmWindow
from inference_bundle.router.errors import APIError
from inference_bundle.router.fleet.maintenance import COLD_STATES, Maintenance
from inference_bundle.router.fleet.states import ModelState, ModelStatus
from inference_bundle.router.node_envelope import Envelope
from inference_bundle.router.routes import Route

__all__ = ["Occurrence", "WarmKeeper", "occurrences"]

PERIOD_S = 30.0
# Started this much earlier than the expected start time asks: a round of the keeper and
# the travel of the task.
LEAD_MARGIN_S = 60.0
KEEP_UP_MAX_S = 1800.0
# A model found not started this long after its last ensure is tried again (each try may
# be a scheduler job, and a failing start should not be one every round).
RETRY_S = 300.0
STARTING = (ModelState.QUEUED, ModelState.STARTING)

Ensure = Callable[[Route], Awaitable[Envelope]]
StatusOf = Callable[[Route], ModelStatus]

log = logging.getLogger("router.warmth")


@dataclass(frozen=True)
class Occurrence:
    """One day's window, in UTC."""

    start: datetime
    end: datetime


def occurrences(
    schedule: Iterable[WarmWindow], zone: ZoneInfo, now: datetime, days: int = 8
) -> Iterator[Occurrence]:
    """The schedule's windows from the day before ``now`` (one may run past midnight) on.

    Times are the site's wall-clock times, so a window keeps its hours across a change of
    daylight saving time (its UTC times move). A time that does not exist that day (in the
    hour skipped in spring) is read with the offset before the change.
    """
    today = now.astimezone(zone).date()
    for offset in range(-1, days):
        day = today + timedelta(days=offset)
        for window in schedule:
            if WEEKDAYS[day.weekday()] not in window.days:
                continue
            closes_on = day + timedelta(days=1) if window.closes_next_day else day
            start = datetime.combine(day, window.opening, tzinfo=zone)
            end = datetime.combine(closes_on, window.closing, tzinfo=zone)
            yield Occurrence(start.astimezone(UTC), end.astimezone(UTC))


def due_window(
    schedule: Sequence[WarmWindow], zone: ZoneInfo, now: datetime, lead_s: float
) -> Occurrence | None:
    """The window that wants the model up at ``now`` (under way, or starting within
    ``lead_s``); None outside every window and its lead."""
    lead = timedelta(seconds=lead_s)
    due = [o for o in occurrences(schedule, zone, now) if o.start - lead <= now < o.end]
    return min(due, key=lambda o: o.start, default=None)


class WarmKeeper:
    """Sends ensure tasks for the endpoints whose schedules want them up."""

    def __init__(
        self,
        routes: Iterable[Route],
        maintenance: Maintenance,
        ensure: Ensure,
        status: StatusOf,
        clock: Callable[[], float] = time.time,
        period_s: float = PERIOD_S,
    ) -> None:
        self.routes = [r for r in routes if r.entry.endpoint.enabled and r.entry.endpoint.keep_warm]
        self.maintenance = maintenance
        self.ensure = ensure
        self.status = status
        self.clock = clock
        self.period_s = period_s
        self._running: dict[str, asyncio.Task[None]] = {}
        self._last_sent: dict[str, float] = {}
        self._loop: asyncio.Task[None] | None = None

    def lead_s(self, route: Route, status: ModelStatus) -> float:
        """How long before a window the model is started."""
        return self.maintenance.expected_start_s(route, status) + LEAD_MARGIN_S

    def keep_up_s(self, route: Route) -> float:
        """How often a warm model gets an ensure: well within its idle timeout."""
        return max(self.period_s, min(route.spec.idle_timeout_s / 2, KEEP_UP_MAX_S))

    def wants_ensure(self, route: Route, now: float) -> Occurrence | None:
        """The window ``route`` should get an ensure task for at ``now``; None: no task."""
        key = route.endpoint_name
        status = self.status(route)
        if key in self._running or status.state in STARTING:
            return None  # a start is under way: its own task carries it
        profile = self.maintenance.profiles[route.cluster]
        moment = datetime.fromtimestamp(now, UTC)
        schedule = route.entry.endpoint.keep_warm
        window = due_window(schedule, profile.zone, moment, self.lead_s(route, status))
        if window is None or self.maintenance.refusal(route, status, moment) is not None:
            return None
        last = self._last_sent.get(key)
        if last is None:
            return window
        if status.state in COLD_STATES:  # not started, or its start failed: retry, not at once
            return window if now - last >= RETRY_S else None
        return window if now - last >= self.keep_up_s(route) else None

    def tick(self) -> list[str]:
        """One round: send the ensures due now; the endpoints they went to."""
        now = self.clock()
        sent = []
        for route in self.routes:
            window = self.wants_ensure(route, now)
            if window is None:
                continue
            key = route.endpoint_name
            if self.status(route).state in COLD_STATES:
                log.info(
                    "starting %s for its keep_warm window %s to %s UTC",
                    key,
                    f"{window.start:%Y-%m-%d %H:%M}",
                    f"{window.end:%Y-%m-%d %H:%M}",
                )
            self._last_sent[key] = now
            self._running[key] = asyncio.create_task(self._ensure(route))
            sent.append(key)
        return sent

    async def _ensure(self, route: Route) -> None:
        key = route.endpoint_name
        try:
            envelope = await self.ensure(route)
        except APIError as err:
            if err.code != "model_not_ready":  # that one: still starting, its task goes on
                log.warning("keeping %s warm: %s", key, err.message)
        except Exception as err:
            log.warning("keeping %s warm: %s", key, err)
        else:
            if envelope.server == "started":
                log.info("started %s for its keep_warm window", key)
        finally:
            self._running.pop(key, None)

    async def settle(self) -> None:
        """Wait for the ensures in flight (tests)."""
        await asyncio.gather(*self._running.values(), return_exceptions=True)

    def start(self) -> None:
        """Run a round every ``period_s`` in the background (nothing when no route has a
        schedule)."""
        if self.routes and self._loop is None:
            self._loop = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            try:
                self.tick()
            except Exception:
                log.exception("warm schedule round failed")
            await asyncio.sleep(self.period_s)

    async def stop(self) -> None:
        """Stop the rounds and the ensures in flight (their tasks go on at the endpoints)."""
        tasks = [t for t in [self._loop, *self._running.values()] if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._loop = None
