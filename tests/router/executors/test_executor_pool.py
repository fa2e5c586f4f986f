"""Executors made once per endpoint, started ahead for batches, never outliving the router."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest

from inference_bundle.config.catalog import load_catalog
from inference_bundle.router.batches.runner import BatchRunner
from inference_bundle.router.batches.store import BatchStore
from inference_bundle.router.executors.base import Executor
from inference_bundle.router.executors.pool import ExecutorPool
from inference_bundle.router.routes import Route, RouteTable
from inference_bundle.router.store import open_sqlite

ROOT = Path(__file__).resolve().parents[3]
TINY_CHAT = "local/tiny-llama"


class Recorded:
    """An executor that only remembers whether it was shut down."""

    def __init__(self) -> None:
        self.stopped = False

    def submit(self, function: Callable[..., Any], *args: Any) -> Future[Any]:
        raise AssertionError("not used here")

    def node_held(self) -> bool:
        return False

    def shutdown(self) -> None:
        self.stopped = True


def test_batch_engines_start_ahead_for_batch_models_only(tmp_path: Path) -> None:
    table = RouteTable([load_catalog(ROOT, "local"), load_catalog(ROOT, "sophia")])
    started: list[str] = []

    def executor_for(route: Route) -> Executor:
        started.append(route.model)
        return Recorded()

    runner = BatchRunner(BatchStore(open_sqlite(tmp_path / "b.db")), table, executor_for, "v", 8)
    assert runner.engines_state() is None
    runner.prestart().join(timeout=10)
    assert runner.engines_state() == "ready"
    expected = [
        r.model for r in table.routes() if r.entry.endpoint.batch and r.entry.endpoint.enabled
    ]
    assert started == expected
    assert "local/tiny-llama" in started
    assert "sentence-transformers/all-MiniLM-L6-v2" not in started  # no batch support
    assert "deepseek-ai/DeepSeek-R1" not in started  # disabled


def test_an_executor_started_while_the_router_stops_is_stopped_too() -> None:
    [route] = [
        r for r in RouteTable([load_catalog(ROOT, "local")]).routes() if r.model == TINY_CHAT
    ]
    entered, release = threading.Event(), threading.Event()
    made: list[Recorded] = []

    def slow_start(route: Route, replica: int) -> Executor:
        entered.set()
        release.wait(10)
        made.append(Recorded())
        return made[-1]

    pool = ExecutorPool(slow_start)
    errors: list[BaseException] = []

    def get() -> None:
        try:
            pool.get(route)
        except RuntimeError as err:
            errors.append(err)

    starting = threading.Thread(target=get)
    starting.start()
    assert entered.wait(10)
    pool.shutdown()  # the router stops while the engine starts
    release.set()
    starting.join(10)
    assert made and made[0].stopped
    assert errors and "stopping" in str(errors[0])
    with pytest.raises(RuntimeError, match="stopping"):
        pool.get(route)
