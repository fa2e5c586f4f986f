"""Fair queues: a light user's latency beside a heavy user's load, with the queue on and off,
and what the queue costs a model that is not full.

- **Stand-ins** (tests/router/stand_in_nodes.py: one server of fixed capacity, 2 requests at
  once, each ``--service-s`` ± ``--jitter`` long, first come first served as vLLM's queue; the
  endpoint's max_num_seqs is 2: its places): the light user's median latency alone, then beside a
  heavy user's 64 requests at once, with the router's queue on and then off; target: at most
  2 × alone with it on. The stand-in's capacity decides the figures, not this machine's cores.
- **Cost on a model that is not full**: the same router, a stand-in that answers at once,
  sequential requests, the queue switched on and off between interleaved rounds; target:
  the queue adds at most 0.2 ms at p50.
- **Real vLLM** (``--real``, the tiny chat model with ``max_num_seqs`` 16; `make backends
  local-models` first): two routers over one vLLM server, queue on and queue off; a heavy
  user streams 64 requests of 128 tokens at once while a light user sends one 16-token
  stream at a time; the light user's median time to first token, alone and under load, on
  each router. One run.

    make bench-fairness       # or: .venv/bin/python bench/fairness.py [--real]

Writes bench/results/fairness.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from inference_bundle.config.queue_settings import QueueSettings  # noqa: E402
from inference_bundle.router.auth import create_api_key  # noqa: E402
from tests.router.scaled_router import CHAT, TINY, Scaled, scaled  # noqa: E402
from tests.waiting import until  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "fairness.json"
BODY = {"model": TINY, "messages": [{"role": "user", "content": "hi"}]}


def client(url: str, key: str) -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {key}"}
    return httpx.AsyncClient(base_url=url, headers=headers, timeout=600)


async def under_load(
    light: Callable[[], Awaitable[float]],
    heavy: Callable[[], Awaitable[None]],
    heavy_at_once: int,
    seconds: float,
) -> dict[str, Any]:
    """The light user's median alone, then beside ``heavy_at_once`` loops of ``heavy``."""
    alone = [await light() for _ in range(15)]
    end = time.monotonic() + seconds

    async def heavy_loop() -> None:
        while time.monotonic() < end:
            await heavy()

    loading = [asyncio.create_task(heavy_loop()) for _ in range(heavy_at_once)]
    await asyncio.sleep(min(2.0, seconds / 4))  # the heavy load builds up
    loaded = []
    while time.monotonic() < end:
        loaded.append(await light())
    await asyncio.gather(*loading)
    median_alone, median_loaded = statistics.median(alone), statistics.median(loaded)
    return {
        "light_alone_median_s": round(median_alone, 4),
        "light_loaded_median_s": round(median_loaded, 4),
        "light_requests_loaded": len(loaded),
        "ratio_to_alone": round(median_loaded / median_alone, 2),
    }


