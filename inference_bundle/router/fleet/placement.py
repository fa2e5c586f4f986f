"""Which cluster answers a request on the one base URL, for a model several clusters serve.

A request under ``/resource_server/{cluster}/...`` (or pinned with a header, ``api/placing``)
goes where it says and is never moved. On ``/v1/...`` the router orders the clusters that
serve the model, among those the caller may use, and tries them in that order:

1. where the model is hot: a server connected over the data plane, or ready or idle in the
   router's own states (and its last request did not fail);
2. else by expected wait: starting, then queued, then cold or stopped (``STATE_ORDER``);
   within a state, the sooner estimate first (``router.fleet.estimates``: the scheduler's planned
   start for a queued job, the last start's length otherwise), unknown estimates last;
3. clusters in or near a maintenance window that refuses the start (``router.fleet.maintenance``)
   and clusters whose endpoint failed within the last ``FAILURE_BACKOFF_S`` are passed
   over: they come after every other, so a model served by them alone is still tried (and
   answers with its own error: the maintenance 503, the endpoint's 502).

Ties keep the clusters' order (sorted by name), so a choice is stable between requests.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from inference_bundle.router.fleet.estimates import Eta
from inference_bundle.router.fleet.maintenance import Maintenance
from inference_bundle.router.fleet.states import ModelState, ModelStatus, StateTracker
from inference_bundle.router.routes import Route

__all__ = [
    "FAILURE_BACKOFF_S",
    "FAILURE_CODES",
    "MOVABLE_CODES",
    "STATE_ORDER",
    "Placement",
    "Standing",
]

FAILURE_BACKOFF_S = 30.0
"""How long a model's cluster whose endpoint failed is passed over, in seconds.

