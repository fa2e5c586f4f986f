"""Each model's last hour, minute by minute, in this router's memory: the status page's charts.

Requests, errors (5xx and 429, as the ledger counts them) and the median latency of the
answers that succeeded, one point a minute for the last ``MINUTES``, oldest first; the last
point is the minute now under way. The latencies of a minute are kept as counts in
logarithmic bins (each ``_RATIO`` wide), so a minute costs a few hundred integers at most
however busy it was, and its median is exact to within half a bin (about 2.5%).

This is one replica's view: routers behind one address each keep their own (the ledger's
last-hour totals, on the same page, are everyone's).
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

MINUTES = 60
STEP_S = 60
_RATIO = 1.05
_LOG_RATIO = math.log(_RATIO)
_SMALLEST_MS = 0.01  # latencies below this share the first bin


@dataclass
class _Minute:
    requests: int = 0
    errors: int = 0
    latency_bins: Counter[int] = field(default_factory=Counter)

    def median_ms(self) -> float | None:
        """The median latency of the minute's successful answers, in ms; None if none."""
        total = self.latency_bins.total()
        if not total:
            return None
        seen = 0
        for index in sorted(self.latency_bins):
            seen += self.latency_bins[index]
            if 2 * seen >= total:
                return round(_SMALLEST_MS * math.exp((index + 0.5) * _LOG_RATIO), 2)
        raise AssertionError("the bins add up to their total")  # pragma: no cover


def is_error(status: int) -> bool:
    """A failure on the service's side (5xx) or a refusal for a limit (429)."""
    return status >= 500 or status == 429


class MinuteSeries:
    """Per (cluster, model): the last hour's minutes, kept and read by the minute."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._models: dict[tuple[str, str], dict[int, _Minute]] = {}

    def record(self, cluster: str, model: str, status: int, latency_s: float) -> None:
        """Count one answered request in the minute now under way."""
        now_minute = self._minute_of(self._clock())
        minutes = self._models.setdefault((cluster, model), {})
        minute = minutes.get(now_minute)
        if minute is None:
            minute = minutes[now_minute] = _Minute()
            self._forget_before(minutes, now_minute - MINUTES + 1)
        minute.requests += 1
        if is_error(status):
            minute.errors += 1
        elif status < 400:
            minute.latency_bins[_bin(latency_s * 1000)] += 1

    def series(self, cluster: str, model: str) -> dict[str, Any]:
        """The model's last hour: ``start`` (the first minute's, in seconds since the epoch),
        ``step_s``, and ``requests``, ``errors``, ``median_latency_ms`` (None where a minute
        had no successful answer), ``MINUTES`` points each, oldest first."""
        now_minute = self._minute_of(self._clock())
        first = now_minute - MINUTES + 1
        minutes = self._models.get((cluster, model), {})
        points = [minutes.get(first + n) or _EMPTY for n in range(MINUTES)]
        return {
            "start": first * STEP_S,
            "step_s": STEP_S,
            "requests": [p.requests for p in points],
            "errors": [p.errors for p in points],
            "median_latency_ms": [p.median_ms() for p in points],
        }

    @staticmethod
    def _minute_of(moment: float) -> int:
        return int(moment // STEP_S)

    @staticmethod
    def _forget_before(minutes: dict[int, _Minute], first: int) -> None:
        for old in [m for m in minutes if m < first]:
            del minutes[old]


_EMPTY = _Minute()


def _bin(latency_ms: float) -> int:
    return max(0, math.floor(math.log(max(latency_ms, _SMALLEST_MS) / _SMALLEST_MS) / _LOG_RATIO))
