"""The Grafana dashboard (docs/grafana/router-dashboard.json) asks only for metrics that
exist: the router's, read from a built service's registry, and vLLM's, read from the
installed vLLM's source (fast tier)."""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from inference_bundle.router.metrics import ConnectionsCollector
from tests.router.conftest import ROOT, Harness

pytestmark = pytest.mark.timeout(60)
DASHBOARD = ROOT / "docs" / "grafana" / "router-dashboard.json"
VLLM_METRICS = (
    ROOT / ".venvs" / "vllm" / "lib" / "python3.11" / "site-packages" / "vllm" / "v1" / "metrics"
)

# What a family of each type exposes (prometheus_client and Prometheus' text format).
SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
    "info": ("_info",),
}
_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or",
             "unless", "offset", "bool", "inf", "nan"}  # fmt: skip
_LABEL_VALUES = re.compile(r"label_values\(\s*([^,)]+?)\s*,[^)]*\)")  # a variable's query


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (functions, label names, grouping
    labels, ranges, strings, numbers and Grafana's $variables left out)."""
    text = _LABEL_VALUES.sub(lambda m: m.group(1) + " ", expr)
    text = re.sub(r"\$\{?\w+\}?", " ", text)  # Grafana's variables
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers, strings in them included
    text = re.sub(r"\[[^\]]*\]", " ", text)  # ranges
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    text = re.sub(r'"[^"]*"', " ", text)
    names = re.findall(r"(?<![\w.:])([A-Za-z_:][\w:]*)(?![\w:]|\s*\()", text)
    return {name for name in names if name.lower() not in _KEYWORDS}


def test_metric_names_are_read_from_promql_as_prometheus_would() -> None:
    expr = (
        "histogram_quantile(0.95, sum by (le, model_name) "
        '(rate(vllm:e2e_request_latency_seconds_bucket{model_name=~"$model", le!="1e3"}'
        "[$__rate_interval]))) / on (model) group_left (x) "
        "sum without (engine) (router_models) * 1e3 > bool 0.5 offset 1h"
    )
    assert metric_names(expr) == {"vllm:e2e_request_latency_seconds_bucket", "router_models"}
    assert metric_names("topk(10, sum by (user) (increase(a_total[$__range])))") == {"a_total"}
    assert metric_names("label_values(router_requests_total, model)") == {"router_requests_total"}


def dashboard_queries() -> Iterator[tuple[str, str]]:
    """(where, PromQL) for every panel's target and every query variable."""
    dashboard = json.loads(DASHBOARD.read_text())
    for panel in _panels(dashboard["panels"]):
        for target in panel.get("targets", []):
            yield f"panel {panel['title']!r} {target['refId']}", target["expr"]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            yield f"variable {variable['name']!r}", variable["query"]["query"]


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))  # a collapsed row holds its panels


def router_exports(registry: Any) -> set[str]:
    """Every sample name the registry exposes, whether or not a sample was counted yet."""
    names = set()
    for family in registry.collect():
        suffixes = SUFFIXES[family.type]
        names |= {family.name + suffix for suffix in suffixes}
    return names


def vllm_exports(source: Path) -> set[str]:
    """Every sample name vLLM's metric loggers declare: ``self._counter_cls(name="vllm:x")``
    and its kin, read from the installed source (a counter's samples gain ``_total``)."""
    kinds = {"_gauge_cls": "gauge", "_counter_cls": "counter", "_histogram_cls": "histogram"}
    names = set()
    for module in source.glob("*.py"):
        for node in ast.walk(ast.parse(module.read_text())):
            if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
                continue
            kind = kinds.get(node.func.attr)
            for keyword in node.keywords if kind else ():
                value = keyword.value
                if keyword.arg == "name" and isinstance(value, ast.Constant):
                    names |= {str(value.value) + suffix for suffix in SUFFIXES[kind or ""]}
    return names


