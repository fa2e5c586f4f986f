"""How many replicas each model has: asked for by demand, let go when quiet, rotated before
their walltime, replaced when lost.

Only the router sees demand (its requests in flight and waiting for a start); the scheduler
work stays with each replica's engine and Parsl provider. Once a second (``replicas.check_s``)
the autoscaler looks at each model and acts:

- **scale out**: demand above ``target_in_flight`` × (ready + on the way) for
  ``scale_out_window_s`` asks for one more, up to ``replicas.max``. A replica queued or
  starting counts as capacity on the way, so a queued job holding the demand asks for no other.
- **min**: fewer replicas (ready or on the way) than ``replicas.min`` asks for one more.
- **scale in**: with more ready replicas than ``max(min, 1)``, once the model's demand has
  fitted in one fewer replica's targets for ``scale_in_idle_s``, the least busy is drained.
  (Balanced by fewest in flight, no replica idles alone while any load is left, so "nothing
  to do" is read of the model, not of one replica.) The last replica keeps the node's idle
  teardown (``idle_timeout_s``: 2 hours on Sophia).
- **walltime**: a replica whose job nears its walltime (the time a start takes plus
  ``rotation_margin_s``) gets a successor; when that one is ready, or
  ``stop_before_walltime_s`` before the end, the old one is drained.
- **drained** replicas stop (their job is released) once no request of theirs is in flight;
  a stopping replica takes no requests until its connection is gone, and is then forgotten.
- **lost**: a ready replica with no connection for ``lost_after_s`` (its server or node died)
  is let go; min and demand then ask for a replacement if the model needs one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from inference_bundle.config.replica_settings import ReplicaSettings
from inference_bundle.router.fleet.replicas import Phase, Replica, ReplicaSet
from inference_bundle.router.routes import Route


@dataclass(frozen=True)
class Action:
    """One thing to do for a model: start (a new replica), drain, stop or forget one."""

    kind: str  # "start" | "drain" | "stop" | "forget" | "gone" (a stopped one's line closed)
    reason: str
    index: int | None = None


# After a start that failed, the next waits this long, doubled with each failure in a row.
RETRY_FIRST_S = 30.0
RETRY_MOST_S = 900.0


@dataclass
class _Pace:
    """An endpoint's running windows."""

    over_since: float | None = None  # demand above the capacity since
    fits_since: float | None = None  # demand within one fewer replica since
    failures: int = 0  # starts that failed in a row
    retry_at: float = 0.0  # no new start before this


