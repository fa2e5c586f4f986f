"""The per-minute series of each model's last hour (router.minute_series), on a clock the
test moves (fast tier)."""

from __future__ import annotations

import statistics

import pytest

from inference_bundle.router.minute_series import MINUTES, MinuteSeries

pytestmark = pytest.mark.timeout(30)
MODEL = ("local", "local/tiny-llama")


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_each_minute_counts_its_requests_and_errors_oldest_first() -> None:
    clock = Clock(10_000 * 60 + 5)  # five seconds into a minute
    series = MinuteSeries(clock)
    series.record(*MODEL, 200, 0.1)
    series.record(*MODEL, 502, 0.1)
    clock.now += 60
    for status in (200, 200, 429, 400, 499):
        series.record(*MODEL, status, 0.1)
    shown = series.series(*MODEL)
    assert shown["step_s"] == 60
    assert shown["start"] == (10_001 - MINUTES + 1) * 60  # the minute now under way is last
    assert len(shown["requests"]) == len(shown["errors"]) == MINUTES
    assert shown["requests"][-2:] == [2, 5]
    # Errors as the ledger counts them: 5xx and 429; a client's 400 or hang-up (499) is not.
    assert shown["errors"][-2:] == [1, 1]
    assert sum(shown["requests"][:-2]) == sum(shown["errors"][:-2]) == 0
    # Another model, or the same model on another cluster, is a series of its own.
    assert sum(series.series("sophia", "local/tiny-llama")["requests"]) == 0


def test_the_median_latency_is_of_successful_answers_and_close_to_exact() -> None:
    clock = Clock(600.0)
    series = MinuteSeries(clock)
    latencies = [0.004 * 1.3**n for n in range(41)]  # 4 ms to about 150 s
    for latency in latencies:
        series.record(*MODEL, 200, latency)
    series.record(*MODEL, 503, 500.0)  # errors and refusals leave the median alone
    series.record(*MODEL, 429, 0.0001)
    median = series.series(*MODEL)["median_latency_ms"][-1]
    exact = statistics.median(latencies) * 1000
    assert median == pytest.approx(exact, rel=0.026)
    assert series.series(*MODEL)["median_latency_ms"][:-1] == [None] * (MINUTES - 1)


def test_a_minute_of_only_errors_or_a_tiny_latency_has_a_median_or_none() -> None:
    clock = Clock(600.0)
    series = MinuteSeries(clock)
    series.record(*MODEL, 500, 1.0)
    assert series.series(*MODEL)["median_latency_ms"][-1] is None
    series.record(*MODEL, 200, 0.0)  # below the smallest bin: still a number
    assert series.series(*MODEL)["median_latency_ms"][-1] == pytest.approx(0.01, rel=0.03)


def test_minutes_older_than_an_hour_are_forgotten() -> None:
    clock = Clock(600.0)
    series = MinuteSeries(clock)
    for _ in range(MINUTES + 5):
        series.record(*MODEL, 200, 0.05)
        clock.now += 60
    shown = series.series(*MODEL)
    assert shown["requests"] == [1] * (MINUTES - 1) + [0]  # this minute has none yet
    assert len(series._models[MODEL]) <= MINUTES  # memory stays an hour's worth
    clock.now += MINUTES * 60
    assert sum(series.series(*MODEL)["requests"]) == 0
