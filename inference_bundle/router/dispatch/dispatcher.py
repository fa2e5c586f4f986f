"""Send one request to a model: down its server's connection when one is up, else as a task.

A warm model's servers have dialled this router (``router.dataplane``): its requests go down
the least busy connection, once a place on its servers is free (``router.dispatch.admission``),
and its answers come back as the server writes them. A cold model, or one whose servers are
not connected, gets a task through its endpoint's executor (``router.dispatch.task_path``);
the task starts (or finds) the server, answers whole, and tells the server where to dial, so
that the next request rides the connection. A stream on a model with no connection waits for
the task to start the server and for the server to dial in, then streams; failing that, it
is answered whole through the task.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import replace
from typing import Any

from inference_bundle.config.queue_settings import QueueSettings
from inference_bundle.router.dataplane.connections import AnswerTooLarge, NodeConnection, NodeGone
from inference_bundle.router.dataplane.plane import DataPlane
from inference_bundle.router.dispatch.admission import FREE, Admission, Asker, Slot
from inference_bundle.router.dispatch.answers import Answer, Streamed
from inference_bundle.router.dispatch.errors import (
    answer_too_large,
    request_timeout_s,
    server_gone,
    too_slow,
)
from inference_bundle.router.dispatch.replica_tasks import ReplicaTasks
from inference_bundle.router.dispatch.runtime_requests import (
    ENSURE,
    body_bytes,
    is_form,
    media_type,
    whole,
)
from inference_bundle.router.dispatch.scheduler_listing import JobListing
from inference_bundle.router.dispatch.task_path import OnWait, TaskPath
from inference_bundle.router.executors.pool import ExecutorPool
from inference_bundle.router.fleet.maintenance import Maintenance
from inference_bundle.router.fleet.replicas import Replicas
from inference_bundle.router.fleet.states import StateTracker
from inference_bundle.router.node_envelope import Envelope
from inference_bundle.router.routes import Route

# A request whose line closes before its answer begins goes down another, or through a task.
_CONNECTION_TRIES = 2

log = logging.getLogger("router.dispatch")


class Dispatcher(TaskPath):
    """Sends requests for routes: over the data plane when it can, as tasks otherwise
    (``TaskPath``). Down a connection, a request first takes a place on the model's servers
    (``router.dispatch.admission``): with every place taken, it waits in the fair queue.
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
        queue: QueueSettings | None = None,
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
        # Places on the servers, and the fair queue for them (router.dispatch.admission).
        self.admission = Admission(queue or QueueSettings(enabled=False), self._ready_servers)
        if plane is not None:  # a server that joins takes waiting requests at once
            plane.hub.on_arrival = self.admission.wake

    async def send(
        self,
        route: Route,
        request: dict[str, Any],
        on_wait: OnWait | None,
        asker: Asker | None = None,
    ) -> Answer:
        """A whole answer: down a connection once the model has a place for it (a
        session's on the session's replica, while it can take it), else through a task."""
        began = time.monotonic()
        session = None if asker is None else asker.session
        # A form rides only a connection: a cold model is started first.
        if is_form(request) and self.pick(route) is None:
            await self._connect(route, on_wait, began)
        if self.pick(route, session) is not None:
            slot = await self._admitted(route, asker, on_wait)
            try:
                for _ in range(_CONNECTION_TRIES):
                    if (connection := self.pick(route, session)) is None:
                        break
                    answer = await self._over(connection, route, request, began)
                    if answer is not None:
                        return replace(answer, queue_wait_s=slot.waited_s)
            finally:
                slot.release()
        return await self._through_task(route, whole(request), on_wait, began)

    async def stream(
        self,
        route: Route,
        request: dict[str, Any],
        on_wait: OnWait | None,
        asker: Asker | None = None,
    ) -> Streamed | Answer:
        """A streamed answer down a connection, once the model has a place for it; failing
        that, a whole one through a task."""
        began = time.monotonic()
        session = None if asker is None else asker.session
        if self.plane is not None:
            cold = False
            start_wait = 0.0
            if self.pick(route, session) is None:
                envelope, cold, _ = await self._connect(route, on_wait, began)
                start_wait = envelope.timings.start_wait_s
            if self.pick(route, session) is not None:
                slot = await self._admitted(route, asker, on_wait)
                try:
                    for _ in range(_CONNECTION_TRIES):
                        if (connection := self.pick(route, session)) is None:
                            break
                        streamed = await self._open_stream(
                            connection, route, request, began, cold, slot
                        )
                        if streamed is not None:  # else its line closed before it began
                            streamed.start_wait_s = start_wait
                            streamed.queue_wait_s = slot.waited_s
                            return streamed  # its finish gives the place back
                except BaseException:
                    slot.release()
                    raise
                slot.release()
        return await self._through_task(route, whole(request), on_wait, began)

    async def _admitted(self, route: Route, asker: Asker | None, on_wait: OnWait | None) -> Slot:
        """A place on the route's servers (router.dispatch.admission)."""
        if asker is None:
            return FREE
        return await self.admission.enter(route, asker, on_wait)

    def _ready_servers(self, endpoint: str) -> int:
        """The endpoint's servers a request may go to: connected, not draining or stopping."""
        if self.plane is None:
            return 0
        return self.plane.hub.usable(endpoint, self.replicas.of(endpoint).retiring())

    def pick(self, route: Route, session: str | None = None) -> NodeConnection | None:
        """A connection of the route's model to send a request down: of its ready replicas
        (none that drains or stops), the session's own, or the less busy of two; None when none is
        connected."""
        if self.plane is None:
            return None
        retiring = self.replicas.of(route.endpoint_name).retiring()
        return self.plane.pick(route, retiring, session)

    async def _connect(
        self, route: Route, on_wait: OnWait | None, began: float
    ) -> tuple[Envelope, bool, NodeConnection | None]:
        """Start the route's server (or find it up) with a credential to dial, and wait a
        little for its connection: (the task's envelope, whether it was cold, the line)."""
        assert self.plane is not None
        ensure = {**ENSURE, "dial": self.plane.dial(route)}
        envelope, cold = await self._task(route, ensure, on_wait, began)
        return envelope, cold, await self.plane.wait_for(route)

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
        slot: Slot = FREE,
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
                slot.release()
                self.tracker.finish(key, answered=answered)

        waited = time.monotonic() - began
        return Streamed(relay, status, content_type, waited, cold, finish)
