"""The task path: a request (or a start) sent as a task through its endpoint's executor.

A task starts (or finds) the model's server on its node and answers whole; it also tells the
server where to dial, so that later requests ride the data plane (``router.dispatch``). A
task waits at most ``wait_s``; past that the request gets a 503 with the model's state and
Retry-After, while its task goes on starting the model for the next request. A task handed to
an engine or to Globus Compute cannot be withdrawn, so each carries ``expires_at``: when it
reaches a node after its caller gave up, the node runtime starts the model but does not send
the request (no generation nobody reads).
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import Future
from typing import Any

from node_runtime.entrypoints import serve

from inference_bundle.router import tracing
from inference_bundle.router.dataplane.connections import server_label
from inference_bundle.router.dataplane.plane import DataPlane
from inference_bundle.router.dispatch.admission import OnNote
from inference_bundle.router.dispatch.answers import Answer
from inference_bundle.router.dispatch.errors import not_connected, still_starting, task_failed
from inference_bundle.router.dispatch.job_lookup import JobLookup
from inference_bundle.router.dispatch.replica_tasks import ReplicaTasks
from inference_bundle.router.dispatch.runtime_requests import ENSURE, is_form
from inference_bundle.router.errors import APIError
from inference_bundle.router.executors.pool import ExecutorPool
from inference_bundle.router.fleet.maintenance import Maintenance
from inference_bundle.router.fleet.replicas import Replicas
from inference_bundle.router.fleet.states import StateTracker
from inference_bundle.router.node_envelope import Envelope
from inference_bundle.router.routes import Route

# Told while a request waits for a start or a place: a sentence for the client (a stream's
# SSE comment): the model's state, seconds waited and the estimate, or its place in the queue.
OnWait = OnNote
# A task reaches its node after a little travel: its caller's wait ends this much later there.
EXPIRY_MARGIN_S = 5.0


class TaskPath(JobLookup):
    """Sends tasks for routes, each to a replica of its endpoint, and waits for them.

    What the scheduler's listing says of a route's job (``eta``, ``listed_job``,
    ``cluster_jobs``) comes from ``JobLookup``.
    """

    # Set by the dispatcher that carries this path (router.dispatch.dispatcher).
    plane: DataPlane | None
    replicas: Replicas  # which replica each task goes to, which servers drain
    tasks: ReplicaTasks
    maintenance: Maintenance | None  # starts a maintenance window would cut get a 503
    tracker: StateTracker
    wait_s: float
    runtime_version: str
    poll_s: float
    _pool: ExecutorPool

    @property
    def pool(self) -> ExecutorPool:
        return self._pool

    @pool.setter
    def pool(self, pool: ExecutorPool) -> None:
        """Another pool (tests' own executors): the replicas' tasks go to it too."""
        self._pool = self.tasks.pool = pool

    async def ensure(self, route: Route) -> Envelope:
        """Start the route's server, or find it up, and send it nothing: the task's envelope.

        A cold stream's first step, and the warm schedules' (router.fleet.warm_schedules).
        Past ``wait_s`` it raises the 503 of a model still starting; the task goes on.
        """
        request: dict[str, Any] = dict(ENSURE)
        if self.plane is not None:
            request["dial"] = self.plane.dial(route)
        envelope, _ = await self._task(route, request, None, time.monotonic())
        return envelope

    async def _through_task(
        self, route: Route, request: dict[str, Any], on_wait: OnWait | None, began: float
    ) -> Answer:
        if is_form(request):
            raise not_connected(route)
        expiring = {**request, "expires_at": time.time() + self.wait_s + EXPIRY_MARGIN_S}
        if self.plane is not None:
            expiring["dial"] = self.plane.dial(route)
        envelope, cold = await self._task(route, expiring, on_wait, began)
        return Answer(
            status=envelope.status,
            body=envelope.body,
            start_wait_s=envelope.timings.start_wait_s,
            waited_s=time.monotonic() - began,
            cold_start=cold,
            server=None if envelope.node is None else server_label(envelope.node.server_id),
        )

    async def _task(
        self, route: Route, request: dict[str, Any], on_wait: OnWait | None, began: float
    ) -> tuple[Envelope, bool]:
        """Submit the entry point and wait for its envelope: (envelope, whether it was cold)."""
        key = route.endpoint_name
        if self.maintenance is not None:  # no start that a maintenance window would cut
            self.maintenance.check_start(route, self.tracker.status(key))
        index = self.replicas.of(key).for_request(time.time())
        executor = await self._executor(route, index)
        cold = self.tracker.begin(key)
        # In a traced request, a span that the task carries to its node (router.tracing).
        future = tracing.submit(
            executor, serve, self.runtime_version, route.task_spec(index), request
        )
        future.add_done_callback(lambda done: self._finished(route, done))
        waiting = asyncio.wrap_future(future)
        while True:
            done, _ = await asyncio.wait({waiting}, timeout=self.poll_s)
            if done:
                break
            waited = time.monotonic() - began
            # A round trip to the engine's interchange: off the event loop.
            held = await asyncio.to_thread(executor.node_held)
            if held is None:
                held = await self.job_running(route)
            status = self.tracker.waiting(key, held)
            eta = await self.eta(route, status)
            if waited >= self.wait_s:
                # The task goes on: its envelope, when it comes, still places the replica.
                waiting.add_done_callback(lambda done: self.tasks.landed(route, index, done))
                raise still_starting(route, status, waited, eta)
            if on_wait is not None:
                # "<model> is queued, waited 12 s; the scheduler expects to start it at ..."
                told = eta.sentence()
                note = f"{route.model} is {status.state}, waited {waited:.0f} s"
                await on_wait(f"{note}; {told}" if told else note)
        try:
            envelope = self._parsed(route, index, waiting)
        except Exception as err:
            raise task_failed(route, err) from None
        self.tasks.placed(route, index, envelope)
        return envelope, cold

    def _parsed(self, route: Route, index: int, waiting: asyncio.Future[Any]) -> Envelope:
        """The task's envelope; a replica claimed for it that no server came of is let go."""
        try:
            return Envelope.parse(waiting.result())
        except BaseException:
            self.replicas.of(route.endpoint_name).abandon(index)
            raise

    async def _executor(self, route: Route, index: int = 0) -> Any:
        try:
            return await asyncio.to_thread(self.pool.get, route, index)
        except Exception as err:
            raise APIError(
                502,
                f"The endpoint for '{route.model}' could not be started: {err}",
                type="server_error",
                code="executor_failed",
            ) from None

    def _finished(self, route: Route, done: Future[Any]) -> None:
        error = done.exception()
        self.tracker.finish(
            route.endpoint_name, answered=error is None, error=None if error is None else str(error)
        )
