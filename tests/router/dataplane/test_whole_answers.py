"""Fewer messages from the node (runtime 0.10): a whole answer that fits in one record
crosses as one ANSWER record, not START, BODY and END; what the node's requests write in one
turn of its event loop goes as one BATCH message. Larger answers and streams get the three
kinds of record as before, and a router that does not name the new records in its handshake
gets one message a record; what the client gets is the same either way."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from node_runtime import wire

from inference_bundle.router.dataplane import connect_route
from inference_bundle.router.dataplane.connections import NodeConnection
from tests.router.dataplane_fakes import CHAT, Served, chat, connected
from tests.router.stand_in_nodes import read_body

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]


class Sized:
    """A chat server whose answer is ``size`` bytes of JSON; a stream of 3 events if asked."""

    def __init__(self) -> None:
        self.size = 100

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        streamed = json.loads(await read_body(receive)).get("stream")
        kind = b"text/event-stream" if streamed else b"application/json"
        headers = [(b"content-type", kind)]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        if streamed:
            for n in range(3):
                event = f"data: {json.dumps({'n': n})}\n\n".encode()
                await send({"type": "http.response.body", "body": event, "more_body": True})
            await send({"type": "http.response.body", "body": b"data: [DONE]\n\n"})
            return
        pad = "x" * max(0, self.size - 40)
        body = json.dumps({"object": "chat.completion", "choices": [], "pad": pad}).encode()
        await send({"type": "http.response.body", "body": body})


@pytest.fixture
def kinds(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The kind of every record of an answer the router gets (heartbeats and loads aside),
    those inside a BATCH included."""
    seen: list[int] = []
    deliver = NodeConnection.deliver

    def counted(self: NodeConnection, record: bytes) -> None:
        kind = wire.unpack(record)[0]
        if kind not in (wire.HEARTBEAT, wire.LOAD, wire.BATCH):
            seen.append(kind)
        deliver(self, record)

    monkeypatch.setattr(NodeConnection, "deliver", counted)
    return seen


@pytest.fixture
def messages(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The kind of every message the router reads off its nodes' lines."""
    seen: list[int] = []
    deliver = connect_route._deliver

    async def counted(connection: NodeConnection, record: bytes) -> None:
        if record != wire.HEARTBEAT_RECORD:
            seen.append(wire.unpack(record)[0])
        await deliver(connection, record)

    monkeypatch.setattr(connect_route, "_deliver", counted)
    return seen


async def test_a_small_whole_answer_is_one_record(served: Served, kinds: list[int]) -> None:
    model = Sized()
    await served.start_node("s-1", model=model)
    await connected(served.plane)
    answer = await served.client.post(CHAT, json=chat())
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("application/json")
    assert answer.json()["object"] == "chat.completion"
    assert kinds == [wire.ANSWER]


async def test_a_large_answer_and_a_stream_come_as_start_body_end(
    served: Served, kinds: list[int]
) -> None:
    model = Sized()
    model.size = wire.MAX_PAYLOAD + 1000  # past one record
    await served.start_node("s-1", model=model)
    await connected(served.plane)
    answer = await served.client.post(CHAT, json=chat())
    assert answer.status_code == 200 and len(answer.json()["pad"]) == model.size - 40
    assert kinds[0] == wire.START and kinds[-1] == wire.END
    assert set(kinds[1:-1]) == {wire.BODY} and len(kinds) == 4  # 2 BODY records
    kinds.clear()
    async with served.client.stream("POST", CHAT, json=chat(stream=True)) as streamed:
        text = "".join([part async for part in streamed.aiter_text()])
    assert text.count("data: ") == 4 and text.endswith("data: [DONE]\n\n")
    assert kinds == [wire.START] + [wire.BODY] * 4 + [wire.END]


async def test_streams_written_in_one_turn_cross_in_fewer_messages(
    served: Served, kinds: list[int], messages: list[int]
) -> None:
    await served.start_node("s-1", model=Sized())
    await connected(served.plane)

    async def one() -> str:
        async with served.client.stream("POST", CHAT, json=chat(stream=True)) as streamed:
            return "".join([part async for part in streamed.aiter_text()])

    texts = await asyncio.gather(*(one() for _ in range(8)))
    assert all(t.count("data: ") == 4 and t.endswith("data: [DONE]\n\n") for t in texts)
    assert len(kinds) == 8 * 6  # START, 4 BODY and END a stream
    assert wire.BATCH in messages and len(messages) < len(kinds), (len(messages), len(kinds))


async def test_a_router_that_does_not_name_them_gets_a_message_a_record(
    served: Served, kinds: list[int], messages: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(connect_route, "_TAKES", [])  # a router of runtime 0.9
    await served.start_node("s-1", model=Sized())
    await connected(served.plane)
    answers = await asyncio.gather(*(served.client.post(CHAT, json=chat()) for _ in range(8)))
    assert all(a.status_code == 200 and a.json()["object"] == "chat.completion" for a in answers)
    assert kinds == messages and sorted(set(kinds)) == [wire.START, wire.BODY, wire.END]


def test_batches_keep_order_and_the_message_bound() -> None:
    records = [wire.pack(wire.BODY, n, bytes(n % 251 for _ in range(n * 997))) for n in range(90)]
    messages = list(wire.batches(records))
    assert len(messages) > 1 and all(len(m) <= wire.MAX_MESSAGE for m in messages)
    back: list[bytes] = []
    for message in messages:
        kind, _, payload = wire.unpack(message)
        back += wire.unbatch(payload) if kind == wire.BATCH else [message]
    assert back == records
    assert list(wire.batches(records[:1])) == records[:1]  # a lone record goes as it is
    with pytest.raises(wire.WireError):
        list(wire.unbatch(b"\x00\x00\x00\x09abc"))
    assert wire.answer_record(1, 200, "application/json", b"x" * wire.MAX_PAYLOAD) is None


async def test_an_answer_with_a_start_and_no_body_still_ends(served: Served) -> None:
    # The answer's start waits for a body; an application that sends none still answers.
    async def bodiless(scope: Any, receive: Any, send: Any) -> None:
        await read_body(receive)
        await send({"type": "http.response.start", "status": 202, "headers": []})

    await served.start_node("s-1", model=bodiless)
    await connected(served.plane)
    answer = await served.client.post(CHAT, json=chat())
    assert answer.status_code == 202 and answer.content == b""
