"""The model server's own count of the requests it runs and queues, read in its process.

vLLM's ``/metrics`` (Prometheus text) has ``vllm:num_requests_running`` and
``vllm:num_requests_waiting``; the agent reads them through the application, as it runs any
request, and sends them up with each heartbeat (``wire.LOAD``). Routers that share a server
see its whole queue so, not only the requests each sent it. A server without those metrics
(Infinity) reports nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Message = MutableMapping[str, Any]
ASGIApp = Callable[..., Awaitable[None]]
METRICS_PATH = "/metrics"
_RUNNING = "vllm:num_requests_running"
_WAITING = "vllm:num_requests_waiting"
_READ_S = 2.0


async def read_load(app: ASGIApp, scope: dict[str, Any]) -> tuple[int, int] | None:
    """(running, waiting) from the server's metrics; None if it has none or is too slow."""
    body: list[bytes] = []
    status = [0]

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        if message["type"] == "http.response.start":
            status[0] = message["status"]
        elif message["type"] == "http.response.body":
            body.append(message.get("body", b""))

    try:
        async with asyncio.timeout(_READ_S):
            await app(scope, receive, send)
    except Exception:
        return None
    if status[0] != 200:
        return None
    return parse_load(b"".join(body).decode("utf-8", "replace"))


def parse_load(text: str) -> tuple[int, int] | None:
    """The two counts in Prometheus text (summed over their labels); None if absent."""
    counts = {_RUNNING: 0.0, _WAITING: 0.0}
    seen = False
    for line in text.splitlines():
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in counts:
            try:
                counts[name] += float(line.rsplit(" ", 1)[1])
            except (IndexError, ValueError):
                continue
            seen = True
    return (round(counts[_RUNNING]), round(counts[_WAITING])) if seen else None
