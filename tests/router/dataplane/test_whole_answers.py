"""A whole answer that fits in one record crosses as one ANSWER record (runtime 0.10): one
WebSocket message from the node instead of START, BODY and END. Larger answers, streams and
routers that do not ask for it get the three kinds of record as before; what the client gets
is the same either way."""

from __future__ import annotations

import json
from typing import Any

import pytest
from node_runtime import wire

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
    """The kind of every record of an answer the router gets (heartbeats and loads aside)."""
    seen: list[int] = []
    deliver = NodeConnection.deliver

    def counted(self: NodeConnection, record: bytes) -> None:
        kind = wire.unpack(record)[0]
        if kind not in (wire.HEARTBEAT, wire.LOAD):
            seen.append(kind)
        deliver(self, record)

    monkeypatch.setattr(NodeConnection, "deliver", counted)
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


async def test_a_router_that_does_not_ask_gets_three_records(
    served: Served, kinds: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A router that does not take ANSWER records (runtime 0.9) says nothing of them.
    made = wire.request_records

    def old(*args: Any, **kwargs: Any) -> list[bytes]:
        first, *rest = made(*args, **kwargs)
        return [first.replace(b',"answer":true', b"", 1), *rest]

    monkeypatch.setattr(wire, "request_records", old)
    await served.start_node("s-1", model=Sized())
    await connected(served.plane)
    answer = await served.client.post(CHAT, json=chat())
    assert answer.status_code == 200 and answer.json()["object"] == "chat.completion"
    assert kinds == [wire.START, wire.BODY, wire.END]


def test_the_head_says_whether_the_router_takes_answers() -> None:
    [record] = wire.request_records(1, "POST", "/v1/chat/completions", b"{}")
    head, body = wire.parse_request(wire.unpack(record)[2])
    assert head.answer is True and body == b"{}"
    old = b'{"method":"POST","path":"/v1/x","length":0}\n'
    assert wire.parse_request(old)[0].answer is False
    assert wire.answer_record(1, 200, "application/json", b"x" * wire.MAX_PAYLOAD) is None
