"""Prometheus metrics of the models' replicas: how many in each phase, and every change."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from inference_bundle.router.fleet.replicas import Phase, ReplicaSet


class _ReplicasCollector(Collector):
    def __init__(self, sets: Callable[[], Iterable[tuple[str, ReplicaSet]]]) -> None:
        self._sets = sets

    def collect(self) -> Iterable[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "router_replicas", "Replicas of each model by phase", labels=["model", "state"]
        )
        for model, replicas in self._sets():
            counts = dict.fromkeys(Phase, 0)
            for replica in replicas.all():
                counts[replica.phase] += 1
            for phase, count in counts.items():
                family.add_metric([model, phase.value], count)
        yield family


class ReplicaMetrics:
    """``router_replicas`` (gauge) and ``router_replica_changes_total`` (counter: change is
    out, drain, in, lost or failed; reason is demand, min, walltime, idle, request, ...)."""

    def __init__(
        self,
        registry: CollectorRegistry,
        sets: Callable[[], Iterable[tuple[str, ReplicaSet]]],
    ) -> None:
        self.changes = Counter(
            "router_replica_changes",
            "Replicas asked for, drained, stopped, lost or failed, by model and reason",
            ["model", "change", "reason"],
            registry=registry,
        )
        registry.register(_ReplicasCollector(sets))

    def changed(self, model: str, change: str, reason: str) -> None:
        self.changes.labels(model, change, reason).inc()
