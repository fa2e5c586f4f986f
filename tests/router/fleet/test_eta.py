"""The estimate every wait carries: from the scheduler's plan and the model's last start.

The scripted harness (conftest.py) with a fake job listing that reports the model's job
queued, with the scheduler's estimated start and queue position: the estimate reaches the
503's Retry-After and body, a waiting stream's comments, /jobs, /list-endpoints and the
`make status` cells. The scheduler side (reading qstat and squeue) is tests/scheduler.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from inference_bundle.ops.status import eta_cell, last_start_cell
from inference_bundle.router.fleet.estimates import estimate, retry_after_s
from inference_bundle.router.fleet.states import ModelState, ModelStatus, StateTracker
from tests.router.api.test_api import CHAT, HELLO, TINY, assert_openai_error, post
from tests.router.conftest import Harness

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(30)]

IN_TEN_MINUTES = 600.0


class QueuedListing:
    """A job listing whose one job, the tiny model's, waits with a planned start."""

    def __init__(self, endpoint: str, planned: float) -> None:
        self.job: dict[str, Any] = {
            "job_id": "81.sophia-pbs",
            "endpoint": endpoint,
            "scheduler_state": "queued",
            "state": "queued",
            "reason": "Not Running: Insufficient amount of resource: ngpus",
            "nodes": [],
            "walltime_used_s": None,
            "walltime_s": 86400,
            "started_at": None,
            "estimated_start": planned,
            "queue_position": 2,
        }

    async def jobs(self, cluster: str) -> dict[str, Any]:
        return {"jobs": [self.job] if cluster == "local" else []}


def queued_harness(make_harness: Callable[..., Harness], **changes: Any) -> tuple[Harness, float]:
    """A harness whose tiny model's job is queued, planned to start in ten minutes."""
    h = make_harness(**changes)
    [route] = [r for r in h.service.table.routes("local") if r.model == TINY]
    planned = time.time() + IN_TEN_MINUTES
    h.service.job_listing = h.service.dispatcher.job_listing = QueuedListing(  # type: ignore[assignment]
        route.endpoint_name, planned
    )
    h.endpoint.held = False
    return h, planned


def hh_mm(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).strftime("%H:%M UTC")


async def test_the_schedulers_plan_reaches_the_503(make_harness: Callable[..., Harness]) -> None:
    h, planned = queued_harness(make_harness, wait_s=0.2)
    h.endpoint.delay_s = 1.0
    async with h.client:
        response = await post(h, json.dumps({"model": TINY, "messages": HELLO}).encode())
    error = assert_openai_error(response, 503)
    retry = int(response.headers["Retry-After"])
    assert IN_TEN_MINUTES - 5 <= retry <= IN_TEN_MINUTES + 1  # not the default 60
    assert error["retry_after_s"] == retry
    assert error["state"] == "queued" and error["estimate_basis"] == "scheduler"
    assert error["estimated_start"] == datetime.fromtimestamp(planned, UTC).isoformat()
    # No start seen yet: ready when the job starts.
    assert error["estimated_ready_at"] == error["estimated_start"]
    assert (error["queue_position"], error["last_start_s"]) == (2, None)
    assert f"the scheduler expects to start it at {hh_mm(planned)}" in error["message"]
    assert "2nd in its queue" in error["message"]


async def test_a_waiting_stream_says_the_plan(make_harness: Callable[..., Harness]) -> None:
    h, planned = queued_harness(make_harness)
    h.endpoint.delay_s = 0.3
    body = {"model": TINY, "messages": HELLO, "stream": True}
    async with h.client, h.client.stream("POST", CHAT, json=body, headers=h.auth) as response:
        lines = [line async for line in response.aiter_lines() if line]
    assert lines[0].startswith(f": {TINY} is queued, waited")
    assert f"; the scheduler expects to start it at {hh_mm(planned)}" in lines[0]
    assert "expect it ready at about" in lines[0]
    assert lines[-1] == "data: [DONE]"


async def test_jobs_and_list_endpoints_show_the_plan(make_harness: Callable[..., Harness]) -> None:
    h, planned = queued_harness(make_harness)
    async with h.client:
        jobs = (await h.client.get("/resource_server/local/jobs", headers=h.auth)).json()
        listed = (await h.client.get("/resource_server/list-endpoints", headers=h.auth)).json()
    [queued] = jobs["queued"]
    assert (queued["model"], queued["job_id"], queued["queue_position"]) == (
        TINY,
        "81.sophia-pbs",
        2,
    )
    at = datetime.fromtimestamp(planned, UTC).isoformat()
    assert (queued["estimated_start"], queued["estimated_ready_at"]) == (at, at)
    assert IN_TEN_MINUTES - 5 <= queued["estimated_wait_s"] <= IN_TEN_MINUTES + 1
    tiny = listed_model(listed, TINY)
    assert tiny["job"]["job_id"] == "81.sophia-pbs" and tiny["job"]["state"] == "queued"
    assert (tiny["estimated_start"], tiny["queue_position"]) == (at, 2)
    assert eta_cell(tiny).startswith(f"start {hh_mm(planned)} #2, ready ~{hh_mm(planned)} (in ")


