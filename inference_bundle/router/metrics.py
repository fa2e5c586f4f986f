"""Prometheus metrics of the router, on a registry of its own."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from inference_bundle.config.settings import MetricsSettings
from inference_bundle.router.auth import AuthConfigError
from inference_bundle.router.dataplane.plane import DataPlane
from inference_bundle.router.fleet.states import ModelState
from inference_bundle.router.routes import RouteTable
from inference_bundle.router.store.private_files import made_secret

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 600)


class _StatesCollector(Collector):
    def __init__(self, states: Callable[[], Iterable[ModelState]]) -> None:
        self._states = states

    def collect(self) -> Iterable[GaugeMetricFamily]:
        family = GaugeMetricFamily("router_models", "Models by lifecycle state", labels=["state"])
        counts = dict.fromkeys(ModelState, 0)
        for state in self._states():
            counts[state] += 1
        for state, count in counts.items():
            family.add_metric([state.value], count)
        yield family


class Metrics:
    def __init__(self, states: Callable[[], Iterable[ModelState]]) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "router_requests",
            "Requests answered, by operation, model and status",
            ["operation", "model", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "router_request_seconds",
            "Time from request to answer",
            ["operation"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.paths = Counter(
            "router_request_paths",
            "Requests by the way they took: connection (down a server's own), task (through "
            "its endpoint), none",
            ["via"],
            registry=self.registry,
        )
        self.cold_starts = Counter(
            "router_cold_starts", "Requests that started a model", ["model"], registry=self.registry
        )
        self.start_wait = Histogram(
            "router_start_wait_seconds",
            "Time requests spent waiting for a model to start",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        # Per model, not per user: a label per user would grow without bound.
        self.tokens = Counter(
            "router_tokens",
            "Tokens the backends reported, by model and kind (prompt, completion)",
            ["model", "kind"],
            registry=self.registry,
        )
        self.refusals = Counter(
            "router_limit_refusals",
            "Requests refused by a limit (429), by the limit",
            ["limit"],
            registry=self.registry,
        )
        self.registry.register(_StatesCollector(states))


def metrics_token(settings: MetricsSettings, state_dir: Path) -> str | None:
    """The bearer token GET /metrics asks for (access key), made on first start; else None.

    The metrics name every model and its traffic, private ones included, so by default only
    the operators, who can read the router's state folder, may read them.
    """
    if settings.access != "key":
        return None
    path = Path(settings.token_file)
    path = path if path.is_absolute() else state_dir / path
    try:
        token = made_secret(path)
    except (OSError, UnicodeDecodeError) as err:
        raise AuthConfigError(f"metrics.token_file: cannot read {path}: {err}") from None
    if not token:
        raise AuthConfigError(
            f"metrics.token_file: {path} is empty; write a token in it, or delete it and "
            "the router makes one"
        )
    return token


# ---------------------------------------------------------------------------------------
# For the dashboard (docs/grafana/): the data plane's connections and tokens by caller.
# ---------------------------------------------------------------------------------------


class ConnectionsCollector(Collector):
    """Model servers connected over the data plane and their requests in flight, by cluster
    and model, read from the plane when scraped (none on a router without one)."""

    def __init__(self, table: RouteTable, plane: DataPlane | None) -> None:
        self._table = table
        self._plane = plane

    def collect(self) -> Iterable[GaugeMetricFamily]:
        labels = ["cluster", "model"]
        connections = GaugeMetricFamily(
            "router_dataplane_connections",
            "Model servers connected to this router over the data plane",
            labels=labels,
        )
        in_flight = GaugeMetricFamily(
            "router_dataplane_in_flight",
            "Requests in flight down this router's data-plane connections",
            labels=labels,
        )
        plane = self._plane
        for route in self._table.routes():
            servers = plane.servers(route.endpoint_name) if plane is not None else []
            connections.add_metric([route.cluster, route.model], len(servers))
            in_flight.add_metric([route.cluster, route.model], sum(s["in_flight"] for s in servers))
        yield connections
        yield in_flight


class CallerTokens:
    """Tokens by user and group (``router_caller_tokens``): one series a user and kind seen
    since the router started, which the operators who read /metrics asked for; a site with
    very many users can drop it in Prometheus (README, Metrics and dashboards)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.counter = Counter(
            "router_caller_tokens",
            "Tokens the backends reported, by user, the group charged and kind",
            ["user", "group", "kind"],
            registry=registry,
        )

    def count(self, user: str, group: str, prompt: int, completion: int) -> None:
        self.counter.labels(user, group, "prompt").inc(prompt)
        self.counter.labels(user, group, "completion").inc(completion)
