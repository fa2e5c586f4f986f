"""The placement's rules: which of a model's clusters a request on the one base URL tries
first, given the tracker's states, estimates, maintenance and failures (router.fleet.placement).

The HTTP side (pinning, the header, moving a failed request) is test_placement_http.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from inference_bundle.config.catalog import load_catalog
from inference_bundle.config.profiles import MaintenanceWindow
from inference_bundle.router.fleet.estimates import Eta
from inference_bundle.router.fleet.maintenance import Maintenance
from inference_bundle.router.fleet.placement import FAILURE_BACKOFF_S, Placement, Standing
from inference_bundle.router.fleet.states import ModelState, ModelStatus, StateTracker
from inference_bundle.router.routes import Route, RouteTable
from tests.router.warm_fakes import Clock

pytestmark = pytest.mark.anyio
ROOT = Path(__file__).resolve().parents[3]
TINY = "local/tiny-llama"
CLUSTERS = ("local", "local-slurm")


@dataclass
class Setting:
    """TINY on both local clusters, a tracker and a clock the test moves."""

    tracker: StateTracker
    clock: Clock
    routes: dict[str, Route]
    asked_eta: list[str] = field(default_factory=list)

    def put(self, cluster: str, state: ModelState) -> None:
        """Drive the tracker, as requests would, until ``cluster``'s model is in ``state``."""
        key = self.routes[cluster].endpoint_name
        if state == ModelState.COLD:
            return
        self.tracker.begin(key)  # queued
        if state == ModelState.STARTING:
            self.tracker.waiting(key, node_held=True)
        elif state == ModelState.STOPPED:
            self.tracker.finish(key, answered=False, error="the job ended")
        elif state == ModelState.READY:
            self.tracker.finish(key, answered=True)
        assert self.tracker.status(key).state == state

    def placement(self, **options: object) -> Placement:
        return Placement(self.tracker, clock=self.clock, **options)  # type: ignore[arg-type]

    async def order(self, placement: Placement) -> list[str]:
        standings = await placement.order([self.routes[c] for c in CLUSTERS])
        return [s.route.cluster for s in standings]


@pytest.fixture
def setting() -> Setting:
    table = RouteTable([load_catalog(ROOT, cluster) for cluster in CLUSTERS])
    clock = Clock(1_000_000.0)
    tracker = StateTracker(clock=clock)
    routes = {cluster: table.lookup(TINY, cluster) for cluster in CLUSTERS}
    for route in routes.values():
        tracker.register(route.endpoint_name, route.spec.idle_timeout_s)
    return Setting(tracker, clock, routes)


async def test_ties_keep_the_clusters_order(setting: Setting) -> None:
    assert await setting.order(setting.placement()) == ["local", "local-slurm"]


async def test_the_cluster_where_the_model_is_ready_comes_first(setting: Setting) -> None:
    setting.put("local-slurm", ModelState.READY)
    assert await setting.order(setting.placement()) == ["local-slurm", "local"]
    setting.put("local", ModelState.STARTING)
    assert await setting.order(setting.placement()) == ["local-slurm", "local"]


@pytest.mark.parametrize(
    ("local", "slurm", "first"),
    [
        (ModelState.QUEUED, ModelState.STARTING, "local-slurm"),
        (ModelState.STARTING, ModelState.QUEUED, "local"),
        (ModelState.STOPPED, ModelState.QUEUED, "local-slurm"),
        (ModelState.QUEUED, ModelState.COLD, "local"),
    ],
)
async def test_then_the_shortest_expected_wait_by_state(
    setting: Setting, local: ModelState, slurm: ModelState, first: str
) -> None:
    setting.put("local", local)
    setting.put("local-slurm", slurm)
    assert (await setting.order(setting.placement()))[0] == first


async def test_a_connected_server_is_hot_whatever_the_tracker_says(setting: Setting) -> None:
    setting.put("local", ModelState.STARTING)
    placement = setting.placement(connected=lambda route: route.cluster == "local-slurm")
    [best, _] = await placement.order(list(setting.routes.values()))
    assert (best.route.cluster, best.hot, best.wait_s) == ("local-slurm", True, 0.0)


async def test_a_ready_model_whose_last_request_failed_is_not_hot(setting: Setting) -> None:
    setting.put("local", ModelState.READY)
    key = setting.routes["local"].endpoint_name
    setting.tracker.begin(key)
    setting.tracker.finish(key, answered=False, error="FunctionFailed: no interpreter")
    assert setting.tracker.status(key).state == ModelState.READY
    setting.put("local-slurm", ModelState.STARTING)
    assert await setting.order(setting.placement()) == ["local-slurm", "local"]


def eta_of(setting: Setting, ready_in: dict[str, float | None]) -> object:
    async def eta(route: Route, status: ModelStatus) -> Eta:
        setting.asked_eta.append(route.cluster)
        now = setting.clock()
        wait = ready_in[route.cluster]
        at = None if wait is None else now + wait
        return Eta("queued", None, at, None, None, "scheduler", now)

    return eta


