"""One executor per endpoint replica, started on the first request that needs it.

A model's replicas (its catalog ``replicas``) are one endpoint with a replica index in its
user endpoint config: each index is a user endpoint of its own, with its own engine,
provider, block and scheduler job (router.fleet.replicas decides how many run).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

from inference_bundle.config.catalog import Catalog
from inference_bundle.rendering.render import render_catalog, write_rendered
from inference_bundle.router.executors.base import Executor
from inference_bundle.router.executors.engine import EngineExecutor
from inference_bundle.router.routes import Route

# Makes the executor of one replica of a route's endpoint.
Factory = Callable[[Route, int], Executor]


class ExecutorPool:
    """Executors by endpoint and replica; creation (an engine start) happens once, under a
    lock."""

    def __init__(self, factory: Factory) -> None:
        self._factory = factory
        self._executors: dict[str, Executor] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()
        self._closed = False

    def get(self, route: Route, replica: int = 0) -> Executor:
        """The replica's executor, created on first use (blocking: call from a thread)."""
        name = _key(route, replica)
        if (found := self._executors.get(name)) is not None:
            return found
        with self._guard:
            lock = self._locks.setdefault(name, threading.Lock())
        with lock:
            if name not in self._executors:
                if self._closed:
                    raise RuntimeError("the router is stopping")
                created = self._factory(route, replica)
                with self._guard:
                    closed = self._closed
                    if not closed:
                        self._executors[name] = created
                if closed:  # shut down while it started: it would outlive the router
                    created.shutdown()
                    raise RuntimeError("the router is stopping")
            return self._executors[name]

    def peek(self, route: Route, replica: int = 0) -> Executor | None:
        return self._executors.get(_key(route, replica))

    def drop(self, route: Route, replica: int) -> None:
        """Shut the replica's executor down (its provider cancels the block's job); the next
        ``get`` makes a new one. Blocking: call from a thread."""
        with self._guard:
            executor = self._executors.pop(_key(route, replica), None)
        if executor is not None:
            executor.shutdown()

    def shutdown(self) -> None:
        with self._guard:
            self._closed = True
            executors = list(self._executors.values())
            self._executors.clear()
        for executor in executors:
            executor.shutdown()


def _key(route: Route, replica: int) -> str:
    return route.endpoint_name if replica == 0 else f"{route.endpoint_name}#{replica}"


def one_replica(factory: Callable[[Route], Executor]) -> Factory:
    """A factory for endpoints that have one replica (the batch twins)."""
    return lambda route, replica: factory(route)


def engine_factory(catalogs: list[Catalog], templates: Path, state_dir: Path) -> Factory:
    """Render each cluster's endpoints under state_dir and start engines from them; a
    replica's engine loads the endpoint with its index as the user's ``replica`` option."""
    endpoints = state_dir / "endpoints"
    for catalog in catalogs:
        write_rendered(render_catalog(catalog, templates), endpoints / catalog.cluster)

    def start(route: Route, replica: int) -> Executor:
        folder = endpoints / route.cluster / route.endpoint_name
        run_dir = state_dir / "engines" / _key(route, replica).replace("#", "-r")
        return EngineExecutor(folder, run_dir, {"replica": replica})

    return start
