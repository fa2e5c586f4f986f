"""Responses, Messages, rerank and the tokenizer through the router (fast tier).

The real openai and anthropic SDKs over the ASGI app, against the scripted endpoint: the
task path, where a stream is a whole answer replayed as the operation's named events.
Against real vLLM: test_agent_apis_e2e.py.
"""

from __future__ import annotations

from typing import Any

import anthropic
import httpx2
import pytest

from inference_bundle.config.settings import LimitsSettings
from inference_bundle.router.api.stream_response import UsageTap
from inference_bundle.router.limits.limiter import Usage
from inference_bundle.router.limits.rules import estimate
from tests.router.api.test_api import openai_client
from tests.router.conftest import Harness, envelope, unsalted

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]
TINY = "local/tiny-llama"
ALIAS = "local/tiny-llama-previous"
GUIDE = "/resource_server/local/vllm"

RESPONSE = {
    "id": "resp_1",
    "object": "response",
    "created_at": 1,
    "model": TINY,
    "status": "completed",
    "output": [
        {
            "id": "msg_1",
            "type": "message",
            "role": "assistant",
            "status": "completed",
            "content": [{"type": "output_text", "text": "hello there", "annotations": []}],
        }
    ],
    "usage": {"input_tokens": 5, "output_tokens": 2, "total_tokens": 7},
    "parallel_tool_calls": True,
    "tool_choice": "auto",
    "tools": [],
}
MESSAGE = {
    "id": "msg_1",
    "type": "message",
    "role": "assistant",
    "model": TINY,
    "content": [
        {"type": "text", "text": "hello there"},
        {"type": "tool_use", "id": "call_1", "name": "lookup", "input": {"q": "x"}},
    ],
    "stop_reason": "tool_use",
    "stop_sequence": None,
    "usage": {"input_tokens": 5, "output_tokens": 2},
}


def answers(spec: dict[str, Any], request: dict[str, Any]) -> dict[str, Any]:
    """The backend: each operation's whole answer, as vLLM gives it."""
    path = request["path"]
    if path == "/v1/responses":
        return envelope(200, {**RESPONSE, "model": spec["name"]})
    if path == "/v1/messages":
        return envelope(200, {**MESSAGE, "model": spec["name"]})
    if path == "/tokenize":
        return envelope(200, {"count": 2, "max_model_len": 256, "tokens": [7, 9]})
    return envelope(404, {"error": {"message": f"no {path}", "type": "NotFoundError"}})


def claude(h: Harness, base: str = GUIDE) -> anthropic.AsyncAnthropic:
    """Anthropic's SDK as a user sets it up: a key and a base URL, nothing else."""
    # Anthropic's SDK takes only its own httpx2 client: one over the harness's ASGI app.
    app = h.client._transport.app  # type: ignore[attr-defined]
    http_client = httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app))
    return anthropic.AsyncAnthropic(
        api_key=h.key, base_url=f"http://router{base}", http_client=http_client, max_retries=0
    )


@pytest.fixture
def apis(harness: Harness) -> Harness:
    harness.endpoint.handler = answers
    return harness


@pytest.mark.parametrize("base", [f"{GUIDE}/v1", "/v1"], ids=["guide", "v1"])
async def test_responses_through_the_openai_sdk(apis: Harness, base: str) -> None:
    answer = await openai_client(apis, base).responses.create(model=ALIAS, input="hi")
    assert (answer.output_text, answer.model) == ("hello there", ALIAS)
    [sent] = apis.endpoint.submitted
    assert sent["path"] == "/v1/responses"
    # the served name goes to vLLM, with the caller's prefix-cache salt
    assert unsalted(sent["body"]) == {"model": TINY, "input": "hi"}


async def test_a_responses_stream_replays_the_answer_as_named_events(apis: Harness) -> None:
    stream = await openai_client(apis).responses.create(model=TINY, input="hi", stream=True)
    events = [event async for event in stream]
    kinds = [event.type for event in events]
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert "".join(deltas) == "hello there"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert events[-1].response.usage.output_tokens == 2


@pytest.mark.parametrize("base", [GUIDE, ""], ids=["guide", "v1"])
async def test_messages_through_the_anthropic_sdk(apis: Harness, base: str) -> None:
    message = await claude(apis, base).messages.create(
        model=ALIAS, max_tokens=8, messages=[{"role": "user", "content": "hi"}]
    )
    assert message.model == ALIAS
    assert [block.type for block in message.content] == ["text", "tool_use"]
    assert (message.usage.input_tokens, message.usage.output_tokens) == (5, 2)
    [sent] = apis.endpoint.submitted
    assert (sent["path"], sent["body"]["model"]) == ("/v1/messages", TINY)


async def test_a_messages_stream_gives_the_sdk_its_whole_message(apis: Harness) -> None:
    async with claude(apis).messages.stream(
        model=TINY, max_tokens=8, messages=[{"role": "user", "content": "hi"}]
    ) as stream:
        text = "".join([piece async for piece in stream.text_stream])
        final = await stream.get_final_message()
    assert text == "hello there"
    assert final.stop_reason == "tool_use"
    assert final.content[1].input == {"q": "x"}  # type: ignore[union-attr]
    assert final.usage.output_tokens == 2


