"""Router fixtures: a service over the real catalog with a scripted executor (fast tier).

The scripted executor stands in for an endpoint so that HTTP behaviour (errors, streaming,
waiting, auth) is tested in milliseconds; the real engine executor with real vLLM and
Infinity is exercised in the slow tier (test_openai_e2e.py).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import node_runtime.batch
import pytest

from inference_bundle.config.settings import RouterSettings, parse_settings
from inference_bundle.router.app import create_app
from inference_bundle.router.auth import create_api_key
from inference_bundle.router.executors.base import FunctionFailed
from inference_bundle.router.executors.pool import ExecutorPool
from inference_bundle.router.routes import Route
from inference_bundle.router.service import RouterService, build_service
from tests.router.batch_fakes import FakeModel, ThreadJob

ROOT = Path(__file__).resolve().parents[2]
Handler = Callable[[dict[str, Any], dict[str, Any]], dict[str, Any]]


def envelope(status: int, body: Any, start_wait_s: float = 0.0) -> dict[str, Any]:
    return {
        "runtime_version": "test",
        "status": status,
        "body": body,
        "timings": {"start_wait_s": start_wait_s, "latency_s": 0.001},
        "server": "reused",
    }


def chat_answer(spec: dict[str, Any], request: dict[str, Any]) -> dict[str, Any]:
    body = request["body"]
    return envelope(
        200,
        {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "created": 1,
            "model": spec["name"],
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "hello there"},
                    "finish_reason": "length",
                }
            ],
            "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
            "echo_stream": body.get("stream"),
        },
    )


@dataclass
class ScriptedEndpoint:
    """Answers like the node runtime would, after an optional delay; counts submissions."""

    handler: Handler = chat_answer
    delay_s: float = 0.0
    held: bool = True
    submitted: list[dict[str, Any]] = field(default_factory=list)

    def submit(self, function: Callable[..., Any], *args: Any) -> Future[Any]:
        _version, spec, request = args
        self.submitted.append(request)
        future: Future[Any] = Future()

        def run() -> None:
            time.sleep(self.delay_s)
            try:
                future.set_result(self.handler(spec, request))
            except BaseException as err:
                future.set_exception(err)

        threading.Thread(target=run, daemon=True).start()
        return future

    def node_held(self) -> bool:
        return self.held

    def shutdown(self) -> None:
        pass


class NoScheduler:
    """The scripted endpoint runs no jobs: the listing is empty, whatever runs on this host."""

    async def jobs(self, cluster: str) -> dict[str, Any]:
        return {"jobs": []}


def unsalted(body: dict[str, Any]) -> dict[str, Any]:
    """A forwarded body without its prefix-cache salt, which the router sets on every
    generation request (api.prefix_cache): asserted present, then left out."""
    salt = body.get("cache_salt")
    assert isinstance(salt, str) and len(salt) == 64, body
    return {k: v for k, v in body.items() if k != "cache_salt"}


@dataclass
class Harness:
    service: RouterService
    endpoint: ScriptedEndpoint
    key: str
    client: httpx.AsyncClient

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


def settings(tmp_path: Path, **changes: Any) -> RouterSettings:
    data: dict[str, Any] = {
        "clusters": ["local", "sophia"],
        "executor": "engine",
        "wait_s": 5,
        "state_dir": str(tmp_path / "router"),
        "max_body_bytes": 64 * 1024,
        "auth": {"mode": "keys", "keys_file": str(tmp_path / "keys.json")},
        # The scripted endpoint is the task path; no server dials in here. The data plane
        # has tests of its own (test_dataplane*.py).
        "data_plane": {"enabled": False},
    }
    data.update(changes)
    return parse_settings(data)


@pytest.fixture
def make_harness(tmp_path: Path) -> Iterator[Callable[..., Harness]]:
    made: list[Harness] = []

    def make(**changes: Any) -> Harness:
        endpoint = ScriptedEndpoint()
        key = create_api_key(tmp_path / "keys.json", "alice@anl.gov")
        service = build_service(settings(tmp_path, **changes), ROOT)
        service.pool = ExecutorPool(lambda route, _replica: endpoint)
        service.dispatcher.pool = service.pool
        service.dispatcher.poll_s = 0.05
        service.job_listing = service.dispatcher.job_listing = NoScheduler()  # type: ignore[assignment]
        transport = httpx.ASGITransport(app=create_app(service))
        client = httpx.AsyncClient(transport=transport, base_url="http://router")
        harness = Harness(service, endpoint, key, client)
        made.append(harness)
        return harness

    yield make


@pytest.fixture
def model(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeModel]:
    server = FakeModel()
    threading.Thread(target=server.serve_forever, daemon=True).start()

    @contextlib.contextmanager
    def use_server(spec: Any) -> Iterator[Any]:
        yield node_runtime.ServerHandle(server.server_address[1], "fake", False, 0.0, "")

    monkeypatch.setattr(node_runtime.batch, "use_server", use_server)
    yield server
    server.gate.set()
    server.shutdown()


@pytest.fixture
async def batches(
    make_harness: Callable[..., Harness], tmp_path: Path, model: FakeModel
) -> AsyncIterator[Harness]:
    h = batch_harness(make_harness(), tmp_path)
    async with h.client:
        yield h


def batch_harness(h: Harness, tmp_path: Path) -> Harness:
    """A harness whose batch jobs run in threads, over folders under ``tmp_path``."""
    svc = h.service.batches
    paths = svc.profiles["local"].paths.model_copy(
        update={
            "batch_input_roots": [str(tmp_path / "in")],
            "batch_output_root": str(tmp_path / "out"),
        }
    )
    svc.profiles["local"] = svc.profiles["local"].model_copy(update={"paths": paths})
    job = ThreadJob()
    svc.runner.executor_for = lambda route: job
    (tmp_path / "in").mkdir(exist_ok=True)
    return h


@pytest.fixture
async def served(make_harness: Callable[..., Harness], tmp_path: Path) -> AsyncIterator[Any]:
    """Routers on real sockets with the node's real agent (tests/router/dataplane_fakes.py)."""
    from tests.router.dataplane_fakes import serving  # it imports this module's Harness

    async with serving(make_harness, tmp_path) as routers:
        yield routers


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def harness(make_harness: Callable[..., Harness]) -> AsyncIterator[Harness]:
    h = make_harness()
    async with h.client:
        yield h


__all__ = ["FunctionFailed", "Harness", "Route", "ScriptedEndpoint", "chat_answer", "envelope"]
