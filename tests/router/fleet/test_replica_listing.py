"""How /list-endpoints and /jobs show a model's replicas, and when one on its way serves."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from tests.router.conftest import Harness

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(30)]
TINY = "local/tiny-llama"
ENDPOINT = "local-tiny-chat"


class Listing:
    """The scheduler's listing: the endpoint's queued job, planned to start at ``start``."""

    def __init__(self, start: float) -> None:
        self.start = start

    async def jobs(self, cluster: str) -> dict[str, Any]:
        queued = {
            "endpoint": ENDPOINT,
            "job_id": "88",
            "state": "queued",
            "scheduler_state": "queued",
            "reason": "Resources",
            "nodes": [],
            "estimated_start": self.start,
        }
        return {"jobs": [queued] if cluster == "local" else []}


def iso(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).isoformat()


async def test_a_replica_on_its_way_is_shown_with_its_jobs_planned_start(
    make_harness: Callable[..., Harness],
) -> None:
    h = make_harness()
    planned = time.time() + 600
    h.service.job_listing = h.service.dispatcher.job_listing = Listing(planned)  # type: ignore[assignment]
    # A first start took 40 s (as the tracker saw it); then one replica serves on node-a
    # and a second is asked for.
    clock = [1000.0]
    h.service.tracker._clock = lambda: clock[0]
    h.service.tracker.begin(ENDPOINT)
    clock[0] += 40
    h.service.tracker.finish(ENDPOINT, answered=True)
    replicas = h.service.dispatcher.replicas.of(ENDPOINT)
    first = replicas.claim("request", time.time())
    assert first is not None
    replicas.placed(first.index, "node-a", "server-a", 0.0, time.time())
    second = replicas.claim("demand", time.time())
    assert second is not None
    async with h.client:
        listed = await h.client.get("/resource_server/list-endpoints", headers=h.auth)
        jobs = await h.client.get("/resource_server/local/jobs", headers=h.auth)
    models = listed.json()["clusters"]["local"]["frameworks"]["vllm"]["models"]
    [model] = [m for m in models if m["id"] == TINY]
    ready, coming = model["replicas"]
    assert (ready["replica"], ready["state"], ready["host"]) == (0, "ready", "node-a")
    assert ready["server"] is not None and ready["in_flight"] == 0
    assert (coming["replica"], coming["state"], coming["asked_for"]) == (1, "starting", "demand")
    # Its job's planned start, plus the last start's 40 s.
    assert coming["estimated_start"] == iso(planned)
    assert coming["estimated_ready_at"] == iso(planned + 40)
    [queued] = jobs.json()["queued"]
    assert [r["state"] for r in queued["replicas"]] == ["ready", "starting"]
