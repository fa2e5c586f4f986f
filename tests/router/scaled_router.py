"""A real router over stand-in nodes of fixed capacity, with its replica control running.

Shared by the replica and fair-queue tests and benchmarks: the tiny chat model of the
repository's local catalog, scaled (target 2 requests a server, 2 places each), served by
``StandInNodes`` (tests/router/stand_in_nodes.py) through the real dial-out agent.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx
import yaml

from inference_bundle.router.auth import create_api_key
from inference_bundle.router.executors.pool import ExecutorPool
from inference_bundle.router.fleet.replicas import ReplicaSet
from inference_bundle.router.service import RouterService, build_service, replica_control
from tests.router.conftest import ROOT, Harness, NoScheduler, settings
from tests.router.dataplane_fakes import free_port, router_on_uvicorn
from tests.router.stand_in_nodes import StandInNodes

TINY = "local/tiny-llama"
ENDPOINT = "local-tiny-chat"
CHAT = "/resource_server/local/vllm/v1/chat/completions"
START_S = 1.0
WINDOW_S = 0.5


def scaled_root(tmp_path: Path, replicas: dict[str, int], idle_s: int) -> Path:
    """The repository's catalog, with the tiny chat model scaled (target 2 a server) and
    2 places a server (max_num_seqs: the fair queue holds the rest)."""
    root = tmp_path / "root"
    for folder in ("endpoints", "config", "templates"):
        shutil.copytree(ROOT / folder, root / folder)
    profile = root / "config" / "clusters" / "local.yaml"
    data = yaml.safe_load(profile.read_text())
    data["max_replicas"] = 4
    profile.write_text(yaml.safe_dump(data, sort_keys=False))
    endpoint = root / "endpoints" / "local" / "tiny-chat.yaml"
    data = yaml.safe_load(endpoint.read_text())
    data.update(replicas=replicas, target_in_flight=2, scale_in_idle_s=idle_s)
    data["server_args"]["max_num_seqs"] = 2  # each server's places: the stand-in's capacity
    endpoint.write_text(yaml.safe_dump(data, sort_keys=False))
    return root


@dataclass
class Scaled:
    service: RouterService
    nodes: StandInNodes
    url: str
    key: str
    answers: list[int] = field(default_factory=list)  # statuses, in order
    failures: list[str] = field(default_factory=list)

    def replicas(self) -> ReplicaSet:
        return self.service.dispatcher.replicas.of(ENDPOINT)

    def connected(self) -> list[dict[str, Any]]:
        plane = self.service.dispatcher.plane
        assert plane is not None
        return plane.servers(ENDPOINT)

    def phases(self) -> list[str]:
        return [r.phase.value for r in self.replicas().all()]

    def changes(self, change: str, reason: str) -> float:
        metrics = self.service.replica_metrics
        assert metrics is not None
        return float(metrics.changes.labels(TINY, change, reason)._value.get())

    async def load(self, users: int, seconds: float, stream_every: int = 3) -> None:
        """``users`` clients, each sending one request after another for ``seconds``."""
        deadline = time.monotonic() + seconds
        headers = {"Authorization": f"Bearer {self.key}"}

        async def user(n: int) -> None:
            async with httpx.AsyncClient(base_url=self.url, headers=headers, timeout=60) as c:
                sent = 0
                while time.monotonic() < deadline:
                    sent += 1
                    stream = (n + sent) % stream_every == 0
                    body: dict[str, Any] = {
                        "model": TINY,
                        "messages": [{"role": "user", "content": "hi"}],
                        "stream": stream,
                    }
                    try:
                        answer = await c.post(CHAT, json=body)
                        text = answer.text
                        # A stream that breaks off ends with an error event, then [DONE].
                        whole = "[DONE]" in text and '"error"' not in text
                        ok = answer.status_code == 200 and (not stream or whole)
                        self.answers.append(answer.status_code)
                        if not ok:
                            self.failures.append(f"{answer.status_code}: {text[:200]}")
                    except httpx.HTTPError as err:
                        self.failures.append(repr(err))

        await asyncio.gather(*(user(n) for n in range(users)))


@contextlib.asynccontextmanager
async def scaled(
    tmp_path: Path,
    replicas: dict[str, int],
    idle_s: int = 2,
    walltime_s: float | None = None,
    queue: dict[str, Any] | None = None,
    **stand_in: Any,
) -> AsyncIterator[Scaled]:
    """The router over stand-ins; ``queue`` overrides its queue settings (on by default,
    each server 2 places: the endpoint's target)."""
    root = scaled_root(tmp_path, replicas, idle_s)
    port = free_port()
    key = create_api_key(tmp_path / "keys.json", "alice@anl.gov")
    service = build_service(
        settings(
            tmp_path,
            clusters=["local"],
            listen={"host": "127.0.0.1", "port": port},
            data_plane={"enabled": True, "connect_wait_s": 5, "refresh_s": 30},
            replicas={
                "check_s": 0.1,
                "scale_out_window_s": WINDOW_S,
                "rotation_margin_s": 1.0,
                "stop_before_walltime_s": 0.5,
                "lost_after_s": 1.0,
            },
            queue=queue or {},
        ),
        root,
    )
    nodes = StandInNodes(
        tmp_path / "nodes",
        asyncio.get_running_loop(),
        start_s=START_S,
        walltime_s=walltime_s,
        **stand_in,
    )
    service.pool = service.dispatcher.pool = ExecutorPool(nodes.factory())
    service.job_listing = service.dispatcher.job_listing = NoScheduler()  # type: ignore[assignment]
    control = replica_control(service)
    if walltime_s is not None:  # the local cluster's jobs have none: give the route one
        control.routes = [replace(r, walltime_s=walltime_s) for r in control.routes]
    harness = Harness(service, None, key, None)  # type: ignore[arg-type]
    async with router_on_uvicorn(harness, port) as router:
        control.start()
        try:
            yield Scaled(service, nodes, router.url, key)
        finally:
            await control.stop()
            for node in nodes.live():
                await nodes.stop(node)
            assert service.dispatcher.plane is not None
            service.dispatcher.plane.hub.close_all()
            await asyncio.to_thread(service.shutdown)