async def test_the_router_remembers_how_long_a_start_took(
    make_harness: Callable[..., Harness],
) -> None:
    h = make_harness()
    h.endpoint.delay_s = 0.4  # the node is held at once: all of it is the start
    async with h.client:
        await post(h, json.dumps({"model": TINY, "messages": HELLO}).encode())
        listed = (await h.client.get("/resource_server/list-endpoints", headers=h.auth)).json()
    tiny = listed_model(listed, TINY)
    assert tiny["state"] == "ready" and 0.2 <= tiny["last_start_s"] <= 5
    assert tiny["estimated_ready_at"] is None  # ready: nothing to estimate
    assert last_start_cell(tiny) == f"{round(tiny['last_start_s'])} s"


def test_the_tracker_times_a_start_from_the_node_held() -> None:
    now = [1000.0]
    tracker = StateTracker(clock=lambda: now[0])
    tracker.register("m", idle_timeout_s=3600)
    assert tracker.begin("m")
    now[0] = 1100.0
    tracker.waiting("m", node_held=False)  # queued 100 s: not part of the start
    now[0] = 1300.0
    assert tracker.waiting("m", node_held=True).state == ModelState.STARTING
    now[0] = 1540.0
    tracker.finish("m", answered=True)
    assert tracker.status("m").last_start_s == 240.0
    now[0] = 9000.0  # idled out, then a start never seen held: timed from the request
    assert tracker.begin("m")
    now[0] = 9050.0
    tracker.finish("m", answered=True)
    assert tracker.status("m").last_start_s == 50.0
    tracker.finish("m", answered=False, error="x")  # no start: the memory stays
    assert tracker.status("m").last_start_s == 50.0


def status(state: ModelState, since: float, last: float | None) -> ModelStatus:
    return ModelStatus(state, since, None, 1, 1, last_start_s=last)


NOW = 1_800_000_000.0


@pytest.mark.parametrize(
    ("model", "job", "ready_in", "retry"),
    [
        # Queued with a plan: the planned start plus the last start.
        (status(ModelState.QUEUED, NOW - 30, 240), {"estimated_start": NOW + 600}, 840, 840),
        # A plan already past: the scheduler is late; ready a last start from now.
        (status(ModelState.QUEUED, NOW - 30, 240), {"estimated_start": NOW - 60}, 240, 240),
        # Starting for 100 s of a 240 s start.
        (status(ModelState.STARTING, NOW - 100, 240), None, 140, 140),
        # Starting longer than last time: any moment, and the client waits the minimum.
        (status(ModelState.STARTING, NOW - 500, 240), None, 0, 5),
        # A plan hours away: Retry-After stays within 30 min.
        (status(ModelState.QUEUED, NOW, None), {"estimated_start": NOW + 5 * 3600}, 18000, 1800),
        # Nothing known: the defaults.
        (status(ModelState.QUEUED, NOW, 240), None, None, 60),
        (status(ModelState.STARTING, NOW, None), None, None, 60),
    ],
)
def test_the_best_estimate(
    model: ModelStatus, job: dict[str, Any] | None, ready_in: float | None, retry: int
) -> None:
    eta = estimate(model, job, NOW)
    ready = None if eta.estimated_ready_at is None else eta.estimated_ready_at - NOW
    assert ready == ready_in
    assert retry_after_s(eta, 60) == retry


def test_the_listings_job_state_counts_after_a_restart() -> None:
    """A router that just started knows nothing; a starting job's start time stands in."""
    cold = status(ModelState.COLD, NOW - 9000, 240)
    eta = estimate(cold, {"state": "starting", "started_at": NOW - 40}, NOW)
    assert (eta.state, eta.estimated_ready_at) == ("starting", NOW + 200)
    ready = status(ModelState.READY, NOW - 10, 240)
    assert estimate(ready, {"state": "running"}, NOW).estimated_ready_at is None


def test_what_the_estimate_says() -> None:
    eta = estimate(
        status(ModelState.QUEUED, NOW, 250),
        {"estimated_start": NOW + 3000, "queue_position": 3},
        NOW,
    )
    assert eta.sentence() == (
        f"the scheduler expects to start it at {hh_mm(NOW + 3000)} (in 50 min, 3rd in its "
        f"queue); it took 4 min 10 s to start last time; expect it ready at about "
        f"{hh_mm(NOW + 3250)} (in 54 min 10 s)"
    )
    far = estimate(status(ModelState.QUEUED, NOW, None), {"estimated_start": NOW + 86400}, NOW)
    assert " UTC on " in far.sentence()  # another day: the date too
    assert estimate(status(ModelState.QUEUED, NOW, None), None, NOW).sentence() == ""
    assert eta_cell({}) == "-" and last_start_cell({}) == "-"


def listed_model(listed: dict[str, Any], name: str) -> dict[str, Any]:
    """One model's row in /list-endpoints' local vLLM models."""
    models = listed["clusters"]["local"]["frameworks"]["vllm"]["models"]
    [row] = [m for m in models if m["id"] == name]
    return row  # type: ignore[no-any-return]
