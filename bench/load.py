"""The benchmark's client: sequential latency and concurrent throughput, paths interleaved.

Runs in its own venv (.venvs/bench, aiohttp): an httpx client tops out near 250 requests/s
on this machine and would be the bottleneck; aiohttp reaches about 860.

    .venvs/bench/bin/python bench/load.py < plan.json > samples.json

The plan names the paths (a base URL and headers each), one request body, and the counts.
A path marked "probe" (with its own body and expected status) is timed in the sequential
rounds only: it shows what part of a path's cost comes before the request is forwarded.
Sequential: every round sends one request per path over that path's kept connection, the
order rotated each round, so drift and CPU wake-ups hit all paths alike. Throughput: rounds
of a fixed number of requests per path at the given concurrency, paths taking turns.
Every loop is bounded by its counts; a non-200 answer stops the run.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import sys
import time
from typing import Any
from urllib.parse import urlsplit

import aiohttp

CHAT = "/v1/chat/completions"


class BadAnswer(RuntimeError):
    """A path answered something other than a chat completion."""


def check(name: str, status: int, raw: bytes, expect: int = 200) -> None:
    if status != expect:
        raise BadAnswer(f"{name}: HTTP {status}: {raw[:300]!r}")
    if expect == 200 and b'"choices"' not in raw:
        raise BadAnswer(f"{name}: no choices in the answer: {raw[:300]!r}")


class KeptConnection:
    """One path's HTTP/1.1 connection, reopened if the server closes it."""

    def __init__(self, path: dict[str, Any], payload: bytes) -> None:
        parts = urlsplit(path["url"])
        self.name = path["name"]
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.target = parts.path.rstrip("/") + CHAT
        self.headers = {"Content-Type": "application/json", **path.get("headers", {})}
        self.payload = json.dumps(path["body"]).encode() if "body" in path else payload
        self.expect = path.get("expect", 200)
        self.conn = self._open()

    def _open(self) -> http.client.HTTPConnection:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=60)
        conn.connect()
        return conn

    def send(self) -> float:
        """Seconds for one request, answer read and checked."""
        for attempt in (1, 2):
            began = time.perf_counter()
            try:
                self.conn.request("POST", self.target, self.payload, self.headers)
                response = self.conn.getresponse()
                raw = response.read()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                self.conn.close()
                self.conn = self._open()
                if attempt == 2:
                    raise
                continue
            elapsed = time.perf_counter() - began
            check(self.name, response.status, raw, self.expect)
            return elapsed
        raise AssertionError("unreachable")

    def close(self) -> None:
        self.conn.close()


def sequential(plan: dict[str, Any], payload: bytes) -> dict[str, list[float]]:
    """Latencies in ms per path, after a warm-up; one request per path per round."""
    conns = [KeptConnection(path, payload) for path in plan["paths"]]
    try:
        for _ in range(plan["warmup"]):
            for conn in conns:
                conn.send()
        samples: dict[str, list[float]] = {conn.name: [] for conn in conns}
        for round_no in range(plan["n"]):
            shift = round_no % len(conns)
            for conn in conns[shift:] + conns[:shift]:
                samples[conn.name].append(conn.send() * 1e3)
        return samples
    finally:
        for conn in conns:
            conn.close()


async def burst(
    session: aiohttp.ClientSession,
    url: str,
    headers: dict[str, str],
    payload: bytes,
    name: str,
    requests: int,
    concurrency: int,
) -> float:
    """Send `requests` requests with `concurrency` in flight; the seconds it took."""
    left = requests

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            async with session.post(url, data=payload, headers=headers) as response:
                check(name, response.status, await response.read())

    began = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - began


async def throughput(plan: dict[str, Any], payload: bytes) -> dict[str, list[float]]:
    """Requests/s per path, one figure per round."""
    concurrency = plan["concurrency"]
    paths = [path for path in plan["paths"] if not path.get("probe")]
    rates: dict[str, list[float]] = {path["name"]: [] for path in paths}
    sessions = {}
    try:
        for path in paths:
            connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
            sessions[path["name"]] = aiohttp.ClientSession(
                connector=connector, timeout=aiohttp.ClientTimeout(total=120)
            )
        for round_no in range(plan["rounds"] + 1):  # round 0 opens connections: not counted
            count = concurrency * 2 if round_no == 0 else plan["requests"]
            shift = round_no % len(paths)
            for path in paths[shift:] + paths[:shift]:
                headers = {"Content-Type": "application/json", **path.get("headers", {})}
                url = path["url"].rstrip("/") + CHAT
                seconds = await burst(
                    sessions[path["name"]],
                    url,
                    headers,
                    payload,
                    path["name"],
                    count,
                    concurrency,
                )
                if round_no:
                    rates[path["name"]].append(count / seconds)
        return rates
    finally:
        for session in sessions.values():
            await session.close()


def main() -> int:
    plan = json.load(sys.stdin)
    payload = json.dumps(plan["body"]).encode()
    try:
        latency = sequential(plan, payload)
        rates = asyncio.run(throughput(plan, payload))
    except BadAnswer as err:
        print(f"load: {err}", file=sys.stderr)
        return 1
    json.dump({"latency_ms": latency, "throughput_rps": rates}, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
