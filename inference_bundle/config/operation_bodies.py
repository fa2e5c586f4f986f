"""What each operation's body must carry; anything else its API defines passes through.

Each model is an operation's ``check`` (``config.operations``); pydantic names the first
field that is wrong, and the router turns that into OpenAI's 400.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

Tokens = list[int]


class RequestBody(BaseModel):
    """What every operation's body carries: the model, and whether to stream."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1)
    stream: bool = False
    stream_options: dict[str, Any] | None = None


class ChatBody(RequestBody):
    messages: list[dict[str, Any]] = Field(min_length=1)


class CompletionBody(RequestBody):
    prompt: str | list[str] | Tokens | list[Tokens]


class EmbeddingBody(RequestBody):
    input: str | list[str] | Tokens | list[Tokens]


class ResponsesBody(RequestBody):
    input: str | list[Any]


class MessagesBody(RequestBody):
    """Anthropic's Messages: ``max_tokens`` is required there, as it is here."""

    messages: list[dict[str, Any]] = Field(min_length=1)
    max_tokens: int = Field(ge=1)


class RerankBody(RequestBody):
    query: str
    documents: list[Any] = Field(min_length=1)


# vLLM's /v1/score takes its two sides under one of these pairs of names (1:1, 1:N or N:N).
SCORE_PAIRS = (("text_1", "text_2"), ("queries", "documents"), ("queries", "items"),
               ("data_1", "data_2"))  # fmt: skip


def score_pairs(body: dict[str, Any]) -> tuple[str, str] | None:
    """(param, sentence) when a score request names neither side of any pair, else None."""
    if any(first in body and second in body for first, second in SCORE_PAIRS):
        return None
    names = ", ".join(f"'{a}' and '{b}'" for a, b in SCORE_PAIRS)
    return "text_1", f"A score request compares two sides: send one of {names}."
