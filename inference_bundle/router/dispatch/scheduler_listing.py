"""The bundle's scheduler jobs per cluster, for /jobs and for the state of waiting models.

With the engine executor the router runs beside the scheduler (the embedded cluster, or a
login node without the cloud hop) and asks it directly; with the globus executor it runs the
registered ``list_bundle_jobs`` on the cluster's ``<cluster>-jobs`` endpoint.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Any

import node_runtime
from node_runtime.jobs import list_bundle_jobs, list_jobs

from inference_bundle.config.catalog import Catalog
from inference_bundle.router.errors import APIError
from inference_bundle.router.executors.base import Executor

LISTING_TIMEOUT_S = 30.0


class JobListing:
    """Asks each cluster at most once every ``ttl_s``; concurrent askers share one call."""

    def __init__(
        self,
        catalogs: list[Catalog],
        remote: Mapping[str, Executor] | None = None,
        ttl_s: float = 5.0,
    ) -> None:
        self._catalogs = {c.cluster: c for c in catalogs}
        self._remote = remote  # cluster -> executor of its jobs endpoint (globus mode)
        self._ttl_s = ttl_s
        self._cache: dict[str, tuple[float, dict[str, Any]]] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def jobs(self, cluster: str) -> dict[str, Any]:
        """The listing of node_runtime.jobs.list_jobs for ``cluster``."""
        lock = self._locks.setdefault(cluster, asyncio.Lock())
        async with lock:
            cached = self._cache.get(cluster)
            if cached and time.monotonic() - cached[0] < self._ttl_s:
                return cached[1]
            listing = await self._ask(cluster)
            self._cache[cluster] = (time.monotonic(), listing)
            return listing

    async def _ask(self, cluster: str) -> dict[str, Any]:
        catalog = self._catalogs[cluster]
        profile = catalog.profile
        endpoints = {e.endpoint_name: e.endpoint.name for e in catalog.enabled()}
        args = (profile.scheduler, endpoints, profile.paths.state_dir)
        try:
            if self._remote is None:
                return await asyncio.to_thread(list_jobs, *args)
            future = self._remote[cluster].submit(list_bundle_jobs, node_runtime.__version__, *args)
            result: dict[str, Any] = await asyncio.wait_for(
                asyncio.wrap_future(future), LISTING_TIMEOUT_S
            )
            return result
        except (Exception, TimeoutError) as err:
            raise APIError(
                502,
                f"The job listing of {cluster} is not available right now: {err}",
                type="server_error",
                code="jobs_unavailable",
            ) from None
