"""Replicas: requests/s with N replicas against N × one replica's, and how soon a new one serves.

Stand-in servers of fixed capacity (tests/router/stand_in_nodes.py: each runs ``--capacity``
requests at once, each ``--service-s`` long) behind the real router, its data plane and its
replica control, and the real dial-out agent; the capacity is the stand-in's, not this
machine's two cores, so the ratio measures the router's balancing and nothing else.

- Throughput: N = 1, 2, 4 replicas (min = max = N), each saturated (four users a slot,
  whole answers), for ``--seconds``; target: requests/s with N at least 0.9 × N × one's.
- Scale-out: one replica warm, then a load step past its target; the time from the step to
  the first answer from the new replica; target: at most its start (``START_S``) + 10 s.

    make bench-replicas     # or: .venv/bin/python bench/replicas.py [--seconds 10]

Writes bench/results/replicas.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.router.scaled_router import START_S, WINDOW_S, Scaled, scaled  # noqa: E402
from tests.waiting import until  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "replicas.json"


async def ready(s: Scaled, count: int) -> None:
    await until(
        lambda: s.phases() == ["ready"] * count and len(s.connected()) == count,
        lambda: f"{count} ready and connected: {s.phases()}",
        60,
    )


async def throughput(replicas: int, args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        async with scaled(
            Path(tmp),
            {"min": replicas, "max": replicas},
            capacity=args.capacity,
            service_s=args.service_s,
        ) as s:
            await ready(s, replicas)
            users = 4 * args.capacity * replicas
            began = time.monotonic()
            await s.load(users=users, seconds=args.seconds, stream_every=10**9)
            took = time.monotonic() - began
            served = [n.server.served for n in s.nodes.live()]
            return {
                "replicas": replicas,
                "users": users,
                "answered": len(s.answers) - len(s.failures),
                "failed": len(s.failures),
                "requests_per_s": round((len(s.answers) - len(s.failures)) / took, 2),
                "served_by_each": served,
            }


async def scale_out(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        async with scaled(
            Path(tmp), {"min": 1, "max": 2}, capacity=args.capacity, service_s=args.service_s
        ) as s:
            await ready(s, 1)
            step = time.monotonic()
            loading = asyncio.create_task(s.load(users=4 * args.capacity, seconds=START_S + 12))
            await until(
                lambda: len(s.nodes.nodes) == 2 and s.nodes.nodes[1].server.served > 0,
                "an answer from the second replica",
                60,
            )
            first_answer = time.monotonic() - step
            await loading
            return {
                "start_s": START_S,
                "scale_out_window_s": WINDOW_S,
                "step_to_first_answer_s": round(first_answer, 2),
                "target_s": START_S + 10,
                "met": first_answer <= START_S + 10,
                "failed": len(s.failures),
            }


async def main(args: argparse.Namespace) -> dict[str, Any]:
    runs = [await throughput(n, args) for n in (1, 2, 4)]
    one = runs[0]["requests_per_s"]
    for run in runs:
        run["ratio_to_n_times_one"] = round(run["requests_per_s"] / (run["replicas"] * one), 3)
    return {
        "what": "stand-in servers of fixed capacity behind the real router and agent",
        "machine": f"{platform.machine()}, {platform.python_version()}",
        "capacity_per_server": args.capacity,
        "service_s": args.service_s,
        "seconds": args.seconds,
        "throughput": runs,
        "throughput_target_met": all(r["ratio_to_n_times_one"] >= 0.9 for r in runs),
        "scale_out": await scale_out(args),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--capacity", type=int, default=2)
    parser.add_argument("--service-s", type=float, default=0.25)
    result = asyncio.run(main(parser.parse_args()))
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
