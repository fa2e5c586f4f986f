"""Prometheus metrics of the models' fair queues: who waits, how long, and who was turned away."""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from inference_bundle.router.dispatch.admission import Admission

_WAITS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class _QueueCollector(Collector):
    def __init__(self, admission: Admission) -> None:
        self._admission = admission

    def collect(self) -> Iterable[GaugeMetricFamily]:
        waiting = GaugeMetricFamily(
            "router_queue_waiting",
            "Requests waiting in the router for a place on a model's servers, by class",
            labels=["model", "class"],
        )
        in_use = GaugeMetricFamily(
            "router_queue_places_in_use",
            "Places on a model's servers this router's requests hold",
            labels=["model"],
        )
        capacity = GaugeMetricFamily(
            "router_queue_places",
            "Places on a model's ready servers for this router's requests (max_num_seqs each)",
            labels=["model"],
        )
        for gate in self._admission.gates().values():
            model = gate.model
            by_class = gate.queue.by_class() or {0: 0}
            for priority, count in by_class.items():
                waiting.add_metric([model, str(priority)], count)
            in_use.add_metric([model], gate.in_use)
            capacity.add_metric([model], gate.capacity())
        yield waiting
        yield in_use
        yield capacity


class QueueMetrics:
    """``router_queue_waiting``, ``router_queue_places(_in_use)`` (gauges), the waits of
    requests that queued (``router_queue_wait_seconds``) and the 429s of a full queue
    (``router_queue_refusals_total`` by the bound that refused)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.waits = Histogram(
            "router_queue_wait_seconds",
            "How long requests that found their model full waited for a place",
            ["model"],
            buckets=_WAITS,
            registry=registry,
        )
        self.refusals = Counter(
            "router_queue_refusals",
            "Requests turned away with 429 model_saturated, by the bound that refused",
            ["model", "bound"],
            registry=registry,
        )
        self._registry = registry

    def watch(self, admission: Admission) -> None:
        """Read ``admission``'s queues when scraped, and count its waits and refusals."""
        self._registry.register(_QueueCollector(admission))
        admission.on_waited = self.waited
        admission.on_refused = self.refused

    def waited(self, model: str, seconds: float) -> None:
        self.waits.labels(model).observe(seconds)

    def refused(self, model: str, bound: str) -> None:
        self.refusals.labels(model, bound).inc()
