"""An endpoint's job in its cluster's listing, asked with a short bound, and what it tells.

A waiting request polls this (``router.dispatch``) to learn whether its model's job runs
and when the scheduler plans to start it (``router.fleet.estimates``); the listings (``/jobs``) use
``job_of`` to pick an endpoint's job the same way. A slow listing never delays a request:
past ``LISTING_WAIT_S`` the answer is "unknown" and the listing fills its cache meanwhile.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from inference_bundle.router.dispatch.scheduler_listing import JobListing
from inference_bundle.router.errors import APIError
from inference_bundle.router.fleet.estimates import Eta, estimate
from inference_bundle.router.fleet.states import ModelState, ModelStatus
from inference_bundle.router.routes import Route

# How long a wait's poll waits for the job listing; a slower one fills its cache meanwhile.
LISTING_WAIT_S = 2.0


class JobLookup:
    """Asks a job listing (if any) about routes' jobs, never for longer than LISTING_WAIT_S."""

    def __init__(self, job_listing: JobListing | None) -> None:
        self.job_listing = job_listing

    async def cluster_jobs(self, cluster: str) -> list[dict[str, Any]] | None:
        """The cluster's listed jobs; None if the listing fails or takes over LISTING_WAIT_S
        (it goes on meanwhile and fills its cache for the next ask)."""
        if self.job_listing is None:
            return None
        asking = asyncio.ensure_future(self.job_listing.jobs(cluster))
        asking.add_done_callback(retrieve)
        try:
            listing = await asyncio.wait_for(asyncio.shield(asking), LISTING_WAIT_S)
        except (APIError, TimeoutError):
            return None  # unknown: keep saying queued rather than fail or delay the request
        jobs: list[dict[str, Any]] = listing.get("jobs", [])
        return jobs

    async def listed_job(self, route: Route) -> dict[str, Any] | None:
        """The endpoint's job in its cluster's listing (see ``job_of``); None if none is
        listed or the listing does not answer in time."""
        return job_of(await self.cluster_jobs(route.cluster), route.endpoint_name)

    async def job_running(self, route: Route) -> bool:
        """Whether the scheduler runs the endpoint's job, when the executor cannot say."""
        job = await self.listed_job(route)
        return job is not None and job.get("scheduler_state") == "running"

    async def eta(self, route: Route, status: ModelStatus) -> Eta:
        """The best estimate of when a waiting model answers (router.fleet.estimates).

        While it is queued, the scheduler's plan for its job counts: the listing is asked
        (at most every few seconds, cached). Starting, the last start's length is enough.
        """
        job = await self.listed_job(route) if status.state == ModelState.QUEUED else None
        return estimate(status, job, time.time())


def job_of(jobs: list[dict[str, Any]] | None, endpoint_name: str) -> dict[str, Any] | None:
    """An endpoint's job among listed ones: a running one first, else the queued one the
    scheduler plans to start first; None if it has none."""
    mine = [job for job in jobs or [] if job.get("endpoint") == endpoint_name]
    return min(mine, key=_job_order, default=None)


def _job_order(job: dict[str, Any]) -> tuple[bool, float]:
    """Running jobs first, then queued ones by planned start (unplanned last)."""
    planned = job.get("estimated_start")
    running = job.get("scheduler_state") == "running"
    return (not running, planned if isinstance(planned, int | float) else float("inf"))


def retrieve(done: asyncio.Future[Any]) -> None:
    """Consume the outcome of a task nobody waits for any more (no 'never retrieved')."""
    if not done.cancelled():
        done.exception()