async def test_a_key_sent_as_x_api_key_is_checked_like_a_bearer_token(apis: Harness) -> None:
    body = {"model": TINY, "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}
    wrong = await apis.client.post("/v1/messages", json=body, headers={"X-Api-Key": "nope"})
    assert wrong.status_code == 401
    assert wrong.json()["error"]["code"] == "invalid_api_key"
    good = await apis.client.post("/v1/messages", json=body, headers={"X-Api-Key": apis.key})
    assert good.status_code == 200, good.text


async def test_a_message_without_max_tokens_is_a_400_naming_it(apis: Harness) -> None:
    body = {"model": TINY, "messages": [{"role": "user", "content": "hi"}]}
    response = await apis.client.post("/v1/messages", json=body, headers=apis.auth)
    assert response.status_code == 400
    assert response.json()["error"]["message"] == "'max_tokens' is a required property."
    assert apis.endpoint.submitted == []


async def test_an_error_in_a_messages_stream_raises_in_the_sdk(apis: Harness) -> None:
    apis.endpoint.handler = lambda spec, request: envelope(
        400, {"error": {"message": "too long", "type": "BadRequestError", "code": 400}}
    )
    with pytest.raises(anthropic.APIStatusError, match="too long"):
        async with claude(apis).messages.stream(
            model=TINY, max_tokens=8, messages=[{"role": "user", "content": "hi"}]
        ) as stream:
            await stream.get_final_message()


@pytest.mark.parametrize("path", [f"{GUIDE}/v1/tokenize", "/v1/tokenize"], ids=["guide", "v1"])
async def test_the_tokenizer_is_served_from_the_servers_root(apis: Harness, path: str) -> None:
    response = await apis.client.post(
        path, json={"model": TINY, "prompt": "hello"}, headers=apis.auth
    )
    assert response.status_code == 200, response.text
    assert response.json()["tokens"] == [7, 9]
    [sent] = apis.endpoint.submitted
    assert sent["path"] == "/tokenize"


async def test_rerank_on_a_chat_model_says_what_it_answers(apis: Harness) -> None:
    response = await apis.client.post(
        "/v1/rerank",
        json={"model": TINY, "query": "q", "documents": ["a"]},
        headers=apis.auth,
    )
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "wrong_operation"
    assert "/responses" in error["message"] and "/tokenize" in error["message"]
    assert apis.endpoint.submitted == []


async def test_a_rerank_without_documents_is_a_400_naming_them(apis: Harness) -> None:
    response = await apis.client.post(
        "/v1/rerank", json={"model": TINY, "query": "q"}, headers=apis.auth
    )
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "documents"


def test_a_messages_stream_is_charged_its_prompt_and_its_output() -> None:
    tap = UsageTap(keep=True)
    start = b'event: message_start\ndata: {"type":"message_start","message":{"usage":{"input_tokens":9,"output_tokens":1}}}\n\n'  # noqa: E501
    delta = b'event: message_delta\ndata: {"type":"message_delta","usage":{"output_tokens":12}}\n\n'
    assert tap.feed(start) == start and tap.feed(delta) == delta
    assert tap.usage == Usage(9, 12)


def test_messages_and_rerank_are_estimated_from_what_they_send() -> None:
    settings = LimitsSettings(prompt_bytes_per_token=4.0, default_max_tokens=100)
    message = estimate(
        "/v1/messages",
        {"system": "x" * 400, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 7},
        settings,
    )
    assert message.prompt > 100 and message.completion == 7
    rerank = estimate("/v1/rerank", {"query": "q" * 40, "documents": ["d" * 80]}, settings)
    assert (rerank.prompt, rerank.completion) == (30, 0)


@pytest.mark.parametrize(
    ("url", "given"),
    [("file:///etc/passwd", "a 'file' URL"), ("scientific_diagram.png", "a URL without a scheme")],
)
async def test_an_image_url_that_is_no_data_or_http_url_is_a_400(
    apis: Harness, url: str, given: str
) -> None:
    parts = [{"type": "text", "text": "hi"}, {"type": "image_url", "image_url": {"url": url}}]
    body = {"model": TINY, "messages": [{"role": "user", "content": parts}]}
    response = await apis.client.post("/v1/chat/completions", json=body, headers=apis.auth)
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["param"], error["code"]) == ("image_url", "invalid_value")
    assert error["message"].endswith(f"or an http(s) URL, not {given}.")
    assert apis.endpoint.submitted == []


async def test_a_score_without_its_two_sides_is_a_400_naming_them(apis: Harness) -> None:
    response = await apis.client.post(
        "/v1/score", json={"model": "local/tiny-reranker", "text_1": "q"}, headers=apis.auth
    )
    assert response.status_code == 400
    assert response.json()["error"]["message"].startswith(
        "A score request compares two sides: send one of 'text_1' and 'text_2', "
    )
    assert apis.endpoint.submitted == []
