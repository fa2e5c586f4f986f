"""The credentials a node dials the router with: minted per endpoint, bound to the first
server that uses one, refused out of their place, revoked by the server's goodbye.

Over a real socket with the real agent (dataplane_fakes.py); the last test drives the
credential book alone on a fake clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import pytest
from node_runtime import wire
from node_runtime.dialout.agent import read_dials, write_dial
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from inference_bundle.router.dataplane.node_credentials import Credentials, InUse, Refused
from inference_bundle.router.dataplane.refusal_log import RefusalLog, cut
from tests.responsiveness import describe, responsive
from tests.router.dataplane_fakes import (
    CHAT,
    ENDPOINT,
    Served,
    chat,
    connected,
    dial_refused,
)
from tests.waiting import until

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]


async def test_a_node_with_a_wrong_credential_is_refused_until_a_task_hands_a_good_one(
    served: Served,
) -> None:
    node = await served.start_node("s-1", token="not-a-credential")
    await until(lambda: dial_refused(node, served.url), "the refusal of the wrong credential")
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


async def dial_as(
    served: Served, token: str, server_id: str, proof: str | None = None
) -> int | None:
    """Dial the router's node route by hand: the refusal's status, or None (then hung up)."""
    headers = {
        "Authorization": f"Bearer {token}",
        wire.ENDPOINT_HEADER: ENDPOINT,
        wire.SERVER_HEADER: server_id,
    }
    if proof is not None:
        headers[wire.PROOF_HEADER] = proof
    try:
        async with connect(wire.websocket_url(served.url), additional_headers=headers):
            return None
    except InvalidStatus as refused:
        return int(refused.response.status_code)


async def test_a_copied_dial_file_is_not_enough_to_dial_in(
    served: Served, caplog: pytest.LogCaptureFixture
) -> None:
    node = await served.start_node("s-1")
    await connected(served.plane)
    # A reader of the node's files has the credential in use and the server's id, and may
    # find a fresh credential written for the server before the server used it.
    token = (read_dials(node.folder) or {})[served.url].token
    fresh = served.plane.credentials.mint(ENDPOINT)
    assert await dial_as(served, token, "s-1") == 403  # a second connection on one token
    assert await dial_as(served, token, "s-1", proof="guessed") == 403
    assert await dial_as(served, fresh, "s-1") == 403  # no proof of the server's key
    assert await dial_as(served, fresh, "s-1", proof="0" * 64) == 403
    refusals = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert any("does not prove the key" in message for message in refusals), refusals
    # The server kept its line and its credentials: a stranger could not say goodbye for it.
    [server] = served.plane.servers(ENDPOINT)
    assert server["requests"] == 0
    assert (await served.client.post(CHAT, json=chat())).status_code == 200
    assert served.plane.servers(ENDPOINT)[0]["requests"] == 1


async def test_a_proven_redial_lets_the_stale_line_go(served: Served) -> None:
    """The server dials again before the router saw its line drop: the new line wins."""
    node = await served.start_node("s-1")
    await connected(served.plane)
    [stale] = served.plane.hub._by_endpoint[ENDPOINT]
    token = (read_dials(node.folder) or {})[served.url].token
    headers = {
        "Authorization": f"Bearer {token}",
        wire.ENDPOINT_HEADER: ENDPOINT,
        wire.SERVER_HEADER: "s-1",
        wire.PROOF_HEADER: node.agent.secret,
    }
    async with connect(wire.websocket_url(served.url), additional_headers=headers):
        assert stale.superseded and stale.closed
        [fresh] = served.plane.hub._by_endpoint[ENDPOINT]
        assert fresh is not stale


async def test_a_flood_of_bad_dials_is_logged_once_a_minute_and_health_stays_fast(
    served: Served, caplog: pytest.LogCaptureFixture
) -> None:
    odd = "<b>\t" * 1500  # a dialler's header, with controls and far too long

    def flood() -> None:
        async def dials() -> None:
            for _ in range(1000):
                with contextlib.suppress(InvalidStatus):
                    headers = {"Authorization": "Bearer nope", wire.HOST_HEADER: odd}
                    async with connect(wire.websocket_url(served.url), additional_headers=headers):
                        pass

        asyncio.run(dials())

    flooding = asyncio.ensure_future(asyncio.to_thread(flood))
    took: list[float] = []
    while not flooding.done():
        began = time.monotonic()
        assert (await served.client.get("/health")).status_code == 200
        took.append(time.monotonic() - began)
        await asyncio.sleep(0.01)
    await flooding
    assert responsive(took), describe(took)
    lines = [r.getMessage() for r in caplog.records if "data plane: refused" in r.getMessage()]
    assert len(lines) == 1, lines[:3]
    assert "\t" not in lines[0] and len(lines[0]) < 400


def test_the_refusal_log_counts_what_it_did_not_write() -> None:
    clock = Clock()
    written: list[str] = []
    log = logging.getLogger("test.refusals")
    log.addHandler(handler := logging.Handler())
    handler.emit = lambda record: written.append(record.getMessage())  # type: ignore[method-assign]
    refusals = RefusalLog(log, clock=clock)
    for _ in range(5):
        refusals.refused("10.0.0.1", "e", "s", "h", "unknown or revoked credential")
    refusals.refused("10.0.0.1", "e", "s", "h", "the credential belongs to another server")
    refusals.refused("10.0.0.2", "e", "s", "h", "unknown or revoked credential")
    assert len(written) == 3
    clock.now += 61
    refusals.refused("10.0.0.1", "e", "s", "h", "unknown or revoked credential")
    assert "(4 more refused in the minute before)" in written[-1]
    assert cut("a\nb") == "a\\nb" and cut("y" * 100).endswith("...")


def test_a_credential_holds_one_live_connection() -> None:
    book = Credentials(ttl_s=60, redial_grace_s=30, clock=Clock())
    token = book.mint("e")
    book.admit(token, "e", "s-1")
    with pytest.raises(InUse, match="in use by a live connection"):
        book.admit(token, "e", "s-1")
    book.check(token, "e", "s-1")  # the rest of the credential still holds
    book.dropped(token)
    book.admit(token, "e", "s-1")


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