Long enough that the requests of a busy minute do not each pay for a failing endpoint's
error (a task that cannot start its server fails in a second or two, a dead server's
connection a few seconds after it went), short enough that a cluster back from a hiccup
(an endpoint restarted, a node replaced) gets its requests back within a minute. Past it,
the next request tries the cluster again in its turn: an answer clears the mark, another
failure renews it.
"""

# Errors that say a cluster's endpoint is down or failing (router.dispatch's codes): its task
# failed, its executor could not start or lost the request, its server went away.
FAILURE_CODES = frozenset({"function_failed", "executor_failed", "server_gone"})
# Errors after which nothing was answered, so the request may go to the next cluster: the
# failures, and a maintenance refusal (a window that began since the cluster was chosen).
MOVABLE_CODES = FAILURE_CODES | {"maintenance"}

# How soon each state answers: a running server at once, a starting one before a queued one,
# a cold or stopped one last. READY and IDLE count only when the model is hot (``Standing``).
STATE_ORDER = {
    ModelState.READY: 0,
    ModelState.IDLE: 0,
    ModelState.STARTING: 1,
    ModelState.QUEUED: 2,
    ModelState.COLD: 3,
    ModelState.STOPPED: 3,
}
_WAITING = (ModelState.STARTING, ModelState.QUEUED)

EtaOf = Callable[[Route, ModelStatus], Awaitable[Eta]]
log = logging.getLogger("router.placement")


@dataclass(frozen=True)
class Standing:
    """One candidate cluster as the placement judged it, for ordering and for logs."""

    route: Route
    state: ModelState
    hot: bool
    wait_s: float | None  # seconds until it should answer, where known
    passed_over: str | None  # why it goes after the others: "maintenance", "failing: ..."

    @property
    def order(self) -> int:
        if self.hot:
            return 0
        # Ready, yet its last request failed: its server may be gone, as good as cold.
        order = STATE_ORDER.get(self.state, 3)
        return 3 if order == 0 else order

    def key(self, index: int) -> tuple[bool, int, bool, float, int]:
        unknown = self.wait_s is None
        return (self.passed_over is not None, self.order, unknown, self.wait_s or 0.0, index)


class Placement:
    """Orders a model's clusters for a request, and remembers which endpoints are failing.

    ``connected`` says whether a route's server rides a connection (the data plane);
    ``eta_of`` gives a waiting model's estimate (``Dispatcher.eta``: it may ask the
    scheduler's listing, so it is asked only when two clusters are waiting and none is hot).
    """

    def __init__(
        self,
        tracker: StateTracker,
        *,
        maintenance: Maintenance | None = None,
        connected: Callable[[Route], bool] | None = None,
        eta_of: EtaOf | None = None,
        backoff_s: float = FAILURE_BACKOFF_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.tracker = tracker
        self.maintenance = maintenance
        self.connected = connected
        self.eta_of = eta_of
        self.backoff_s = backoff_s
        self.clock = clock
        self._failing: dict[str, tuple[float, str]] = {}  # endpoint -> (until, why)

    def failed(self, route: Route, why: str) -> None:
        """The route's endpoint failed: pass its cluster over for ``backoff_s``."""
        self._failing[route.endpoint_name] = (self.clock() + self.backoff_s, why)
        log.warning(
            "%s on %s failed (%s); other clusters first for %g s",
            route.model,
            route.cluster,
            why,
            self.backoff_s,
        )

    def answered(self, route: Route) -> None:
        """The route's endpoint answered: it is failing no more."""
        self._failing.pop(route.endpoint_name, None)

    def failing(self, route: Route) -> str | None:
        """Why the route's cluster is passed over for failing; None once its backoff ended."""
        found = self._failing.get(route.endpoint_name)
        if found is None:
            return None
        until, why = found
        if self.clock() >= until:
            del self._failing[route.endpoint_name]
            return None
        return why

    async def order(self, routes: Sequence[Route]) -> list[Standing]:
        """The routes in the order to try them (see the module's rules)."""
        standings = [self._standing(route) for route in routes]
        if len(standings) > 1 and self.eta_of is not None:
            standings = await self._with_estimates(standings)
        ranked = sorted(enumerate(standings), key=lambda pair: pair[1].key(pair[0]))
        return [standing for _, standing in ranked]

    def _standing(self, route: Route) -> Standing:
        status = self.tracker.status(route.endpoint_name)
        connected = self.connected is not None and self.connected(route)
        running = status.state in (ModelState.READY, ModelState.IDLE)
        hot = connected or (running and status.last_error is None)
        wait: float | None = 0.0 if hot else None
        if not hot and status.state not in _WAITING:
            wait = status.last_start_s  # a cold start takes about as long as the last one
        return Standing(route, status.state, hot, wait, self._passed_over(route, status))

    def _passed_over(self, route: Route, status: ModelStatus) -> str | None:
        failing = self.failing(route)
        if failing is not None:
            return f"failing: {failing}"
        # During a window every cluster's model is passed over (a hot server answers only
        # until the cluster takes it down); before one, a start that could not finish is.
        maintenance = self.maintenance
        if maintenance is None:
            return None
        refused = maintenance.refusal(route, status, maintenance.now())
        return None if refused is None else "maintenance"

    async def _with_estimates(self, standings: list[Standing]) -> list[Standing]:
        """Waiting candidates with their estimates, when the choice is among waiting ones."""
        if any(s.hot and s.passed_over is None for s in standings):
            return standings
        waiting = [i for i, s in enumerate(standings) if s.state in _WAITING and not s.hot]
        if not waiting:
            return standings
        assert self.eta_of is not None
        estimates = await asyncio.gather(
            *(self._wait_s(standings[i].route) for i in waiting), return_exceptions=True
        )
        updated = list(standings)
        for i, wait in zip(waiting, estimates, strict=True):
            if isinstance(wait, float):
                s = updated[i]
                updated[i] = Standing(s.route, s.state, s.hot, wait, s.passed_over)
        return updated

    async def _wait_s(self, route: Route) -> float | None:
        assert self.eta_of is not None
        eta = await self.eta_of(route, self.tracker.status(route.endpoint_name))
        if eta.estimated_ready_at is None:
            return None
        return max(0.0, eta.estimated_ready_at - eta.now)
