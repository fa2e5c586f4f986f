"""The APIs agents use, through the real router and vLLM: the openai SDK's Responses, tool
calls and structured outputs, Anthropic's SDK on Messages, and the tokenizer.

The tiny model's words are random; its shapes are not: the assertions are about shapes,
token counts and what the SDKs make of the answers.
"""

from __future__ import annotations

import json
from typing import Any

import anthropic
import httpx
import pytest

from tests.e2e_router import ROOT, TINY, RunningRouter

# The session's router starts vLLM on first use (up to its wait_s, 300 s).
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
GUIDE = "/resource_server/local/vllm"
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "enum": ["Paris", "Lyon", "Nice"]}},
            "required": ["city"],
            "additionalProperties": False,
        },
        # Arguments held to the schema (vLLM's structured outputs), as OpenAI's strict does.
        "strict": True,
    },
}
HELLO: Any = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture
def router(e2e_router: RunningRouter) -> RunningRouter:
    return e2e_router


def no_whitespace() -> dict[str, int]:
    """A logit bias against the tiny vocabulary's whitespace-only tokens.

    JSON allows whitespace between any two tokens, and a model with random weights, held to
    a JSON grammar, spends its whole budget on it; a real model does not.
    """
    tokenizer = json.loads((ROOT / ".state/models/tiny-llama/tokenizer.json").read_text())
    vocab: dict[str, int] = tokenizer["model"]["vocab"]
    # Byte-level BPE writes space, newline, tab and carriage return as these characters.
    return {str(i): -100 for t, i in vocab.items() if t and set(t) <= set("ĠĊĉč")}


def claude(router: RunningRouter, base: str = GUIDE) -> anthropic.Anthropic:
    return anthropic.Anthropic(api_key=router.key, base_url=router.url + base, max_retries=0)


@pytest.mark.parametrize("base", [f"{GUIDE}/v1", "/v1"], ids=["guide", "v1"])
def test_responses_whole_and_streamed(router: RunningRouter, base: str) -> None:
    client = router.client(base)
    whole = client.responses.create(model=TINY, input="hello", max_output_tokens=8)
    assert whole.model == TINY and whole.status in ("completed", "incomplete")
    assert whole.usage.input_tokens > 0 and 0 < whole.usage.output_tokens <= 8
    events = list(
        client.responses.create(model=TINY, input="hello", max_output_tokens=8, stream=True)
    )
    kinds = [event.type for event in events]
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert "response.output_text.delta" in kinds
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == events[-1].response.output_text


@pytest.mark.parametrize("base", [GUIDE, ""], ids=["guide", "v1"])
def test_messages_whole_and_streamed_with_anthropics_sdk(router: RunningRouter, base: str) -> None:
    client = claude(router, base)
    message = client.messages.create(model=TINY, max_tokens=8, messages=HELLO)
    assert message.model == TINY and message.role == "assistant"
    assert message.content[0].type == "text"
    assert message.usage.input_tokens > 0 and 0 < message.usage.output_tokens <= 8
    with client.messages.stream(model=TINY, max_tokens=8, messages=HELLO) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "".join(b.text for b in final.content if b.type == "text")
    assert final.usage.output_tokens > 0


def test_a_tool_call_round_trip(router: RunningRouter) -> None:
    client = router.client()
    first = client.chat.completions.create(
        model=TINY,
        messages=HELLO,
        tools=[WEATHER],
        tool_choice="required",
        parallel_tool_calls=False,
        logit_bias=no_whitespace(),
        temperature=0,
        max_tokens=150,  # the tiny vocabulary spells JSON about a character a token
    )
    [call] = first.choices[0].message.tool_calls[:1]
    assert call.function.name == "get_weather"
    arguments = json.loads(call.function.arguments)
    assert set(arguments) == {"city"} and arguments["city"] in ("Paris", "Lyon", "Nice")
    assert first.choices[0].finish_reason == "tool_calls"
    answer = client.chat.completions.create(
        model=TINY,
        messages=[
            *HELLO,
            {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
            {"role": "tool", "tool_call_id": call.id, "content": '{"celsius": 21}'},
        ],
        tools=[WEATHER],
        max_tokens=8,
    )
    assert answer.choices[0].finish_reason in ("stop", "length", "tool_calls")
    # The tool's answer reached the model: the prompt grew by the call and its result.
    assert answer.usage.prompt_tokens > first.usage.prompt_tokens


def test_structured_output_follows_the_json_schema(router: RunningRouter) -> None:
    schema: dict[str, Any] = {
        "type": "object",
        "properties": {"hot": {"type": "boolean"}, "unit": {"enum": ["C", "F"]}},
        "required": ["hot", "unit"],
        "additionalProperties": False,
    }
    answer = router.client().chat.completions.create(
        model=TINY,
        messages=HELLO,
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "weather", "schema": schema, "strict": True},
        },
        logit_bias=no_whitespace(),
        temperature=0,
        max_tokens=64,
    )
    parsed = json.loads(answer.choices[0].message.content or "")
    assert isinstance(parsed["hot"], bool) and parsed["unit"] in ("C", "F")
    assert set(parsed) == {"hot", "unit"}


@pytest.mark.parametrize("path", [f"{GUIDE}/v1/tokenize", "/v1/tokenize"], ids=["guide", "v1"])
def test_tokenize_counts_what_chat_counts(router: RunningRouter, path: str) -> None:
    headers = {"Authorization": f"Bearer {router.key}"}
    tokenized = httpx.post(
        router.url + path, json={"model": TINY, "messages": HELLO}, headers=headers, timeout=300
    )
    assert tokenized.status_code == 200, tokenized.text
    chat = router.client().chat.completions.create(model=TINY, messages=HELLO, max_tokens=1)
    assert tokenized.json()["count"] == len(tokenized.json()["tokens"])
    assert tokenized.json()["count"] == chat.usage.prompt_tokens
