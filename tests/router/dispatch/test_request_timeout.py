"""An endpoint's request_timeout_s bounds its requests over the data plane (fast tier; the
end-to-end check from an endpoint's YAML is test_request_timeout_e2e.py)."""

from __future__ import annotations

import asyncio
import dataclasses
import time

import pytest

from tests.router.dataplane_fakes import CHAT, TINY, Served, chat, connected

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]
BOUND_S = 0.5


async def test_an_answer_not_begun_within_the_bound_is_a_504_and_cancelled_at_the_server(
    served: Served,
) -> None:
    route = served.harness.service.table.lookup(TINY, "local")
    # What an endpoint file's request_timeout_s makes of the route's spec (the route is the
    # table's own, frozen like every route).
    object.__setattr__(route, "spec", dataclasses.replace(route.spec, request_timeout_s=BOUND_S))
    node = await served.start_node("s-1")
    node.model.hold_start = True
    await connected(served.plane)
    began = time.monotonic()
    answer = await served.client.post(CHAT, json=chat())
    took = time.monotonic() - began
    assert answer.status_code == 504, answer.text
    assert BOUND_S <= took < BOUND_S + 5
    error = answer.json()["error"]
    assert error["code"] == "timeout"
    assert error["message"] == (
        f"The model '{TINY}' did not answer within its request timeout of {BOUND_S:g} s; "
        "the request was cancelled."
    )
    # The request was cancelled down the connection: the server saw its client go.
    await asyncio.wait_for(node.model.disconnected.wait(), 5)
