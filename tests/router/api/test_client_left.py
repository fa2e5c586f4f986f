"""A client that hangs up is recorded as 499 (client closed), a server that breaks off as 502.

Real sockets: the router on uvicorn and a node's real agent around a paced model
(dataplane_fakes.py), so that the client really leaves mid-stream. A 499 is in the request
counts and the usage records, and out of the error counts and the status page's error list.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from inference_bundle.router.api.records import CLIENT_CLOSED
from tests.router.dataplane_fakes import CHAT, TINY, Router, Served, chat, connected

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]


def requests_of(router: Router, status: int) -> float:
    sample = router.harness.service.metrics.registry.get_sample_value(
        "router_requests_total",
        {"operation": "/v1/chat/completions", "model": TINY, "status": str(status)},
    )
    return sample or 0.0


async def recorded(router: Router, request_id: str) -> dict[str, Any]:
    """The request's usage record, once the router wrote it (it records as a stream ends)."""
    limiter = router.harness.service.limiter
    for _ in range(200):
        await limiter.flush()
        found = limiter.ledger.records([request_id])
        if found:
            return found[0]
        await asyncio.sleep(0.05)
    raise AssertionError(f"no record of {request_id}")


async def test_a_client_that_hangs_up_mid_stream_is_a_499_and_no_error(served: Served) -> None:
    node = await served.start_node("s-1")
    await connected(served.plane)
    async with served.client.stream("POST", CHAT, json=chat(stream=True)) as response:
        request_id = response.headers["x-request-id"]
        async for line in response.aiter_lines():
            if line.startswith("data:"):
                break  # one event read, then hang up
    await asyncio.wait_for(node.model.disconnected.wait(), 10)
    record = await recorded(served, request_id)
    assert record["status"] == CLIENT_CLOSED
    assert (requests_of(served, 499), requests_of(served, 502)) == (1, 0)
    ledger = served.harness.service.limiter.ledger
    assert ledger.recent_errors(0) == []
    [model] = ledger.recent_by_model(0)
    assert (model["requests"], model["errors"]) == (1, 0)


async def test_a_server_that_breaks_off_mid_stream_stays_a_502_and_an_error(
    served: Served,
) -> None:
    node = await served.start_node("s-1")
    await connected(served.plane)
    node.model.gate.set()
    async with served.client.stream("POST", CHAT, json=chat(stream=True, fail=True)) as response:
        request_id = response.headers["x-request-id"]
        lines = [line async for line in response.aiter_lines() if line.startswith("data:")]
    assert json.loads(lines[-2][5:])["error"]["code"] == "server_gone"
    assert (await recorded(served, request_id))["status"] == 502
    assert (requests_of(served, 499), requests_of(served, 502)) == (0, 1)
    [error] = served.harness.service.limiter.ledger.recent_errors(0)
    assert error["status"] == 502


async def test_a_client_that_leaves_while_its_model_starts_is_a_499(served: Served) -> None:
    """No server dialled in: the stream waits for the model through its endpoint."""
    served.harness.endpoint.delay_s = 30
    async with served.client.stream("POST", CHAT, json=chat(stream=True)) as response:
        request_id = response.headers["x-request-id"]
        assert response.headers["content-type"].startswith("text/event-stream")
    record = await recorded(served, request_id)
    assert record["status"] == CLIENT_CLOSED
    assert served.harness.service.limiter.ledger.recent_errors(0) == []
