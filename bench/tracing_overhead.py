"""What traces add to a warm request: the same router with tracing OFF and ON, side by side.

Two routers of this code in one process, each over its own stand-in node (the real dial-out
agent around tests/router/stand_in_nodes.py's ``PacedServer``, answering at once) on the
real data plane: tracing OFF (no ``tracing`` section) and ON (every request sampled, spans
exported to an OTLP receiver in a process of its own, tests/otlp_receiver.py; the node's
span too). Sequential whole chat requests, interleaved round by round; p50 and p90 of each,
and ON - OFF at p50. The client, both routers and both agents share this process and its
event loop, so the absolute figures are this harness's; compare within one run. With
``--node-process`` each stand-in node (its agent and server) runs in a process of its own,
as deployed (the agent lives in its model server's process, on its own machine): the node's
span is then made there, and the router's process holds the client and the routers alone.

    .venv/bin/python bench/tracing_overhead.py [--n 2000] [--node-process]

Target: ON adds at most 0.1 ms at p50 over OFF. Writes bench/results/tracing_overhead.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from node_runtime import tracing as node_tracing  # noqa: E402
from node_runtime.dialout.agent import Agent, write_dial  # noqa: E402

from inference_bundle.router.auth import create_api_key  # noqa: E402
from inference_bundle.router.executors.pool import ExecutorPool  # noqa: E402
from inference_bundle.router.service import build_service  # noqa: E402
from tests.otlp_receiver import otlp_receiver  # noqa: E402
from tests.router.conftest import Harness, NoScheduler, settings  # noqa: E402
from tests.router.dataplane_fakes import CHAT, chat, free_port, router_on_uvicorn  # noqa: E402
from tests.router.stand_in_nodes import PacedServer, StandInNode, StandInNodes  # noqa: E402
from tests.waiting import until  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "tracing_overhead.json"
TARGET_MS = 0.1


def node_main(folder: str, server_id: str, secrets: Any, stop: Any) -> None:
    """A stand-in node in this process: the real agent around a server that answers at once,
    until ``stop`` is set; its secret goes to ``secrets`` (the task's envelope reports it)."""

    async def serve() -> None:
        agent = Agent(PacedServer(64, 0.0), folder, server_id)
        secrets.put(agent.secret)
        running = asyncio.create_task(agent.run())
        await asyncio.to_thread(stop.wait)
        await agent.stop()
        running.cancel()
        node_tracing.flush()

    asyncio.run(serve())


class NodeProcess:
    """A stand-in node's agent in a process of its own, as ``StandInNodes`` uses an agent."""

    def __init__(self, folder: Path, server_id: str) -> None:
        spawn = multiprocessing.get_context("spawn")
        secrets, self._stop = spawn.Queue(), spawn.Event()
        self.process = spawn.Process(
            target=node_main, args=(str(folder), server_id, secrets, self._stop), daemon=True
        )
        self.process.start()
        self.secret: str = secrets.get(timeout=60)

    async def run(self) -> None:
        await asyncio.to_thread(self.process.join)

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.to_thread(self.process.join, 30)


class NodesInProcesses(StandInNodes):
    """``StandInNodes`` whose nodes run in processes of their own."""

    async def start(self, index: int, dial: dict[str, Any] | None) -> StandInNode:
        serial = next(self._serial)
        server_id = f"standin-{index}-{serial}"
        folder = self.folder / server_id
        folder.mkdir(parents=True)
        if dial is not None:
            write_dial(folder, dial)
        agent = await asyncio.to_thread(NodeProcess, folder, server_id)
        task = asyncio.create_task(agent.run())
        node = StandInNode(index, f"node-{serial}", server_id, None, agent, task, time.time())  # type: ignore[arg-type]
        self.nodes.append(node)
        return node


@contextlib.asynccontextmanager
async def router(
    folder: Path, tracing: dict[str, Any], node_process: bool = False
) -> AsyncIterator[httpx.AsyncClient]:
    """A router on uvicorn with ``tracing`` over one connected stand-in node: its client."""
    folder.mkdir()
    port = free_port()
    key = create_api_key(folder / "keys.json", "bench@anl.gov")
    changes = {"listen": {"host": "127.0.0.1", "port": port}, "tracing": tracing}
    service = build_service(
        settings(folder, clusters=["local"], data_plane={"enabled": True}, **changes), ROOT
    )
    loop = asyncio.get_running_loop()
    kind = NodesInProcesses if node_process else StandInNodes
    nodes = kind(folder / "nodes", loop, capacity=64, service_s=0.0, start_s=0.0)
    service.pool = service.dispatcher.pool = ExecutorPool(nodes.factory())
    service.job_listing = service.dispatcher.job_listing = NoScheduler()  # type: ignore[assignment]
    plane = service.dispatcher.plane
    assert plane is not None
    harness = Harness(service, None, key, None)  # type: ignore[arg-type]
    async with router_on_uvicorn(harness, port) as running:
        try:
            assert (await running.client.post(CHAT, json=chat())).status_code == 200  # cold
            await until(lambda: plane.servers("local-tiny-chat"), "the stand-in's dial")
            yield running.client
        finally:
            for node in nodes.live():
                await nodes.stop(node)
            plane.hub.close_all()
            await asyncio.to_thread(service.shutdown)


async def measure(
    n: int, receiver_url: str, ratio: float, node_process: bool
) -> dict[str, list[float]]:
    latencies: dict[str, list[float]] = {"off": [], "on": []}
    with tempfile.TemporaryDirectory() as tmp:
        on = {"otlp_endpoint": receiver_url, "sample_ratio": ratio}
        async with (
            router(Path(tmp) / "off", {}, node_process) as off_client,
            router(Path(tmp) / "on", on, node_process) as on_client,
        ):
            clients = {"off": off_client, "on": on_client}
            for round_ in range(n + 50):  # the first 50 rounds warm up, unmeasured
                for name, client in clients.items():
                    began = time.perf_counter()
                    answer = await client.post(CHAT, json=chat())
                    took = (time.perf_counter() - began) * 1000
                    assert answer.status_code == 200, answer.text
                    if round_ >= 50:
                        latencies[name].append(took)
    node_tracing.flush()
    return latencies


def receive(urls: Any, counts: Any, done: Any) -> None:
    """The receiver's process: its URL out, then, once told, how many spans it got."""
    with otlp_receiver() as receiver:
        urls.put(receiver.url)
        done.wait()
        counts.put(len(receiver.spans))


def quantile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q * 100) - 1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=2000, help="requests a router")
    parser.add_argument("--sample-ratio", type=float, default=1.0, help="the ON router's")
    parser.add_argument(
        "--no-node-spans",
        action="store_true",
        help="the stand-in nodes make no spans: the router's own cost (a real node's spans "
        "are made in its vLLM process, on its own machine)",
    )
    parser.add_argument(
        "--node-process",
        action="store_true",
        help="each stand-in node in a process of its own, as deployed",
    )
    args = parser.parse_args()
    if args.no_node_spans and args.node_process:
        parser.error("--no-node-spans applies to nodes in this process")
    if args.no_node_spans:
        node_tracing.begin = lambda name, asked, **attributes: None
    urls: Any = multiprocessing.Queue()
    counts: Any = multiprocessing.Queue()
    done = multiprocessing.Event()
    receiver = multiprocessing.Process(target=receive, args=(urls, counts, done), daemon=True)
    receiver.start()
    try:
        latencies = asyncio.run(
            measure(args.n, urls.get(timeout=30), args.sample_ratio, args.node_process)
        )
    finally:
        done.set()
    spans = counts.get(timeout=30)
    receiver.join(10)
    rows = {
        name: {
            "p50_ms": round(quantile(v, 0.5), 3),
            "p90_ms": round(quantile(v, 0.9), 3),
            "mean_ms": round(statistics.fmean(v), 3),
        }
        for name, v in latencies.items()
    }
    added = round(rows["on"]["p50_ms"] - rows["off"]["p50_ms"], 3)
    print("| tracing | p50 ms | p90 ms |\n|---|---:|---:|")
    for name, row in rows.items():
        print(f"| {name} | {row['p50_ms']} | {row['p90_ms']} |")
    met = "met" if added <= TARGET_MS else "missed"
    print(f"\nON - OFF at p50: {added:+.3f} ms (target <= +{TARGET_MS} ms: {met}); {spans} spans")
    result = {
        "n": args.n,
        "sample_ratio": args.sample_ratio,
        "node_spans": not args.no_node_spans,
        "node_process": args.node_process,
        "rows": rows,
        "on_minus_off_p50_ms": added,
        "target_ms": TARGET_MS,
        "spans_received": spans,
        "machine": {
            "arch": platform.machine(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
        },
    }
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
