"""The credentials a node dials the router with: minted per endpoint, bound to the first
server that uses one, refused out of their place, revoked by the server's goodbye.

Over a real socket with the real agent (dataplane_fakes.py); the last test drives the
credential book alone on a fake clock.
"""

from __future__ import annotations

import asyncio

import pytest
from node_runtime import wire
from node_runtime.dialout.agent import read_dials, write_dial
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from inference_bundle.router.dataplane.credentials import Credentials, Refused
from tests.router.dataplane_fakes import (
    ENDPOINT,
    Served,
    connected,
)

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]


async def test_a_node_with_a_wrong_credential_is_refused_until_a_task_hands_a_good_one(
    served: Served,
) -> None:
    node = await served.start_node("s-1", token="not-a-credential")
    await asyncio.sleep(0.5)
    assert served.plane.servers(ENDPOINT) == []
    write_dial(
        node.folder,
        {
            "url": served.url,
            "endpoint": ENDPOINT,
            "ca_file": None,
            "token": served.plane.credentials.mint(ENDPOINT),
        },
    )
    await connected(served.plane)


@pytest.mark.parametrize(
    ("endpoint", "server_id", "why"),
    [
        ("local-tiny-chat", "s-2", "bound to s-1: another server may not reuse it"),
        ("local-minilm", "s-1", "minted for another endpoint"),
        ("no-such-endpoint", "s-1", "an endpoint this router does not serve"),
    ],
)
async def test_the_handshake_refuses_a_credential_used_out_of_its_place(
    served: Served, endpoint: str, server_id: str, why: str
) -> None:
    node = await served.start_node("s-1")
    await connected(served.plane)
    token = (read_dials(node.folder) or {})[served.url].token
    headers = {
        "Authorization": f"Bearer {token}",
        wire.ENDPOINT_HEADER: endpoint,
        wire.SERVER_HEADER: server_id,
    }
    with pytest.raises(InvalidStatus) as refused:
        async with connect(wire.websocket_url(served.url), additional_headers=headers):
            pass
    assert refused.value.response.status_code == 403, why


async def test_a_bye_revokes_the_servers_credential(served: Served) -> None:
    node = await served.start_node("s-1")
    await connected(served.plane)
    token = (read_dials(node.folder) or {})[served.url].token
    await node.agent.stop()
    for _ in range(100):
        if not served.plane.servers(ENDPOINT):
            break
        await asyncio.sleep(0.02)
    with pytest.raises(Refused, match="unknown or revoked"):
        served.plane.credentials.admit(token, ENDPOINT, "s-1")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_credential_binds_to_its_first_server_and_lives_by_its_clocks() -> None:
    clock = Clock()
    book = Credentials(ttl_s=60, redial_grace_s=30, clock=clock)
    token = book.mint("e")
    with pytest.raises(Refused, match="not for endpoint 'f'"):
        book.admit(token, "f", "s-1")
    book.admit(token, "e", "s-1")
    with pytest.raises(Refused, match="another server"):
        book.admit(token, "e", "s-2")
    book.dropped(token)
    clock.now += 29
    book.admit(token, "e", "s-1")  # dialled again within the grace
    book.dropped(token)
    clock.now += 31
    with pytest.raises(Refused, match="redial grace"):
        book.admit(token, "e", "s-1")
    late = book.mint("e")
    clock.now += 61
    with pytest.raises(Refused, match="expired before its first use"):
        book.admit(late, "e", "s-3")
    book.mint("e")  # minting forgets what can no longer be admitted
    with pytest.raises(Refused, match="unknown"):
        book.admit(late, "e", "s-3")
    with pytest.raises(Refused, match="unknown"):
        book.admit("made-up", "e", "s-1")
