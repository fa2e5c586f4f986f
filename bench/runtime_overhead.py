"""The node runtime's own cost per request, and each backend's start time, on this machine.

Overhead = median latency through node_runtime.handle (lock, state check, in-flight marker,
forward, envelope) minus median latency of the same request sent straight to the same
server over a kept connection. Chat completions with max_tokens 1, sent back to back,
alternating the two paths request by request so that drift hits both alike.

    .venv/bin/python bench/runtime_overhead.py [--n 200] [--out .state/bench/runtime_overhead.json]

Needs `make backends`. Starts its own servers in a temporary state folder and stops them.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import node_runtime  # noqa: E402
from node_runtime.server_files import ServerPaths, read_state  # noqa: E402

from tests.runtime.local_backends import infinity_spec, vllm_spec  # noqa: E402


def timed_start(spec: dict[str, Any], request: dict[str, Any]) -> float:
    """Wall time of a cold first call (server start plus the request)."""
    began = time.perf_counter()
    envelope = node_runtime.handle(spec, request)
    assert envelope["status"] == 200 and envelope["server"] == "started", envelope
    return time.perf_counter() - began


def sample(fn: Callable[[], None], n: int) -> list[float]:
    out = []
    for _ in range(n):
        began = time.perf_counter()
        fn()
        out.append(time.perf_counter() - began)
    return out


def measure_overhead(spec: dict[str, Any], n: int) -> dict[str, float]:
    body = {
        "model": spec["name"],
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 1,
        "temperature": 0.0,
    }
    request = {"method": "POST", "path": "/v1/chat/completions", "body": body}
    state = read_state(ServerPaths.for_model(spec["state_dir"], spec["name"]))
    assert state is not None
    conn = http.client.HTTPConnection("127.0.0.1", state.port, timeout=60)
    payload = json.dumps(body).encode()

    def direct() -> None:
        conn.request("POST", "/v1/chat/completions", payload, {"Content-Type": "application/json"})
        response = conn.getresponse()
        answer = json.loads(response.read())
        assert response.status == 200, answer

    def runtime() -> None:
        envelope = node_runtime.handle(spec, request)
        assert envelope["status"] == 200, envelope

    server_spec = node_runtime.ServerSpec.from_dict(spec)

    def bookkeeping() -> None:  # lock, state and liveness check, in-flight marker: no HTTP
        with node_runtime.use_server(server_spec):
            pass

    sample(direct, 20)
    sample(runtime, 20)
    bookkeeping_s = sample(bookkeeping, n)
    direct_s: list[float] = []
    runtime_s: list[float] = []
    for _ in range(n):  # alternate request by request, so that drift hits both paths alike
        direct_s += sample(direct, 1)
        runtime_s += sample(runtime, 1)
    conn.close()
    d50, r50 = statistics.median(direct_s), statistics.median(runtime_s)
    q = statistics.quantiles
    return {
        "n": n,
        "direct_p50_ms": d50 * 1e3,
        "runtime_p50_ms": r50 * 1e3,
        "overhead_p50_ms": (r50 - d50) * 1e3,
        # median of the per-pair differences: steadier than a difference of medians
        "overhead_paired_p50_ms": statistics.median(
            r - d for r, d in zip(runtime_s, direct_s, strict=True)
        )
        * 1e3,
        "bookkeeping_p50_ms": statistics.median(bookkeeping_s) * 1e3,
        "direct_p90_ms": q(direct_s, n=10)[-1] * 1e3,
        "runtime_p90_ms": q(runtime_s, n=10)[-1] * 1e3,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200, help="requests per path (default 200)")
    parser.add_argument("--out", type=Path, default=ROOT / ".state/bench/runtime_overhead.json")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="runtime-bench-") as tmp:
        state_dir = Path(tmp)
        chat_spec = vllm_spec("bench-chat", state_dir)
        specs = {
            "vllm (tiny chat)": (
                chat_spec,
                "/v1/chat/completions",
                {
                    "model": "bench-chat",
                    "max_tokens": 1,
                    "messages": [{"role": "user", "content": "hi"}],
                },
            ),
            "vllm (MiniLM pooling)": (
                vllm_spec("bench-pool", state_dir, task="embed"),
                "/v1/embeddings",
                {"model": "bench-pool", "input": ["hi"]},
            ),
            "infinity (MiniLM)": (
                infinity_spec("bench-inf", state_dir),
                "/v1/embeddings",
                {"model": "bench-inf", "input": ["hi"]},
            ),
        }
        # other work on the machine skews every figure: keep the load beside them
        results: dict[str, Any] = {"loadavg_1m_at_start": os.getloadavg()[0], "start_s": {}}
        try:
            for label, (spec, path, body) in specs.items():
                request = {"method": "POST", "path": path, "body": body}
                results["start_s"][label] = round(timed_start(spec, request), 2)
                print(f"start {label}: {results['start_s'][label]:.1f} s", flush=True)
                if spec is not chat_spec:
                    node_runtime.stop_server(node_runtime.ServerSpec.from_dict(spec))
            results["chat_max_tokens_1"] = measure_overhead(chat_spec, args.n)
        finally:
            for spec, _, _ in specs.values():
                node_runtime.stop_server(node_runtime.ServerSpec.from_dict(spec))

    overhead = results["chat_max_tokens_1"]
    print(
        f"chat max_tokens=1, n={overhead['n']}: direct p50 {overhead['direct_p50_ms']:.2f} ms, "
        f"runtime p50 {overhead['runtime_p50_ms']:.2f} ms, "
        f"overhead p50 {overhead['overhead_p50_ms']:.2f} ms "
        f"(paired {overhead['overhead_paired_p50_ms']:.2f} ms; "
        f"lock/state/marker alone {overhead['bookkeeping_p50_ms']:.2f} ms) "
        f"(p90 {overhead['direct_p90_ms']:.2f} / {overhead['runtime_p90_ms']:.2f} ms)"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
