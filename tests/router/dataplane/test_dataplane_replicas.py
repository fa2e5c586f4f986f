"""A node and several routers (replicas behind one address): the node dials every router it
was told of and serves each down its own connection; one router refusing it does not keep
it from the others.
"""

from __future__ import annotations

import asyncio
import json

import pytest
from node_runtime.dialout.agent import read_dials, write_dial
from node_runtime.server_files import any_in_flight

from inference_bundle.router.dataplane.connections import server_label
from inference_bundle.router.dataplane.node_credentials import Refused
from tests.router.dataplane_fakes import (
    CHAT,
    ENDPOINT,
    Served,
    chat,
    connected,
    dial_refused,
    vouch,
)
from tests.waiting import until

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]


async def test_a_server_dials_every_router_and_serves_each_down_its_own_connection(
    served: Served,
) -> None:
    second = await served.another_router()
    node = await served.start_node("s-1", routers=[served, second])
    await connected(served.plane)
    await connected(second.plane)
    # A stream on each router's connection at once (their stream ids may be the same).
    async with (
        served.client.stream("POST", CHAT, json=chat(stream=True)) as first,
        second.client.stream("POST", CHAT, json=chat(stream=True)) as other,
    ):
        first_lines, other_lines = first.aiter_lines(), other.aiter_lines()
        assert (await anext(first_lines)).startswith("data:")
        assert (await anext(other_lines)).startswith("data:")
        assert any_in_flight(node.agent.paths)
        await first.aclose()  # the first client leaves: its request is cancelled at the server
        await asyncio.wait_for(node.model.disconnected.wait(), 10)
        assert any_in_flight(node.agent.paths)  # the other router's request still holds it
        node.model.gate.set()
        rest = [line async for line in other_lines if line.startswith("data:")]
    assert rest[-1] == "data: [DONE]" and json.loads(rest[-2][5:])["n"] == 2
    assert not any_in_flight(node.agent.paths)
    assert (await second.client.post(CHAT, json=chat())).status_code == 200
    [on_first] = served.plane.servers(ENDPOINT)
    [on_second] = second.plane.servers(ENDPOINT)
    assert on_first["server"] == on_second["server"] == server_label("s-1")
    assert (on_first["requests"], on_second["requests"]) == (1, 2)
    # Stopping says goodbye on both: each router forgets its own credential.
    dials = read_dials(node.folder) or {}
    await node.agent.stop()
    for router in (served, second):
        for _ in range(100):
            if not router.plane.servers(ENDPOINT):
                break
            await asyncio.sleep(0.02)
        with pytest.raises(Refused, match="unknown or revoked"):
            router.plane.credentials.admit(dials[router.url].token, ENDPOINT, "s-1")


async def test_a_router_that_refuses_the_node_does_not_keep_it_from_another(
    served: Served,
) -> None:
    second = await served.another_router()
    node = await served.start_node("s-1")
    good = {"url": second.url, "endpoint": ENDPOINT, "ca_file": None}
    write_dial(node.folder, {**good, "token": served.plane.credentials.mint(ENDPOINT)})
    await connected(served.plane)
    await until(lambda: dial_refused(node, second.url), "the second router's refusal of the dial")
    assert second.plane.servers(ENDPOINT) == []  # another router's credential: refused
    assert (await served.client.post(CHAT, json=chat())).status_code == 200
    vouch(second, "s-1", node.agent)
    write_dial(node.folder, {**good, "token": second.plane.credentials.mint(ENDPOINT)})
    await connected(second.plane)
    assert len(served.plane.servers(ENDPOINT)) == 1