@dataclass
class Autoscaler:
    """Decides, for one model at a time, what its replicas need (``decide``)."""

    settings: ReplicaSettings
    # The model's requests in flight or waiting at this router.
    demand: Callable[[Route], int]
    # The live connections of an endpoint: server id → requests in flight on it.
    connected: Callable[[str], Mapping[str, int]]
    _paces: dict[str, _Pace] = field(default_factory=dict)

    def decide(self, route: Route, replicas: ReplicaSet, now: float) -> list[Action]:
        pace = self._paces.setdefault(route.endpoint_name, _Pace())
        live = self.connected(route.endpoint_name)
        actions = self._losses(replicas, live, now)
        lost = {a.index for a in actions}
        current = [r for r in replicas.all() if r.index not in lost]
        actions += self._drained(current, live)
        actions += self._walltimes(route, current, live, now)
        draining = {a.index for a in actions if a.kind == "drain"}
        serving = [
            r
            for r in current
            if r.phase == Phase.READY and r.index not in draining and r.successor is None
        ]
        coming = [r for r in current if r.phase == Phase.STARTING]
        # A retiring replica still serves, but its successor, on the way, counts for it.
        active = len(serving) + len(coming)
        demand = self.demand(route)
        capacity = route.target_in_flight * active
        if demand > capacity:
            pace.over_since = now if pace.over_since is None else pace.over_since
        else:
            pace.over_since = None
        scalable = route.max_replicas > 1 or route.min_replicas > 0
        if not scalable or now < pace.retry_at:
            return actions
        if active < route.min_replicas:
            actions.append(Action("start", "min"))
        elif (
            pace.over_since is not None
            and now - pace.over_since >= self.settings.scale_out_window_s
            and active < route.max_replicas
        ):
            actions.append(Action("start", "demand"))
            pace.over_since = None
        actions += self._scale_in(route, pace, serving, coming, live, demand, now)
        return actions

    def start_failed(self, route: Route, now: float) -> float:
        """A replica of the route's model did not start: the next start waits (30 s, then
        doubling up to 15 min), so that a broken environment does not fill the scheduler's
        queue with jobs. Returns the wait."""
        pace = self._paces.setdefault(route.endpoint_name, _Pace())
        wait = min(RETRY_MOST_S, RETRY_FIRST_S * 2.0**pace.failures)
        pace.failures += 1
        pace.retry_at = now + wait
        return wait

    def started(self, route: Route) -> None:
        """A replica of the route's model started: the next failure waits the first wait."""
        pace = self._paces.setdefault(route.endpoint_name, _Pace())
        pace.failures, pace.retry_at = 0, 0.0

    def _losses(self, replicas: ReplicaSet, live: Mapping[str, int], now: float) -> list[Action]:
        """Ready replicas whose server has not been connected for lost_after_s, and
        stopping ones whose server has hung up."""
        actions = []
        for replica in replicas.all():
            if replica.phase == Phase.STARTING or replica.server_id is None:
                continue
            if replica.phase == Phase.STOPPING:
                if replica.server_id not in live:
                    actions.append(Action("gone", "stopped", replica.index))
                continue
            if replica.server_id in live:
                replica.unconnected_since = None
                continue
            if replica.unconnected_since is None:
                replica.unconnected_since = now
            elif now - replica.unconnected_since >= self.settings.lost_after_s:
                reason = "drained" if replica.phase == Phase.DRAINING else "lost"
                actions.append(Action("forget", reason, replica.index))
        return actions

    def _drained(self, current: list[Replica], live: Mapping[str, int]) -> list[Action]:
        """Draining replicas with nothing in flight: stop them."""
        return [
            Action("stop", r.drain_reason or "drained", r.index)
            for r in current
            if r.phase == Phase.DRAINING and not live.get(r.server_id or "", 0)
        ]

    def _walltimes(
        self, route: Route, current: list[Replica], live: Mapping[str, int], now: float
    ) -> list[Action]:
        """Successors for replicas near their walltime; drains for those whose successor
        is ready (or whose end is too near to wait)."""
        if route.walltime_s is None:
            return []
        by_index = {r.index: r for r in current}
        actions = []
        for replica in current:
            if replica.phase != Phase.READY or replica.held_since is None:
                continue
            ends = replica.held_since + route.walltime_s
            successor = by_index.get(replica.successor) if replica.successor is not None else None
            if replica.successor is not None and successor is None:
                replica.successor = None  # its successor failed: ask again below
            if replica.successor is None:
                ready_at = now if replica.ready_at is None else replica.ready_at
                start = ready_at - replica.asked_at  # what its own start took
                if now >= ends - start - self.settings.rotation_margin_s:
                    actions.append(Action("start", "walltime", replica.index))
                continue
            ready = (
                successor is not None
                and successor.phase == Phase.READY
                and (successor.server_id or "") in live
            )
            if ready or now >= ends - self.settings.stop_before_walltime_s:
                actions.append(Action("drain", "walltime", replica.index))
        return actions

    def _scale_in(
        self,
        route: Route,
        pace: _Pace,
        serving: list[Replica],
        coming: list[Replica],
        live: Mapping[str, int],
        demand: int,
        now: float,
    ) -> list[Action]:
        """Drain the least busy replica once the demand has fitted in one fewer for
        scale_in_idle_s."""
        floor = max(route.min_replicas, 1)
        if coming or len(serving) <= floor:
            pace.fits_since = None
            return []
        if demand > route.target_in_flight * (len(serving) - 1):
            pace.fits_since = None
            return []
        if pace.fits_since is None:
            pace.fits_since = now
            return []
        if now - pace.fits_since < route.entry.endpoint.scale_in_idle_s:
            return []
        pace.fits_since = now  # the next one waits a whole window again
        quietest = min(serving, key=lambda r: (live.get(r.server_id or "", 0), -r.index))
        return [Action("drain", "idle", quietest.index)]
