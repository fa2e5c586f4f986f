"""Maintenance windows with an injected clock: which starts are refused and when, what the
503 says, and what the listings and the status page are given."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest

from inference_bundle.router.errors import APIError
from inference_bundle.router.fleet.maintenance import Maintenance
from inference_bundle.router.fleet.states import ModelState
from inference_bundle.router.routes import Route
from tests.router.conftest import Harness
from tests.router.warm_fakes import Clock, scheduled, status, utc

pytestmark = pytest.mark.anyio
CHAT = "/resource_server/local/vllm/v1/chat/completions"
HELLO = {"model": "local/tiny-llama", "messages": [{"role": "user", "content": "hi"}]}
# Tuesday 15 December 2026, 08:00-16:00 in Chicago (CST): 14:00-22:00 UTC.
DOWN = {
    "start": "2026-12-15T08:00:00-06:00",
    "end": "2026-12-15T16:00:00-06:00",
    "reason": "quarterly maintenance",
}


@dataclass
class Calendar:
    """One route's cluster windows, asked at set moments."""

    route: Route
    maintenance: Maintenance

    def refusal(
        self, iso: str, state: ModelState, last_start_s: float | None = None
    ) -> APIError | None:
        return self.maintenance.refusal(self.route, status(state, last_start_s), utc(iso))


def calendar(
    clock: Clock, windows: list[dict[str, str]], timezone: str = "America/Chicago"
) -> Calendar:
    return Calendar(*scheduled([], clock, maintenance=windows, timezone=timezone))


def test_during_the_window_every_start_is_refused_and_told_when_service_resumes() -> None:
    cal = calendar(Clock(0), [DOWN])
    for state in (ModelState.READY, ModelState.IDLE):
        assert cal.refusal("2026-12-15T15:00:00+00:00", state) is not None
    refused = cal.refusal("2026-12-15T15:00:00+00:00", ModelState.COLD)
    assert refused is not None
    assert refused.status == 503
    assert refused.message == (
        "local is down for maintenance (quarterly maintenance) until 2026-12-15 22:00 UTC "
        "(16:00 CST, America/Chicago); the model 'local/tiny-llama' cannot start before then. "
        "Try again after 2026-12-15 22:00 UTC (16:00 CST, America/Chicago)."
    )
    assert refused.body()["error"] == {
        "message": refused.message,
        "type": "server_error",
        "param": None,
        "code": "maintenance",
        "resumes_at": "2026-12-15T22:00:00Z",
        "resumes_at_local": "2026-12-15T16:00:00-06:00",
        "maintenance": {
            "start": "2026-12-15T14:00:00Z",
            "end": "2026-12-15T22:00:00Z",
            "reason": "quarterly maintenance",
        },
    }
    assert refused.headers == {"Retry-After": str(7 * 3600)}
    assert cal.refusal("2026-12-15T22:00:00+00:00", ModelState.COLD) is None  # over


def test_before_the_window_a_start_that_could_not_finish_is_refused() -> None:
    cal = calendar(Clock(0), [DOWN])  # start_timeout_s 300 on this profile
    assert cal.refusal("2026-12-15T13:55:00+00:00", ModelState.COLD) is None
    refused = cal.refusal("2026-12-15T13:55:01+00:00", ModelState.STOPPED)
    assert refused is not None and refused.code == "maintenance"
    assert refused.message == (
        "local goes down for maintenance (quarterly maintenance) at 2026-12-15 14:00 UTC "
        "(08:00 CST, America/Chicago); the model 'local/tiny-llama' is not running, and a "
        "start (about 5 min) could not finish before then, so it is not started. Service "
        "resumes at 2026-12-15 22:00 UTC (16:00 CST, America/Chicago)."
    )
    # A model that is up keeps answering until the window starts.
    assert cal.refusal("2026-12-15T13:59:59+00:00", ModelState.READY) is None
    # The model's last start, where one was seen, is the expected start time.
    assert cal.refusal("2026-12-15T13:58:59+00:00", ModelState.COLD, 60.0) is None
    late = cal.refusal("2026-12-15T13:59:01+00:00", ModelState.COLD, 60.0)
    assert late is not None and "a start (about 60 s)" in late.message


