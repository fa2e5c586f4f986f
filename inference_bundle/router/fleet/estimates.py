"""When a waiting model should answer: the best estimate the router has, and how to say it.

Two things are known at best: the scheduler's planned start of a queued job (the job
listing's ``estimated_start``) and how long the model's last start took (the tracker's
``last_start_s``). Queued: ready at the planned start plus the last start's length (or at
the planned start, where no start was seen). Starting: ready when the last start's length has
passed since the node was held. Anything else is unknown, and callers keep their defaults.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from inference_bundle.router.fleet.states import ModelState, ModelStatus

__all__ = ["Eta", "estimate", "retry_after_s"]

# A Retry-After outside these bounds helps nobody: a client hammering, or one gone for hours.
RETRY_AFTER_MIN_S = 5
RETRY_AFTER_MAX_S = 1800


@dataclass(frozen=True)
class Eta:
    """One waiting model's estimate; every time is epoch seconds, None where unknown."""

    state: str  # the phase it was judged in: queued, starting, or the model's state
    estimated_start: float | None  # the scheduler's planned start of the model's job
    estimated_ready_at: float | None  # when the model should answer
    queue_position: int | None  # 1: the next job the scheduler plans to start in its queue
    last_start_s: float | None  # how long the model's last start took
    basis: str  # "scheduler", "last_start" or "unknown": what estimated_ready_at rests on
    now: float

    def fields(self) -> dict[str, Any]:
        """The estimate as the API shows it (error bodies, /jobs, /list-endpoints)."""
        wait = None
        if self.estimated_ready_at is not None:
            wait = max(0, math.ceil(self.estimated_ready_at - self.now))
        return {
            "estimated_start": iso(self.estimated_start),
            "estimated_ready_at": iso(self.estimated_ready_at),
            "estimated_wait_s": wait,
            "estimate_basis": self.basis,
            "queue_position": self.queue_position,
            "last_start_s": self.last_start_s,
        }

    def sentence(self) -> str:
        """What the estimate says, for messages and stream comments; "" when nothing is known."""
        parts = []
        if self.estimated_start is not None:
            place = "" if self.queue_position is None else f", {_ordinal(self.queue_position)}"
            parts.append(
                f"the scheduler expects to start it at {self._clock(self.estimated_start)} "
                f"(in {_duration(self.estimated_start - self.now)}{place} in its queue)"
            )
        if self.last_start_s is not None and self.state in ("queued", "starting"):
            parts.append(f"it took {_duration(self.last_start_s)} to start last time")
        if self.estimated_ready_at is not None:
            left = self.estimated_ready_at - self.now
            if left >= 1:
                parts.append(
                    f"expect it ready at about {self._clock(self.estimated_ready_at)} "
                    f"(in {_duration(left)})"
                )
            elif self.basis == "last_start":
                parts.append("it is taking longer than then, and should be ready soon")
            else:
                parts.append("it should be ready soon")
        return "; ".join(parts)

    def _clock(self, moment: float) -> str:
        """HH:MM UTC, with the date when it is not today's."""
        at = datetime.fromtimestamp(moment, UTC)
        if at.date() == datetime.fromtimestamp(self.now, UTC).date():
            return at.strftime("%H:%M UTC")
        return f"{at:%H:%M} UTC on {at:%b} {at.day}"


def estimate(status: ModelStatus, job: Mapping[str, Any] | None, now: float) -> Eta:
    """The best estimate for a model in ``status``, with its scheduler job where listed.

    ``job`` is a job listing entry (node_runtime.jobs): its lifecycle ``state``,
    ``estimated_start``, ``queue_position`` and ``started_at``. The router's own state
    wins where it is fresher (the executor saw the node held before the listing did).
    """
    job = job or {}
    last = status.last_start_s
    planned = _number(job.get("estimated_start"))
    position = job.get("queue_position")
    position = position if isinstance(position, int) and not isinstance(position, bool) else None
    job_state = job.get("state")
    if status.state in (ModelState.READY, ModelState.IDLE):
        return Eta(status.state.value, None, None, None, last, "unknown", now)
    # "running": the job runs but its server's state is not readable from here.
    held = job_state == "starting" or (job_state == "running" and status.state == ModelState.QUEUED)
    if status.state == ModelState.STARTING or held:
        phase = "starting"
        began = status.since if status.state == ModelState.STARTING else job.get("started_at")
        ready = None
        if last is not None:
            began = _number(began) or now
            ready = now + max(0.0, last - (now - began))
        basis = "unknown" if ready is None else "last_start"
        return Eta(phase, None, ready, None, last, basis, now)
    if status.state == ModelState.QUEUED or job_state == "queued":
        ready = None if planned is None else max(planned, now) + (last or 0.0)
        basis = "unknown" if ready is None else "scheduler"
        return Eta("queued", planned, ready, position, last, basis, now)
    return Eta(status.state.value, None, None, None, last, "unknown", now)


def retry_after_s(eta: Eta, default: int) -> int:
    """Seconds until the estimate says ready, within sane bounds; ``default`` when unknown."""
    if eta.estimated_ready_at is None:
        return default
    left = math.ceil(eta.estimated_ready_at - eta.now)
    return min(RETRY_AFTER_MAX_S, max(RETRY_AFTER_MIN_S, left))


def iso(moment: float | None) -> str | None:
    """Epoch seconds as ISO 8601 in UTC, as the API writes times."""
    return None if moment is None else datetime.fromtimestamp(moment, UTC).isoformat()


def _number(value: object) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None


def _duration(seconds: float) -> str:
    """A span as people say it: 40 s, 4 min 10 s, 2 h 5 min."""
    total = max(0, round(seconds))
    if total < 60:
        return f"{total} s"
    minutes, secs = divmod(total, 60)
    if minutes < 60:
        return f"{minutes} min" + (f" {secs} s" if secs else "")
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h" + (f" {minutes} min" if minutes else "")


def _ordinal(place: int) -> str:
    suffix = "th" if 10 <= place % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(place % 10, "th")
    return f"{place}{suffix}"
