"""The autoscaler's decisions, carried out: replicas started, drained, stopped, let go.

Once every ``replicas.check_s`` each model is looked at (``fleet.autoscaler.Autoscaler``);
a new replica is a task to a fresh index of its endpoint (its own engine asks the scheduler
for its own job), a stopped one's engine is shut down (its provider cancels the job).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from inference_bundle.config.replica_settings import ReplicaSettings
from inference_bundle.router.dispatch.dispatcher import Dispatcher
from inference_bundle.router.fleet.autoscaler import Action, Autoscaler
from inference_bundle.router.fleet.replicas import Phase
from inference_bundle.router.routes import Route

log = logging.getLogger("router.replicas")

# Told of each change: (model, change, reason); change is out, drain, in, lost or failed.
OnChange = Callable[[str, str, str], None]


class ReplicaControl:
    """Runs the autoscaler over the router's routes and does what it decides."""

    def __init__(
        self,
        routes: list[Route],
        dispatcher: Dispatcher,
        settings: ReplicaSettings,
        on_change: OnChange | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.routes = routes
        self.dispatcher = dispatcher
        self.settings = settings
        self.clock = clock
        self.on_change = on_change or (lambda model, change, reason: None)
        plane = dispatcher.plane

        def demand(route: Route) -> int:
            """This router's requests on the model (in flight, waiting for a start or for a
            place), and what its servers say they run or queue for other routers."""
            name = route.endpoint_name
            own = dispatcher.tracker.status(name).in_flight + dispatcher.admission.waiting(name)
            return own + (0 if plane is None else plane.hub.beyond_own(name))

        self.autoscaler = Autoscaler(
            settings,
            demand=demand,
            connected=(lambda name: {}) if plane is None else plane.hub.in_flight,
        )
        self._loop: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self.routes and self._loop is None:
            self._loop = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._loop is not None:
            self._loop.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop
            self._loop = None

    async def _run(self) -> None:
        while True:
            try:
                self.tick()
            except Exception:
                log.exception("replica round failed")
            await asyncio.sleep(self.settings.check_s)

    def tick(self) -> None:
        """One round over every route: decide, and set what was decided under way."""
        now = self.clock()
        for route in self.routes:
            replicas = self.dispatcher.replicas.of(route.endpoint_name)
            for action in self.autoscaler.decide(route, replicas, now):
                self._apply(route, action, now)

    def _apply(self, route: Route, action: Action, now: float) -> None:
        replicas = self.dispatcher.replicas.of(route.endpoint_name)
        tasks = self.dispatcher.tasks
        if action.kind == "start":
            replica = replicas.claim(action.reason, now)
            if replica is None:
                return
            if action.index is not None and (old := replicas.get(action.index)) is not None:
                old.successor = replica.index  # a walltime successor
            log.info("%s: replica %d asked for (%s)", route.model, replica.index, action.reason)
            self.on_change(route.model, "out", action.reason)
            tasks.in_background(self._start(route, replica.index))
        elif action.kind == "drain" and (replica := replicas.get(action.index or 0)):
            replica.phase, replica.drain_reason = Phase.DRAINING, action.reason
            log.info("%s: replica %d drains (%s)", route.model, replica.index, action.reason)
            self.on_change(route.model, "drain", action.reason)
        elif action.kind == "gone" and action.index is not None:
            replicas.remove(action.index)
        elif action.kind in ("stop", "forget") and action.index is not None:
            if action.kind == "stop" and (replica := replicas.get(action.index)):
                # Kept, taking no requests, until its server hangs up: its connection stays
                # up, idle, while the scheduler ends the job, and would draw new requests.
                replica.phase = Phase.STOPPING
            else:
                replicas.remove(action.index)
            change = "in" if action.kind == "stop" else "lost"
            log.info("%s: replica %d %s (%s)", route.model, action.index, change, action.reason)
            self.on_change(route.model, change, action.reason)
            scaled = route.max_replicas > 1 or route.min_replicas > 0
            if action.kind == "stop" or scaled or action.index != 0:
                # Its engine goes, and with it the job. A lone replica 0 of a model that is
                # not scaled keeps its engine: the next request restarts the server there.
                pool = self.dispatcher.pool
                tasks.in_background(asyncio.to_thread(pool.drop, route, action.index))

    async def _start(self, route: Route, index: int) -> None:
        try:
            await self.dispatcher.tasks.start(route, index)
        except Exception as err:
            wait = self.autoscaler.start_failed(route, self.clock())
            log.warning(
                "%s: replica %d did not start (%s); the next start in %.0f s",
                route.model,
                index,
                err,
                wait,
            )
            self.dispatcher.replicas.of(route.endpoint_name).remove(index)
            self.on_change(route.model, "failed", type(err).__name__)
            await asyncio.to_thread(self.dispatcher.pool.drop, route, index)
        else:
            self.autoscaler.started(route)
