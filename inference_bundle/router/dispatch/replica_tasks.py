"""Tasks no user waits for, one replica at a time: keep-alives, and a new replica's start.

A model's replicas are indexes of its endpoint, each its own engine and scheduler job
(``executors.pool``, ``fleet.replicas``). A request that rides a replica's connection is
no task its engine sees, so each replica in use gets a keep-alive task every ``refresh_s``;
a replica the autoscaler asks for gets a task that starts its server and hands it a
credential to dial. Each task's envelope says where the replica's server runs.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable
from typing import Any

from node_runtime.entrypoints import serve

from inference_bundle.router.dataplane.connections import NodeConnection
from inference_bundle.router.dataplane.plane import DataPlane
from inference_bundle.router.dispatch.runtime_requests import ENSURE
from inference_bundle.router.executors.pool import ExecutorPool
from inference_bundle.router.fleet.replicas import Replicas
from inference_bundle.router.node_envelope import Envelope
from inference_bundle.router.routes import Route

log = logging.getLogger("router.dispatch")


class ReplicaTasks:
    """Submits the background tasks of each model's replicas and records their envelopes."""

    def __init__(
        self,
        pool: ExecutorPool,
        plane: DataPlane | None,
        replicas: Replicas,
        runtime_version: str,
    ) -> None:
        self.pool = pool
        self.plane = plane
        self.replicas = replicas
        self.runtime_version = runtime_version
        self._background: set[asyncio.Task[None]] = set()

    def placed(self, route: Route, index: int, envelope: Envelope) -> None:
        """A replica's task answered: the data plane learns its server's key, the replica
        its node. A replica that landed on a node another one holds is let go."""
        if self.plane is not None:
            self.plane.vouch(route, envelope)
        replicas = self.replicas.of(route.endpoint_name)
        if envelope.node is None:  # no server up (an expired task, or an old runtime)
            replicas.abandon(index)
            return
        node = envelope.node
        now = time.time()
        holder = replicas.placed(
            index, node.host, node.server_id, envelope.timings.start_wait_s, now
        )
        if holder is not None:
            log.warning(
                "%s: replica %d landed on %s, which replica %d holds; letting it go",
                route.model,
                index,
                node.host,
                holder.index,
            )
            replicas.remove(index)
            self.in_background(asyncio.to_thread(self.pool.drop, route, index))

    def landed(self, route: Route, index: int, done: asyncio.Future[Any]) -> None:
        """A task whose caller stopped waiting ended: place its replica, or let it go."""
        try:
            self.placed(route, index, Envelope.parse(done.result()))
        except Exception as err:
            self.replicas.of(route.endpoint_name).abandon(index)
            log.warning("%s: replica %d did not start: %s", route.model, index, err)

    async def start(self, route: Route, index: int) -> Envelope:
        """Start replica ``index`` of the route's model: its server up, dialling this router.

        Its engine asks the scheduler for the job; this waits for as long as that takes.
        """
        request: dict[str, Any] = dict(ENSURE)
        if self.plane is not None:
            request["dial"] = self.plane.dial(route)
        envelope = await self._submit(route, index, request)
        self.placed(route, index, envelope)
        return envelope

    def keep(self, route: Route, connection: NodeConnection) -> None:
        """Every refresh_s of use over a replica's connection, one task to its engine.

        It keeps the engine (and its scheduler job) from idling out while the replica is
        used, and hands the server a key it has (the router learns a restarted server's key
        so). It carries no credential: the server is connected, and a credential written
        ahead of its need would only wait in the node's files for someone to read it.
        """
        if self.plane is None:
            return
        replica = self.replicas.of(route.endpoint_name).by_server(connection.server_id)
        now = time.time()
        if replica is None:  # a server this router did not start (it restarted since): index 0
            if not self.plane.refresh_due(route):
                return
            self.plane.refreshed(route)
            index = 0
        else:
            if now - replica.last_task < self.plane.settings.refresh_s:
                return
            replica.last_task = now
            index = replica.index
        self.in_background(self._refresh(route, index))

    async def _refresh(self, route: Route, index: int) -> None:
        try:
            self.placed(route, index, await self._submit(route, index, dict(ENSURE)))
        except Exception as err:  # the next request's own task will say what is wrong
            log.warning("keeping %s's engine (replica %d): %s", route.endpoint_name, index, err)

    async def _submit(self, route: Route, index: int, request: dict[str, Any]) -> Envelope:
        executor = await asyncio.to_thread(self.pool.get, route, index)
        raw = await asyncio.wrap_future(
            executor.submit(serve, self.runtime_version, route.task_spec(index), request)
        )
        return Envelope.parse(raw)

    def in_background(self, work: Awaitable[Any]) -> None:
        """Run ``work`` on the loop, kept referenced until it ends; failures are logged."""

        async def run() -> None:
            try:
                await work
            except Exception as err:
                log.warning("in the background: %s", err)

        task = asyncio.get_running_loop().create_task(run())
        self._background.add(task)
        task.add_done_callback(self._background.discard)