def test_utc_clusters_and_windows_that_run_into_each_other() -> None:
    windows = [
        {"start": "2026-12-15T14:00:00Z", "end": "2026-12-15T18:00:00Z", "reason": "power"},
        {"start": "2026-12-15T18:00:00Z", "end": "2026-12-16T02:00:00Z", "reason": "cooling"},
        {"start": "2026-12-20T00:00:00Z", "end": "2026-12-20T01:00:00Z", "reason": "later"},
    ]
    cal = calendar(Clock(0), windows, timezone="UTC")
    refused = cal.refusal("2026-12-15T15:00:00+00:00", ModelState.COLD)
    assert refused is not None
    assert refused.message.startswith(
        "local is down for maintenance (power) until 2026-12-16 02:00 UTC; "
    )


def test_the_notice_for_the_status_page_and_the_listings() -> None:
    clock = Clock(0)
    cal = calendar(
        clock, [DOWN, {**DOWN, "start": "2026-11-01T00:00:00Z", "end": "2026-11-02T00:00:00Z"}]
    )
    clock.at("2026-12-10T00:00:00+00:00")  # the November window is past
    expected = {
        "start": "2026-12-15T14:00:00Z",
        "end": "2026-12-15T22:00:00Z",
        "resumes_at": "2026-12-15T22:00:00Z",
        "start_local": "2026-12-15T08:00:00-06:00",
        "end_local": "2026-12-15T16:00:00-06:00",
        "resumes_at_local": "2026-12-15T16:00:00-06:00",
        "timezone": "America/Chicago",
        "reason": "quarterly maintenance",
        "active": False,
    }
    assert cal.maintenance.notice("local") == expected
    assert cal.maintenance.notice("local", utc("2026-12-15T14:00:00+00:00")) == {
        **expected,
        "active": True,
    }
    assert cal.maintenance.notice("local", utc("2026-12-15T22:00:00+00:00")) is None
    assert cal.maintenance.notice("sophia") is None  # not a cluster it was given


async def test_a_cold_request_gets_the_503_and_no_task(
    make_harness: Callable[..., Harness],
) -> None:
    h = make_harness()
    clock = Clock(0)
    clock.at("2026-12-15T15:00:00+00:00")
    profiles = dict(h.service.dispatcher.maintenance.profiles)  # type: ignore[union-attr]
    profiles["local"] = profiles["local"].model_copy(
        update={
            "timezone": "America/Chicago",
            "maintenance": calendar(clock, [DOWN]).maintenance.profiles["local"].maintenance,
        }
    )
    h.service.dispatcher.maintenance = Maintenance(profiles, clock=clock)
    async with h.client:
        answer = await h.client.post(CHAT, json=HELLO, headers=h.auth)
        assert answer.status_code == 503
        assert answer.headers["retry-after"] == str(7 * 3600)
        error = answer.json()["error"]
        assert error["code"] == "maintenance"
        assert error["resumes_at"] == "2026-12-15T22:00:00Z"
        assert h.endpoint.submitted == []
        listed = await h.client.get("/resource_server/list-endpoints", headers=h.auth)
        clusters = listed.json()["clusters"]
        assert clusters["local"]["maintenance"]["active"] is True
        assert clusters["local"]["maintenance"]["reason"] == "quarterly maintenance"
        assert "maintenance" not in clusters["sophia"]  # none set there
        clock.at("2026-12-15T22:00:00+00:00")
        after = await h.client.post(CHAT, json=HELLO, headers=h.auth)
        assert after.status_code == 200
        listed = await h.client.get("/resource_server/list-endpoints", headers=h.auth)
        assert "maintenance" not in listed.json()["clusters"]["local"]