@pytest.mark.parametrize(
    ("ready_in", "first"),
    [
        ({"local": 600.0, "local-slurm": 60.0}, "local-slurm"),
        ({"local": 60.0, "local-slurm": 600.0}, "local"),
        ({"local": None, "local-slurm": 900.0}, "local-slurm"),  # a known estimate first
    ],
)
async def test_the_scheduler_estimate_decides_between_waiting_clusters(
    setting: Setting, ready_in: dict[str, float | None], first: str
) -> None:
    setting.put("local", ModelState.QUEUED)
    setting.put("local-slurm", ModelState.QUEUED)
    placement = setting.placement(eta_of=eta_of(setting, ready_in))
    standings = await placement.order(list(setting.routes.values()))
    assert standings[0].route.cluster == first
    assert sorted(setting.asked_eta) == ["local", "local-slurm"]
    assert {s.route.cluster: s.wait_s for s in standings} == ready_in


async def test_no_estimate_is_asked_for_when_a_cluster_is_hot(setting: Setting) -> None:
    setting.put("local", ModelState.QUEUED)
    setting.put("local-slurm", ModelState.READY)
    placement = setting.placement(eta_of=eta_of(setting, {"local": 1.0, "local-slurm": 1.0}))
    assert await setting.order(placement) == ["local-slurm", "local"]
    assert setting.asked_eta == []


async def test_a_cold_cluster_that_started_faster_last_time_comes_first(setting: Setting) -> None:
    for cluster, start_s in (("local", 90.0), ("local-slurm", 30.0)):
        key = setting.routes[cluster].endpoint_name
        setting.tracker.begin(key)
        setting.clock.now += start_s
        setting.tracker.finish(key, answered=True)
    setting.clock.now += 3 * 7200  # both idle timeouts passed: stopped
    placement = setting.placement()
    standings = await placement.order(list(setting.routes.values()))
    assert [(s.route.cluster, s.state, s.wait_s) for s in standings] == [
        ("local-slurm", ModelState.STOPPED, 30.0),
        ("local", ModelState.STOPPED, 90.0),
    ]


async def test_a_failing_cluster_is_passed_over_until_its_backoff_ends(setting: Setting) -> None:
    setting.put("local", ModelState.READY)
    placement = setting.placement()
    placement.failed(setting.routes["local"], "function_failed")
    [first, last] = await placement.order(list(setting.routes.values()))
    assert first.route.cluster == "local-slurm"
    assert (last.route.cluster, last.passed_over) == ("local", "failing: function_failed")
    setting.clock.now += FAILURE_BACKOFF_S - 1
    assert await setting.order(placement) == ["local-slurm", "local"]
    setting.clock.now += 1  # the backoff ends: tried again in its turn
    assert await setting.order(placement) == ["local", "local-slurm"]
    assert placement.failing(setting.routes["local"]) is None


async def test_an_answer_clears_a_failure(setting: Setting) -> None:
    setting.put("local", ModelState.READY)
    placement = setting.placement()
    placement.failed(setting.routes["local"], "server_gone")
    placement.answered(setting.routes["local"])
    assert await setting.order(placement) == ["local", "local-slurm"]


async def test_every_cluster_failing_still_gives_an_order_to_try(setting: Setting) -> None:
    placement = setting.placement()
    for route in setting.routes.values():
        placement.failed(route, "executor_failed")
    standings = await placement.order(list(setting.routes.values()))
    assert [s.route.cluster for s in standings] == ["local", "local-slurm"]
    assert all(s.passed_over == "failing: executor_failed" for s in standings)


def in_maintenance(setting: Setting, cluster: str, start: str, end: str) -> Maintenance:
    profiles = {}
    for name in CLUSTERS:
        profile = load_catalog(ROOT, name).profile
        if name == cluster:
            window = MaintenanceWindow.model_validate(
                {"start": start, "end": end, "reason": "quarterly maintenance"}
            )
            profile = profile.model_copy(update={"maintenance": [window]})
        profiles[name] = profile
    return Maintenance(profiles, clock=setting.clock)


async def test_a_cluster_in_maintenance_is_passed_over(setting: Setting) -> None:
    setting.clock.at("2026-12-15T15:00:00+00:00")
    setting.put("local", ModelState.READY)
    during = in_maintenance(setting, "local", "2026-12-15T14:00:00Z", "2026-12-15T22:00:00Z")
    [first, last] = await setting.placement(maintenance=during).order(list(setting.routes.values()))
    assert first.route.cluster == "local-slurm"
    assert (last.route.cluster, last.passed_over) == ("local", "maintenance")


async def test_a_cold_start_a_coming_window_would_cut_is_passed_over(setting: Setting) -> None:
    setting.clock.at("2026-12-15T13:58:00+00:00")  # 2 min before; a start takes 300 s
    soon = in_maintenance(setting, "local", "2026-12-15T14:00:00Z", "2026-12-15T22:00:00Z")
    assert await setting.order(setting.placement(maintenance=soon)) == ["local-slurm", "local"]
    setting.put("local", ModelState.READY)  # running already: nothing to start
    assert await setting.order(setting.placement(maintenance=soon)) == ["local", "local-slurm"]


def test_a_standing_orders_passed_over_last_then_state_then_wait() -> None:
    route = object()
    hot = Standing(route, ModelState.READY, True, 0.0, None)  # type: ignore[arg-type]
    queued = Standing(route, ModelState.QUEUED, False, 5.0, None)  # type: ignore[arg-type]
    failing = Standing(route, ModelState.READY, True, 0.0, "failing: x")  # type: ignore[arg-type]
    assert sorted([failing, queued, hot], key=lambda s: s.key(0)) == [hot, queued, failing]
