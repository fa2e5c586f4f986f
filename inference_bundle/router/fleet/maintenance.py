"""Maintenance windows (a cluster profile's ``maintenance``): which starts they refuse, and
what users and the status page are told.

During a window every start through a task is refused; before it, a cold start is refused
when it could not finish before the window begins (now + the model's expected start time).
A model whose server is connected keeps answering over its connection until the cluster
takes it down. Refusals are 503s with code ``maintenance`` that say when service resumes,
in UTC and in the cluster's time zone.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from inference_bundle.config.profiles import ClusterProfile
from inference_bundle.router.errors import APIError
from inference_bundle.router.fleet.states import ModelState, ModelStatus
from inference_bundle.router.routes import Route

# The states in which a task would start the model's server (as StateTracker.begin counts).
COLD_STATES = (ModelState.COLD, ModelState.STOPPED)


@dataclass(frozen=True)
class Window:
    """One maintenance window, in UTC, and the moment service comes back after it (the end
    of the run of windows that touch or overlap it)."""

    start: datetime
    end: datetime
    reason: str
    resumes_at: datetime

    def active(self, now: datetime) -> bool:
        return self.start <= now < self.end


def windows(profile: ClusterProfile) -> list[Window]:
    """The profile's windows in UTC, by start, each with when service resumes."""
    spans = sorted(
        (w.start.astimezone(UTC), w.end.astimezone(UTC), w.reason) for w in profile.maintenance
    )
    found = []
    for i, (start, end, reason) in enumerate(spans):
        resumes = end
        for later_start, later_end, _ in spans[i + 1 :]:
            if later_start > resumes:
                break
            resumes = max(resumes, later_end)
        found.append(Window(start, end, reason, resumes))
    return found


def current_or_next(profile: ClusterProfile, now: datetime) -> Window | None:
    """The window under way at ``now``, else the next one to begin; None if none is ahead."""
    ahead = [w for w in windows(profile) if w.end > now]
    active = [w for w in ahead if w.active(now)]
    return next(iter(active or ahead), None)


def maintenance_notice(profile: ClusterProfile, now: datetime) -> dict[str, Any] | None:
    """What the status page and the listings show of a cluster's current or next window.

    {"start", "end", "resumes_at"} in UTC (ISO 8601), the same three "..._local" in the
    cluster's time zone, "timezone", "reason", and "active" (whether it is under way).
    """
    window = current_or_next(profile, now)
    if window is None:
        return None
    zone = profile.zone
    return {
        "start": _iso(window.start),
        "end": _iso(window.end),
        "resumes_at": _iso(window.resumes_at),
        "start_local": window.start.astimezone(zone).isoformat(),
        "end_local": window.end.astimezone(zone).isoformat(),
        "resumes_at_local": window.resumes_at.astimezone(zone).isoformat(),
        "timezone": profile.timezone,
        "reason": window.reason,
        "active": window.active(now),
    }


@dataclass
class Maintenance:
    """Every served cluster's profile, read for its windows and time zone."""

    profiles: Mapping[str, ClusterProfile]
    clock: Callable[[], float] = time.time

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.clock(), UTC)

    def expected_start_s(self, route: Route, status: ModelStatus) -> float:
        """How long a cold start of the route's model is expected to take: as long as its
        last one (the tracker's ``last_start_s``), else its spec's ``start_timeout_s`` (the
        endpoint's own, or its profile's)."""
        if status.last_start_s is not None:
            return status.last_start_s
        return route.spec.start_timeout_s

    def notice(self, cluster: str, now: datetime | None = None) -> dict[str, Any] | None:
        """The cluster's current or next window for the status page (``maintenance_notice``)."""
        profile = self.profiles.get(cluster)
        return None if profile is None else maintenance_notice(profile, now or self.now())

    def refusal(self, route: Route, status: ModelStatus, now: datetime) -> APIError | None:
        """The 503 for a task the route would run at ``now``; None if it may run."""
        profile = self.profiles.get(route.cluster)
        if profile is None:
            return None
        window = current_or_next(profile, now)
        if window is None:
            return None
        if window.active(now):
            return _refused(route, profile, window, now, during=True)
        expected = self.expected_start_s(route, status)
        if status.state in COLD_STATES and now.timestamp() + expected > window.start.timestamp():
            return _refused(route, profile, window, now, during=False, expected_s=expected)
        return None

    def check_start(self, route: Route, status: ModelStatus) -> None:
        """Raise the maintenance 503 for a task that a window forbids now."""
        refused = self.refusal(route, status, self.now())
        if refused is not None:
            raise refused


def _refused(
    route: Route,
    profile: ClusterProfile,
    window: Window,
    now: datetime,
    during: bool,
    expected_s: float = 0.0,
) -> APIError:
    cluster, reason = route.cluster, window.reason
    resumes = _when(window.resumes_at, profile)
    if during:
        message = (
            f"{cluster} is down for maintenance ({reason}) until {resumes}; the model "
            f"'{route.model}' cannot start before then. Try again after {resumes}."
        )
    else:
        message = (
            f"{cluster} goes down for maintenance ({reason}) at {_when(window.start, profile)}; "
            f"the model '{route.model}' is not running, and a start (about "
            f"{_duration(expected_s)}) could not finish before then, so it is not started. "
            f"Service resumes at {resumes}."
        )
    retry = max(1, int((window.resumes_at - now).total_seconds()))
    return APIError(
        503,
        message,
        type="server_error",
        code="maintenance",
        headers={"Retry-After": str(retry)},
        extra={
            "resumes_at": _iso(window.resumes_at),
            "resumes_at_local": window.resumes_at.astimezone(profile.zone).isoformat(),
            "maintenance": {
                "start": _iso(window.start),
                "end": _iso(window.end),
                "reason": reason,
            },
        },
    )


def _when(moment: datetime, profile: ClusterProfile) -> str:
    """ "2026-12-15 22:00 UTC (16:00 CST, America/Chicago)": UTC, then the site's time."""
    utc = moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")
    if profile.timezone == "UTC":
        return utc
    local = moment.astimezone(profile.zone)
    day = "" if local.date() == moment.astimezone(UTC).date() else local.strftime("%Y-%m-%d ")
    return f"{utc} ({day}{local.strftime('%H:%M %Z')}, {profile.timezone})"


def _duration(seconds: float) -> str:
    minutes = round(seconds / 60)
    return f"{round(seconds)} s" if minutes < 2 else f"{minutes} min"


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")
