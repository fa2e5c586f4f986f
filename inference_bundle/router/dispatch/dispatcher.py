"""Send one request to a model: down its server's connection when one is up, else as a task.

A warm model's servers have dialled this router (``router.dataplane``): its requests go down
the least busy connection and its answers come back as the server writes them. A cold model,
or one whose servers are not connected, gets a task through its endpoint's executor; the task
starts (or finds) the server, answers whole, and tells the server where to dial, so that the
next request rides the connection. A stream on a model with no connection waits for the task
to start the server and for the server to dial in, then streams; failing that, it is
answered whole through the task.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from typing import Any

from node_runtime.entrypoints import serve

from inference_bundle.router.dataplane.connections import (
    AnswerTooLarge,
    NodeConnection,
    NodeGone,
    server_label,
)
from inference_bundle.router.dataplane.plane import DataPlane
from inference_bundle.router.dispatch.answers import Answer, Streamed
from inference_bundle.router.dispatch.errors import (
    answer_too_large,
    not_connected,
    request_timeout_s,
    server_gone,
    still_starting,
    task_failed,
    too_slow,
)
from inference_bundle.router.dispatch.job_lookup import JobLookup
from inference_bundle.router.dispatch.replica_tasks import ReplicaTasks
from inference_bundle.router.dispatch.runtime_requests import (
    ENSURE,
    body_bytes,
    is_form,
    media_type,
    whole,
)
from inference_bundle.router.dispatch.scheduler_listing import JobListing
from inference_bundle.router.errors import APIError
from inference_bundle.router.executors.pool import ExecutorPool
from inference_bundle.router.fleet.estimates import Eta
from inference_bundle.router.fleet.maintenance import Maintenance
from inference_bundle.router.fleet.replicas import Replicas
from inference_bundle.router.fleet.states import ModelStatus, StateTracker
from inference_bundle.router.node_envelope import Envelope
from inference_bundle.router.routes import Route

# Told while a request waits: the model's status, seconds waited, and the estimate
# (router.fleet.estimates).
OnWait = Callable[[ModelStatus, float, Eta], Awaitable[None]]
# A task reaches its node after a little travel: its caller's wait ends this much later there.
EXPIRY_MARGIN_S = 5.0
# A request whose line closes before its answer begins goes down another, or through a task.
_CONNECTION_TRIES = 2

log = logging.getLogger("router.dispatch")


class Dispatcher(JobLookup):
    """Sends requests for routes: over the data plane when it can, as tasks otherwise.

    A task waits at most ``wait_s``; past that the request gets a 503 with the model's state
    and Retry-After, while its task goes on starting the model for the next request. A task
    handed to an engine or to Globus Compute cannot be withdrawn, so each carries
    ``expires_at``: when it reaches a node after its caller gave up, the node runtime starts
    the model but does not send the request (no generation nobody reads).

    What the scheduler's listing says of a route's job (``eta``, ``listed_job``,
    ``cluster_jobs``) comes from ``JobLookup``.
    """

    def __init__(
        self,
        pool: ExecutorPool,
        tracker: StateTracker,
        wait_s: float,
        runtime_version: str,
        poll_s: float = 1.0,
        job_listing: JobListing | None = None,
        plane: DataPlane | None = None,
        maintenance: Maintenance | None = None,
        replicas: Replicas | None = None,
    ) -> None:
        super().__init__(job_listing)
        self.plane = plane
        # Which replica each task goes to, which servers drain (router.fleet.replicas).
        self.replicas = replicas or Replicas({})
        self.tasks = ReplicaTasks(pool, plane, self.replicas, runtime_version)
        # The served clusters' maintenance windows: starts a window would cut get a 503.
        self.maintenance = maintenance
        self._pool = pool
        self.tracker = tracker
        self.wait_s = wait_s
        self.runtime_version = runtime_version
        self.poll_s = poll_s

    @property
    def pool(self) -> ExecutorPool:
        return self._pool

    @pool.setter
    def pool(self, pool: ExecutorPool) -> None:
        """Another pool (tests' own executors): the replicas' tasks go to it too."""
        self._pool = self.tasks.pool = pool

    async def send(
        self,
        route: Route,
        request: dict[str, Any],
        on_wait: OnWait | None,
        session: str | None = None,
    ) -> Answer:
        """A whole answer (a session's on the session's replica, while it can take it)."""
        began = time.monotonic()
        # A form rides only a connection: a cold model is started first.
        if is_form(request) and self.pick(route) is None:
            await self._connect(route, on_wait, began)
        for _ in range(_CONNECTION_TRIES):
            if (connection := self.pick(route, session)) is None:
                break
            answer = await self._over(connection, route, request, began)
            if answer is not None:
                return answer
        return await self._through_task(route, whole(request), on_wait, began)

    async def stream(
        self,
        route: Route,
        request: dict[str, Any],
        on_wait: OnWait | None,
        session: str | None = None,
    ) -> Streamed | Answer:
        """A streamed answer down a connection; failing that, a whole one through a task."""
        began = time.monotonic()
        if self.plane is not None:
            connection = self.pick(route, session)
            cold = False
            start_wait = 0.0
            if connection is None:
                envelope, cold, connection = await self._connect(route, on_wait, began)
                start_wait = envelope.timings.start_wait_s
            for _ in range(_CONNECTION_TRIES):
                if connection is None:
                    break
                streamed = await self._open_stream(connection, route, request, began, cold)
                if streamed is not None:
                    streamed.start_wait_s = start_wait
                    return streamed
                connection = self.pick(route, session)  # that line closed before it began
        return await self._through_task(route, whole(request), on_wait, began)

    def pick(self, route: Route, session: str | None = None) -> NodeConnection | None:
        """A connection of the route's model to send a request down: of its ready replicas
        (none that drains), the session's own, or the less busy of two; None when none is
        connected."""
        if self.plane is None:
            return None
        draining = self.replicas.of(route.endpoint_name).draining()
        return self.plane.pick(route, draining, session)

    async def _connect(
        self, route: Route, on_wait: OnWait | None, began: float
    ) -> tuple[Envelope, bool, NodeConnection | None]:
        """Start the route's server (or find it up) with a credential to dial, and wait a
        little for its connection: (the task's envelope, whether it was cold, the line)."""
        assert self.plane is not None
        ensure = {**ENSURE, "dial": self.plane.dial(route)}
        envelope, cold = await self._task(route, ensure, on_wait, began)
        return envelope, cold, await self.plane.wait_for(route)

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

    async def _over(
        self, connection: NodeConnection, route: Route, request: dict[str, Any], began: float
    ) -> Answer | None:
        """A whole answer down a connection; None if the connection closed before the answer
        began (the request may go elsewhere)."""
        streamed = await self._open_stream(connection, route, request, began, cold=False)
        if streamed is None:
            return None
        assert self.plane is not None
        try:
            async with asyncio.timeout(request_timeout_s(route)):
                raw = await streamed.relay.read(self.plane.settings.max_answer_bytes)
        except NodeGone as gone:
            streamed.finish(False)
            raise server_gone(route.model, gone) from None
        except AnswerTooLarge as large:
            streamed.finish(False)
            raise answer_too_large(route, large.limit) from None
        except TimeoutError:
            streamed.relay.cancel()
            streamed.finish(False)
            raise too_slow(route) from None
        except asyncio.CancelledError:
            streamed.relay.cancel()  # the client went away
            streamed.finish(False)
            raise
        streamed.finish(True)
        waited = time.monotonic() - began
        # The body stays bytes: most answers go out as the server wrote them (decoded()).
        return Answer(
            streamed.status,
            None,
            0.0,
            waited,
            cold_start=False,
            via="connection",
            raw=raw,
            server=streamed.server,
        )

    async def _open_stream(
        self,
        connection: NodeConnection,
        route: Route,
        request: dict[str, Any],
        began: float,
        cold: bool,
    ) -> Streamed | None:
        key = route.endpoint_name
        self.tracker.begin_warm(key)
        self.tasks.keep(route, connection)
        try:
            relay = await connection.open(
                request["method"], request["path"], body_bytes(request), media_type(request)
            )
        except NodeGone:
            self.tracker.finish(key, answered=False)
            return None
        try:
            async with asyncio.timeout(request_timeout_s(route)):
                status, content_type = await relay.start()
        except NodeGone as gone:
            self.tracker.finish(key, answered=False)
            if gone.unsent:
                log.warning("%s: a line closed before its answer began; sent again", route.model)
                return None
            raise server_gone(route.model, gone) from None
        except TimeoutError:
            self.tracker.finish(key, answered=False)
            relay.cancel()
            raise too_slow(route) from None
        except asyncio.CancelledError:
            self.tracker.finish(key, answered=False)
            relay.cancel()
            raise
        finished = False

        def finish(answered: bool) -> None:
            nonlocal finished
            if not finished:
                finished = True
                self.tracker.finish(key, answered=answered)

        waited = time.monotonic() - began
        return Streamed(relay, status, content_type, waited, cold, finish)

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
        future = executor.submit(serve, self.runtime_version, route.task_spec(index), request)
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
                await on_wait(status, waited, eta)
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
