"""The autoscaler's decisions for one model, on a clock the test moves."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from inference_bundle.config.catalog import load_catalog
from inference_bundle.config.endpoint_schema import Replicas
from inference_bundle.config.replica_settings import ReplicaSettings
from inference_bundle.router.fleet.autoscaler import Action, Autoscaler
from inference_bundle.router.fleet.replicas import Phase, Replica, ReplicaSet
from inference_bundle.router.routes import Route, RouteTable

pytestmark = pytest.mark.timeout(30)
ROOT = Path(__file__).resolve().parents[3]
SETTINGS = ReplicaSettings(
    scale_out_window_s=10, rotation_margin_s=60, stop_before_walltime_s=30, lost_after_s=20
)


def route(
    low: int = 0, high: int = 3, target: int = 4, idle_s: int = 100, walltime_s: float | None = None
) -> Route:
    [base] = [
        r for r in RouteTable([load_catalog(ROOT, "local")]).routes() if "tiny-llama" in r.model
    ]
    endpoint = base.entry.endpoint.model_copy(
        update={
            "replicas": Replicas(min=low, max=high),
            "target_in_flight": target,
            "scale_in_idle_s": idle_s,
        }
    )
    return replace(base, entry=replace(base.entry, endpoint=endpoint), walltime_s=walltime_s)


class Model:
    """A model's demand and its servers' connections, as the router would count them."""

    def __init__(self, r: Route) -> None:
        self.route = r
        self.demand = 0
        self.live: dict[str, int] = {}
        self.replicas = ReplicaSet(r.endpoint_name, r.max_replicas)
        self.scaler = Autoscaler(SETTINGS, lambda _: self.demand, lambda _: self.live)

    def decide(self, now: float) -> list[Action]:
        return self.scaler.decide(self.route, self.replicas, now)

    def ready(self, reason: str, now: float, host: str, in_flight: int = 0) -> int:
        """A replica asked for, its server up on ``host`` and connected."""
        replica = self.replicas.claim(reason, now)
        assert replica is not None
        assert self.replicas.placed(replica.index, host, f"s-{host}", 0.0, now) is None
        self.live[f"s-{host}"] = in_flight
        return replica.index


def succeeded(model: Model, old: int, now: float) -> tuple[Replica, Replica]:
    """A successor asked for replica ``old`` at ``now``, as the control does."""
    successor = model.replicas.claim("walltime", now)
    retiring = model.replicas.get(old)
    assert successor is not None and retiring is not None
    retiring.successor = successor.index
    return retiring, successor


def kinds(actions: list[Action]) -> list[tuple[str, str, Any]]:
    return [(a.kind, a.reason, a.index) for a in actions]


def test_demand_above_the_target_for_the_window_asks_for_one_more() -> None:
    model = Model(route(target=4))
    model.ready("request", 0, "node-a", in_flight=4)
    model.demand = 6
    assert model.decide(100) == []  # over since 100
    assert model.decide(105) == []  # not yet the window
    assert kinds(model.decide(110)) == [("start", "demand", None)]


def test_a_dip_restarts_the_window() -> None:
    model = Model(route(target=4))
    model.ready("request", 0, "node-a")
    model.demand = 6
    model.decide(100)
    model.demand = 3
    model.decide(105)
    model.demand = 6
    assert model.decide(112) == []
    assert kinds(model.decide(122)) == [("start", "demand", None)]


def test_a_replica_on_its_way_counts_so_a_queued_job_asks_for_no_other() -> None:
    model = Model(route(target=4))
    model.ready("request", 0, "node-a")
    model.replicas.claim("demand", 50)  # queued at the scheduler
    model.demand = 8  # two replicas' worth: the one coming covers it
    for now in range(100, 200, 5):
        assert model.decide(now) == []
    model.demand = 9
    model.decide(200)
    assert kinds(model.decide(210)) == [("start", "demand", None)]


def test_never_past_max() -> None:
    model = Model(route(high=2, target=1))
    model.ready("request", 0, "node-a")
    model.ready("demand", 0, "node-b")
    model.demand = 50
    model.decide(100)
    assert model.decide(200) == []


def test_min_is_kept_started() -> None:
    model = Model(route(low=2))
    assert kinds(model.decide(0)) == [("start", "min", None)]
    model.replicas.claim("min", 0)
    assert kinds(model.decide(1)) == [("start", "min", None)]
    model.replicas.claim("min", 1)
    assert model.decide(2) == []


def test_a_model_that_is_not_scaled_asks_for_nothing() -> None:
    model = Model(route(low=0, high=1, target=1))
    model.ready("request", 0, "node-a")
    model.demand = 100
    model.decide(0)
    assert model.decide(100) == []


def test_quiet_demand_drains_the_least_busy_replica_then_stops_it() -> None:
    model = Model(route(target=4, idle_s=100))
    model.ready("request", 0, "node-a", in_flight=1)
    quiet = model.ready("demand", 0, "node-b", in_flight=0)
    model.demand = 1  # fits in one replica
    assert model.decide(1000) == []
    assert model.decide(1050) == []
    assert kinds(model.decide(1100)) == [("drain", "idle", quiet)]
    drained = model.replicas.get(quiet)
    assert drained is not None
    drained.phase, drained.drain_reason = Phase.DRAINING, "idle"  # as the control does
    model.live["s-node-b"] = 2  # requests begun before the drain finish
    assert model.decide(1101) == []
    model.live["s-node-b"] = 0
    assert kinds(model.decide(1102)) == [("stop", "idle", quiet)]


def test_a_stopping_replica_takes_no_requests_until_its_server_hangs_up() -> None:
    # Its job is being cancelled: the server is still connected, idle, for a while.
    model = Model(route(target=4, idle_s=100))
    model.ready("request", 0, "node-a")
    stopping = model.ready("demand", 0, "node-b")
    replica = model.replicas.get(stopping)
    assert replica is not None
    replica.phase = Phase.STOPPING  # as the control does on "stop"
    assert model.replicas.retiring() == {"s-node-b"}  # no request is sent to it
    assert model.decide(1) == []  # no other start, drain or loss meanwhile
    del model.live["s-node-b"]  # its server hung up
    assert kinds(model.decide(2)) == [("gone", "stopped", stopping)]


def test_the_last_replica_is_never_drained_for_quiet() -> None:
    model = Model(route(target=4, idle_s=10))
    model.ready("request", 0, "node-a")
    for now in range(0, 1000, 10):
        assert model.decide(now) == []


def test_scale_in_waits_for_demand_to_fit_in_one_fewer() -> None:
    model = Model(route(target=4, idle_s=100))
    model.ready("request", 0, "node-a", in_flight=3)
    model.ready("demand", 0, "node-b", in_flight=3)
    model.demand = 6
    for now in range(0, 1000, 50):
        assert model.decide(now) == []


def test_a_replica_near_its_walltime_gets_a_successor_then_drains_once_it_is_ready() -> None:
    model = Model(route(high=1, walltime_s=3600))
    old = model.ready("request", 0, "node-a")  # its job began at 0; it took 0 s to start
    assert model.decide(3000) == []
    # 3600 - 60 (margin) - 0 (its own start): the successor is asked for.
    assert kinds(model.decide(3540)) == [("start", "walltime", old)]
    retiring, successor = succeeded(model, old, 3540)
    assert model.decide(3545) == []  # the old one serves while the new one starts
    model.replicas.placed(successor.index, "node-b", "s-node-b", 0.0, 3550)
    model.live["s-node-b"] = 0
    assert kinds(model.decide(3551)) == [("drain", "walltime", old)]


def test_a_successor_late_to_start_still_lets_the_old_one_drain_before_the_end() -> None:
    model = Model(route(high=1, walltime_s=3600))
    old = model.ready("request", 0, "node-a")
    retiring, successor = succeeded(model, old, 3540)
    assert model.decide(3560) == []
    assert kinds(model.decide(3570)) == [("drain", "walltime", old)]  # 30 s before its end


def test_a_replica_with_no_connection_for_a_while_is_lost() -> None:
    model = Model(route(target=4))
    model.ready("request", 0, "node-a")
    gone = model.ready("demand", 0, "node-b")
    del model.live["s-node-b"]  # its server was killed
    assert model.decide(100) == []
    assert kinds(model.decide(120)) == [("forget", "lost", gone)]


def test_a_lost_replica_below_min_is_replaced() -> None:
    model = Model(route(low=2, target=4))
    model.ready("min", 0, "node-a")
    gone = model.ready("min", 0, "node-b")
    del model.live["s-node-b"]
    model.decide(100)
    assert kinds(model.decide(120)) == [("forget", "lost", gone), ("start", "min", None)]


def test_a_replica_on_a_node_another_holds_is_a_duplicate() -> None:
    replicas = ReplicaSet("e", 2)
    first = replicas.claim("request", 0)
    second = replicas.claim("demand", 0)
    assert first is not None and second is not None
    assert replicas.placed(first.index, "node-a", "s-1", 0.0, 1) is None
    holder = replicas.placed(second.index, "node-a", "s-2", 0.0, 2)
    assert holder is not None and holder.index == first.index


def test_a_request_waits_for_a_replica_on_its_way_rather_than_ask_for_another() -> None:
    replicas = ReplicaSet("e", 2)
    assert replicas.for_request(0) == 0
    assert replicas.for_request(1) == 0  # the first request's replica is starting
    replicas.abandon(0)  # its task failed: no server came of it
    assert replicas.all() == []
    assert replicas.for_request(2) == 0


def test_a_server_restarted_in_its_job_keeps_the_jobs_walltime() -> None:
    model = Model(route(high=1, walltime_s=3600))
    old = model.ready("request", 0, "node-a")  # its job began at 0
    # Its server died and the node runtime started another in the same job at 2000.
    assert model.replicas.placed(old, "node-a", "s-restarted", 30.0, 2030) is None
    model.live["s-restarted"] = 0
    assert kinds(model.decide(3540)) == [("start", "walltime", old)]  # the job's end rules


def test_a_failed_start_waits_longer_each_time() -> None:
    model = Model(route(low=1))
    assert kinds(model.decide(0)) == [("start", "min", None)]
    assert model.scaler.start_failed(model.route, 10) == 30
    assert model.decide(20) == [] and model.decide(39) == []
    assert kinds(model.decide(40)) == [("start", "min", None)]
    assert model.scaler.start_failed(model.route, 50) == 60  # doubled
    assert model.decide(100) == []
    assert kinds(model.decide(110)) == [("start", "min", None)]
    for now in range(200, 2000, 100):
        model.scaler.start_failed(model.route, now)
    assert model.scaler.start_failed(model.route, 5000) == 900  # at most 15 min
    model.scaler.started(model.route)
    assert kinds(model.decide(5001)) == [("start", "min", None)]
    assert model.scaler.start_failed(model.route, 5002) == 30  # afresh


def test_a_successor_may_share_its_predecessors_node_with_a_server_of_its_own() -> None:
    model = Model(route(high=2, walltime_s=3600))
    old = model.ready("request", 0, "node-a")
    retiring, successor = succeeded(model, old, 3540)
    assert model.replicas.placed(successor.index, "node-a", "s-2", 0.0, 3550) is None
    model.live["s-2"] = 0
    assert kinds(model.decide(3551)) == [("drain", "walltime", old)]
    # Any other replica on a node another holds is a duplicate.
    other = model.replicas.claim("demand", 3552)
    assert other is not None
    holder = model.replicas.placed(other.index, "node-a", "s-3", 0.0, 3553)
    assert holder is not None
