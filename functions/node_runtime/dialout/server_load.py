"""The model server's own count of the requests it runs and queues, read in its process.

vLLM's ``/metrics`` (Prometheus text) has ``vllm:num_requests_running`` and
``vllm:num_requests_waiting``; the agent reads them through the application, as it runs any
request, and sends them up with each heartbeat (``wire.LOAD``). Routers that share a server
see its whole queue so, not only the requests each sent it. A server without those metrics
(Infinity) reports nothing.

Its health is read the same way (``/health``: vLLM answers 503 once its engine is dead), when
an answer fails with a 5xx: the agent then knows whether the server itself is gone.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Message = MutableMapping[str, Any]
ASGIApp = Callable[..., Awaitable[None]]
METRICS_PATH = "/metrics"
HEALTH_PATH = "/health"
_RUNNING = "vllm:num_requests_running"
_WAITING = "vllm:num_requests_waiting"
_READ_S = 2.0


async def read_load(app: ASGIApp, scope: dict[str, Any]) -> tuple[int, int] | None:
    """(running, waiting) from the server's metrics; None if it has none or is too slow."""
    answer = await _call(app, scope)
    if answer is None or answer[0] != 200:
        return None
    return parse_load(answer[1].decode("utf-8", "replace"))


async def server_down(app: ASGIApp, scope: dict[str, Any]) -> bool:
    """Whether the server says it cannot serve: its health check answers 5xx. A check that
    fails or takes too long proves nothing (a busy server is not a dead one): False."""
    answer = await _call(app, scope)
    return answer is not None and answer[0] >= 500


async def _call(app: ASGIApp, scope: dict[str, Any]) -> tuple[int, bytes] | None:
    """A bodiless request to the application in this process: (status, body), or None if
    it raised or took longer than _READ_S."""
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
    return status[0], b"".join(body)


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
