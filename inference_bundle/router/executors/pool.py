"""One executor per endpoint, started on the first request that needs it."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

from inference_bundle.config.catalog import Catalog
from inference_bundle.rendering.render import render_catalog, write_rendered
from inference_bundle.router.executors.base import Executor
from inference_bundle.router.executors.engine import EngineExecutor
from inference_bundle.router.routes import Route


class ExecutorPool:
    """Executors by endpoint name; creation (an engine start) happens once, under a lock."""

    def __init__(self, factory: Callable[[Route], Executor]) -> None:
        self._factory = factory
        self._executors: dict[str, Executor] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()
        self._closed = False

    def get(self, route: Route) -> Executor:
        """The endpoint's executor, created on first use (blocking: call from a thread)."""
        name = route.endpoint_name
        if (found := self._executors.get(name)) is not None:
            return found
        with self._guard:
            lock = self._locks.setdefault(name, threading.Lock())
        with lock:
            if name not in self._executors:
                if self._closed:
                    raise RuntimeError("the router is stopping")
                created = self._factory(route)
                with self._guard:
                    closed = self._closed
                    if not closed:
                        self._executors[name] = created
                if closed:  # shut down while it started: it would outlive the router
                    created.shutdown()
                    raise RuntimeError("the router is stopping")
            return self._executors[name]

    def peek(self, route: Route) -> Executor | None:
        return self._executors.get(route.endpoint_name)

    def shutdown(self) -> None:
        with self._guard:
            self._closed = True
            executors = list(self._executors.values())
            self._executors.clear()
        for executor in executors:
            executor.shutdown()


def engine_factory(
    catalogs: list[Catalog], templates: Path, state_dir: Path
) -> Callable[[Route], Executor]:
    """Render each cluster's endpoints under state_dir and start engines from them."""
    endpoints = state_dir / "endpoints"
    for catalog in catalogs:
        write_rendered(render_catalog(catalog, templates), endpoints / catalog.cluster)

    def start(route: Route) -> Executor:
        folder = endpoints / route.cluster / route.endpoint_name
        return EngineExecutor(folder, state_dir / "engines" / route.endpoint_name)

    return start