@pytest.fixture
def router_names(make_harness: Callable[..., Harness]) -> set[str]:
    return router_exports(make_harness().service.metrics.registry)


def test_every_router_metric_the_dashboard_asks_for_is_exported(router_names: set[str]) -> None:
    asked = {
        (where, name)
        for where, expr in dashboard_queries()
        for name in metric_names(expr)
        if not name.startswith("vllm:")
    }
    assert {name for _, name in asked} >= {"router_requests_total", "router_request_seconds_bucket"}
    assert sorted(f"{where}: {name}" for where, name in asked if name not in router_names) == []


def test_every_vllm_metric_the_dashboard_asks_for_is_in_the_installed_vllm() -> None:
    if not VLLM_METRICS.is_dir():
        pytest.skip(
            f"{VLLM_METRICS} is missing: `make backends` installs vLLM (`make test` has it)"
        )
    exported = vllm_exports(VLLM_METRICS)
    assert {"vllm:num_requests_waiting", "vllm:time_to_first_token_seconds_bucket"} <= exported
    assert "vllm:prompt_tokens" not in exported  # a counter is exposed as ..._total only
    asked = {
        (where, name)
        for where, expr in dashboard_queries()
        for name in metric_names(expr)
        if name.startswith("vllm:")
    }
    assert len(asked) >= 8
    assert sorted(f"{where}: {name}" for where, name in asked if name not in exported) == []


def test_the_counts_and_suffixes_are_read_as_exposed(router_names: set[str]) -> None:
    """The registry's names are what /metrics shows: a counter's _total, a histogram's parts."""
    assert {
        "router_requests_total",
        "router_request_seconds_count",
        "router_models",
    } <= router_names
    assert "router_requests" not in router_names and "router_request_seconds" not in router_names


def test_every_panel_reads_the_chosen_prometheus_and_has_a_place_of_its_own() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    panels = list(_panels(dashboard["panels"]))
    assert len({p["id"] for p in panels}) == len(panels)
    places = set()
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        for dx in range(grid["w"]):
            for dy in range(grid["h"]):
                spot = (grid["x"] + dx, grid["y"] + dy)
                assert spot not in places, f"{panel['title']} overlaps another panel"
                places.add(spot)
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
            assert panel["targets"] and panel["description"]


class TwoServers:
    """A data plane with two servers of one endpoint connected, three requests down them."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint

    def servers(self, endpoint: str) -> list[dict[str, Any]]:
        return [{"in_flight": 1}, {"in_flight": 2}] if endpoint == self.endpoint else []


def test_the_data_plane_gauges_count_each_models_servers_and_requests(
    make_harness: Callable[..., Harness],
) -> None:
    service = make_harness().service
    route = next(r for r in service.table.routes("local") if r.model == "local/tiny-llama")
    registry = CollectorRegistry()
    registry.register(ConnectionsCollector(service.table, TwoServers(route.endpoint_name)))  # type: ignore[arg-type]
    labels = {"cluster": "local", "model": "local/tiny-llama"}
    assert registry.get_sample_value("router_dataplane_connections", labels) == 2
    assert registry.get_sample_value("router_dataplane_in_flight", labels) == 3
    other = {"cluster": "local", "model": "local/tiny-vision"}
    assert registry.get_sample_value("router_dataplane_connections", other) == 0


@pytest.mark.anyio
async def test_tokens_are_counted_by_user_and_group(harness: Harness) -> None:
    chat = {"model": "local/tiny-llama", "messages": [{"role": "user", "content": "hi"}]}
    answer = await harness.client.post(
        "/resource_server/local/vllm/v1/chat/completions", json=chat, headers=harness.auth
    )
    assert answer.status_code == 200
    registry = harness.service.metrics.registry
    for kind, count in (("prompt", 3), ("completion", 2)):  # the scripted answer's usage
        labels = {"user": "alice@anl.gov", "group": "", "kind": kind}
        assert registry.get_sample_value("router_caller_tokens_total", labels) == count
