"""The seam of a new operation: one record, registered here, and nothing else changed.

An operation that exists only in this test (``/v1/echo``) is registered and sent through the
real router on uvicorn to a node's real agent: authentication, its body check, limits (its
cost estimated from its record's prompt fields), a stream whose usage the router asks for
and charges, the access log and the usage record. No module of the router names it.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest
from pydantic import Field

from inference_bundle.config.operation_bodies import RequestBody
from inference_bundle.config.operations import Operation, register, unregister
from inference_bundle.config.settings import LimitsSettings
from tests.router.conftest import envelope
from tests.router.dataplane_fakes import TINY, Served, connected
from tests.router.limits_helpers import limits

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]
ECHO = "/resource_server/local/vllm/v1/echo"


class EchoBody(RequestBody):
    text: str = Field(min_length=1)


@pytest.fixture
def echo() -> Iterator[Operation]:
    operation = Operation(
        "/v1/echo",
        frozenset({"chat"}),
        frozenset({"vllm"}),
        check=EchoBody,
        prompt_fields=("text",),
        generates=True,
        usage_in_stream=True,
        stream="chat_chunks",
    )
    register(operation)
    yield operation
    unregister(operation.path)


class EchoServer:
    """Echoes ``text`` back as a stream of chat chunks, with usage when asked for it."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, dict[str, Any]]] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        body = json.loads((await receive())["body"])
        self.seen.append((scope["path"], body))
        headers = [(b"content-type", b"text/event-stream")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        for word in body["text"].split():
            chunk = {"object": "chat.completion.chunk", "model": body["model"], "choices": [
                {"index": 0, "delta": {"content": word}, "finish_reason": None}]}  # fmt: skip
            await send(_event(chunk))
        if (body.get("stream_options") or {}).get("include_usage"):
            usage = {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}
            await send(_event({"object": "chat.completion.chunk", "choices": [], "usage": usage}))
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n"})


def _event(payload: dict[str, Any]) -> dict[str, Any]:
    data = f"data: {json.dumps(payload, separators=(',', ':'))}\n\n".encode()  # as vLLM writes
    return {"type": "http.response.body", "body": data, "more_body": True}


async def test_an_operation_registered_alone_goes_through_every_step(
    served: Served, echo: Operation
) -> None:
    node = await served.start_node("s-1", model=EchoServer())
    await connected(served.plane)
    limiter = served.harness.service.limiter
    limiter.update(LimitsSettings.model_validate(limits(tokens_per_day=10_000)))
    body = {"model": TINY, "text": "one two three", "stream": True}
    assert (
        await served.client.post(ECHO, json=body, headers={"Authorization": ""})
    ).status_code == 401
    refused = await served.client.post(ECHO, json={"model": TINY, "stream": True})
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "text"
    assert refused.headers["x-request-id"]  # an error names its request, as the log does
    async with served.client.stream("POST", ECHO, json=body) as response:
        assert response.status_code == 200
        request_id = response.headers["x-request-id"]
        events = [line async for line in response.aiter_lines() if line.startswith("data:")]
    words = [json.loads(e[5:])["choices"][0]["delta"]["content"] for e in events[:-1]]
    assert words == ["one", "two", "three"] and events[-1] == "data: [DONE]"
    # The router asked for the usage it charges, and kept it from the client who did not.
    [(path, sent)] = node.model.seen
    assert path == "/v1/echo" and sent["stream_options"] == {"include_usage": True}
    for _ in range(200):
        await limiter.flush()
        if records := limiter.ledger.records([request_id]):
            break
        await asyncio.sleep(0.05)
    [record] = records
    assert (record["operation"], record["status"]) == ("/v1/echo", 200)
    assert (record["prompt_tokens"], record["completion_tokens"]) == (7, 3)


class FormServer:
    """Answers what form it was sent: its content type and the fields and file it held."""

    def __init__(self) -> None:
        self.seen: list[bytes] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        raw = b""
        while True:
            message = await receive()
            raw += message["body"]
            if not message.get("more_body"):
                break
        self.seen.append(raw)
        headers = dict(scope["headers"])
        answer = {"content_type": headers[b"content-type"].decode(), "size": len(raw)}
        reply = json.dumps(answer).encode()
        start = [(b"content-type", b"application/json")]
        await send({"type": "http.response.start", "status": 200, "headers": start})
        await send({"type": "http.response.body", "body": reply})


@pytest.fixture
def transcribe() -> Iterator[Operation]:
    operation = Operation(
        "/v1/audio/echo", frozenset({"chat"}), frozenset({"vllm"}), body="multipart"
    )
    register(operation)
    yield operation
    unregister(operation.path)


async def test_a_multipart_operation_passes_its_form_down_the_connection(
    served: Served, transcribe: Operation
) -> None:
    url = "/resource_server/local/vllm/v1/audio/echo"
    recording = bytes(range(256)) * 1024  # 256 KiB: several records on the line
    form = {"model": TINY, "language": "en"}
    files = {"file": ("talk.wav", recording, "audio/wav")}
    # No server dials in after its start: a form is never sent through a task, and says so.
    served.harness.endpoint.handler = lambda spec, request: envelope(200, None)
    cold = await served.client.post(url, data=form, files=files)
    assert cold.status_code == 503 and cold.json()["error"]["code"] == "model_not_ready"
    node = await served.start_node("s-1", model=FormServer())
    await connected(served.plane)
    answer = await served.client.post(url, data=form, files=files)
    assert answer.status_code == 200, answer.text
    assert answer.json()["content_type"].startswith("multipart/form-data; boundary=")
    [sent] = node.model.seen
    assert recording in sent and b'name="language"\r\n\r\nen\r\n' in sent
    assert f'name="model"\r\n\r\n{TINY}\r\n'.encode() in sent
    missing = await served.client.post(url, data={"language": "en"}, files=files)
    assert missing.status_code == 400 and missing.json()["error"]["param"] == "model"