async def stand_in_heavy_light(on: bool, args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        async with scaled(
            Path(tmp),
            {"min": 1, "max": 1},
            service_s=args.service_s,
            jitter=args.jitter,
            queue={"enabled": on},
        ) as s:
            await connected(s)
            light_key = create_api_key(Path(tmp) / "keys.json", "light@anl.gov")
            async with client(s.url, s.key) as c, client(s.url, light_key) as lc:

                async def light() -> float:
                    began = time.monotonic()
                    answer = await lc.post(CHAT, json=BODY)
                    assert answer.status_code == 200, answer.text
                    return time.monotonic() - began

                async def heavy() -> None:
                    answer = await c.post(CHAT, json=BODY)
                    assert answer.status_code == 200, answer.text

                return {"queue": "on" if on else "off"} | await under_load(
                    light, heavy, 64, args.seconds
                )


async def connected(s: Scaled) -> None:
    await until(lambda: len(s.connected()) == 1, "the stand-in connected", 60)


async def stand_in_cost(args: argparse.Namespace) -> dict[str, Any]:
    """p50 of sequential requests to a server that answers at once, queue on against off,
    in interleaved rounds on one router."""
    with tempfile.TemporaryDirectory() as tmp:
        async with scaled(Path(tmp), {"min": 1, "max": 1}, service_s=0.0, capacity=64) as s:
            await connected(s)
            admission = s.service.dispatcher.admission
            settings = {True: admission.settings, False: QueueSettings(enabled=False)}
            samples: dict[bool, list[float]] = {True: [], False: []}
            async with client(s.url, s.key) as c:
                for _ in range(20):  # warm-up
                    await c.post(CHAT, json=BODY)
                for round_ in range(args.rounds):
                    for on in (True, False) if round_ % 2 == 0 else (False, True):
                        admission.settings = settings[on]
                        for _ in range(args.n // args.rounds):
                            began = time.monotonic()
                            answer = await c.post(CHAT, json=BODY)
                            samples[on].append(time.monotonic() - began)
                            assert answer.status_code == 200, answer.text
            p50 = {on: statistics.median(values) * 1000 for on, values in samples.items()}
            return {
                "requests_each": len(samples[True]),
                "p50_ms_queue_on": round(p50[True], 3),
                "p50_ms_queue_off": round(p50[False], 3),
                "added_p50_ms": round(p50[True] - p50[False], 3),
                "target_ms": 0.2,
                "met": p50[True] - p50[False] <= 0.2,
            }


async def real_vllm(args: argparse.Namespace) -> dict[str, Any]:
    """Two routers (queue on, queue off) over one vLLM server: the light user's TTFT."""
    from bench import peers
    from bench.router_overhead import ROUTER_PREFIX, clean_up, vllm_spec

    work = Path(tempfile.mkdtemp(prefix="fairness-bench-"))
    procs = peers.Processes(logs=work)
    root = peers.scratch_root(work)
    # vLLM runs 16 at once (max_num_seqs): the heavy user's other 48 wait in its own
    # first-come queue with the router's queue off, in the router's fair queue with it on.
    endpoint = root / "endpoints" / "local" / "tiny-chat.yaml"
    data = yaml.safe_load(endpoint.read_text())
    data["server_args"]["max_num_seqs"] = args.max_num_seqs
    endpoint.write_text(yaml.safe_dump(data, sort_keys=False))
    spec = vllm_spec(root)
    results: dict[str, Any] = {"model": "local/tiny-llama (vLLM, CPU)"}
    try:
        keys, key = peers.create_key(root)
        light_key = create_api_key(keys, "light@anl.gov")
        auth = {"Authorization": f"Bearer {key}"}
        routers = {}
        for on in (True, False):
            name = f"router-queue-{'on' if on else 'off'}"
            port = peers.free_port()
            peers.start_router(procs, root, port, keys, name, {"queue": {"enabled": on}})
            peers.chat_once(port, ROUTER_PREFIX, TINY, auth, timeout_s=320)
            routers[on] = port
            await asyncio.sleep(3)  # the server dials the new router
        for on in (True, False):
            url = f"http://127.0.0.1:{routers[on]}{ROUTER_PREFIX}"
            async with client(url, key) as c, client(url, light_key) as lc:

                async def light() -> float:
                    return await ttft(lc, 16)

                async def heavy() -> None:
                    await ttft(c, 128, whole=True)

                phase = await under_load(light, heavy, 64, args.real_seconds)
                results["queue_on" if on else "queue_off"] = phase
        on_s = results["queue_on"]["light_loaded_median_s"]
        off_s = results["queue_off"]["light_loaded_median_s"]
        results["light_ttft_off_over_on"] = round(off_s / on_s, 2)
        results["max_num_seqs"] = args.max_num_seqs
        results["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    finally:
        clean_up(procs, spec, root)
    return results


async def ttft(c: httpx.AsyncClient, max_tokens: int, whole: bool = False) -> float:
    """Seconds to a stream's first event (read to its end when ``whole``)."""
    body = {**BODY, "max_tokens": max_tokens, "stream": True, "ignore_eos": True}
    began = time.monotonic()
    first = None
    async with c.stream("POST", "/v1/chat/completions", json=body) as stream:
        assert stream.status_code == 200, await stream.aread()
        async for line in stream.aiter_lines():
            if line.startswith("data: ") and first is None:
                first = time.monotonic() - began
                if not whole:
                    break
    assert first is not None
    return first


async def main(args: argparse.Namespace) -> dict[str, Any]:
    on = await stand_in_heavy_light(True, args)
    off = await stand_in_heavy_light(False, args)
    result: dict[str, Any] = {
        "machine": f"{platform.machine()}, {platform.python_version()}, {os.cpu_count()} cores",
        "stand_in": {
            "what": "one stand-in server (2 at once, service_s ± jitter each), 2 places",
            "service_s": args.service_s,
            "jitter": args.jitter,
            "seconds": args.seconds,
            "queue_on": on,
            "queue_off": off,
            "target": "light user's median under load at most 2 x alone, queue on",
            "met": on["ratio_to_alone"] <= 2.0,
        },
        "cost_unsaturated": await stand_in_cost(args),
    }
    if args.real:
        result["real_vllm"] = await real_vllm(args)
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="each heavy/light phase")
    parser.add_argument("--service-s", type=float, default=0.2)
    parser.add_argument("--jitter", type=float, default=0.25, help="service time ± this share")
    parser.add_argument("--n", type=int, default=1000, help="sequential requests, each setting")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--real", action="store_true", help="also the run on real vLLM")
    parser.add_argument("--real-seconds", type=float, default=30.0)
    parser.add_argument("--max-num-seqs", type=int, default=16, help="vLLM's, in the real run")
    result = asyncio.run(main(parser.parse_args()))
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
