"""What a request must carry; anything else OpenAI defines passes through to the backend."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from inference_bundle.router.errors import APIError

Tokens = list[int]


class _OpenAIRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1)
    stream: bool = False
    stream_options: dict[str, Any] | None = None


class ChatRequest(_OpenAIRequest):
    messages: list[dict[str, Any]] = Field(min_length=1)


class CompletionRequest(_OpenAIRequest):
    prompt: str | list[str] | Tokens | list[Tokens]


class EmbeddingRequest(_OpenAIRequest):
    input: str | list[str] | Tokens | list[Tokens]


class ResponsesRequest(_OpenAIRequest):
    input: str | list[Any]


class MessagesRequest(_OpenAIRequest):
    """Anthropic's Messages: ``max_tokens`` is required there, as it is here."""

    messages: list[dict[str, Any]] = Field(min_length=1)
    max_tokens: int = Field(ge=1)


class RerankRequest(_OpenAIRequest):
    query: str
    documents: list[Any] = Field(min_length=1)


# The operations with checks of their own; any other carries at least a model.
OPERATIONS: dict[str, type[_OpenAIRequest]] = {
    "/v1/chat/completions": ChatRequest,
    "/v1/completions": CompletionRequest,
    "/v1/responses": ResponsesRequest,
    "/v1/messages": MessagesRequest,
    "/v1/embeddings": EmbeddingRequest,
    "/v1/rerank": RerankRequest,
}


def validate(path: str, body: Any) -> _OpenAIRequest:
    """Check a parsed JSON body for an operation; 400 naming the first bad field.

    Media the body names are ``router.media``'s to check (a host lookup is awaited)."""
    if not isinstance(body, dict):
        raise APIError(400, "The request body must be a JSON object.")
    try:
        parsed = OPERATIONS.get(path, _OpenAIRequest).model_validate(body)
    except ValidationError as err:
        first = err.errors()[0]
        param = ".".join(str(p) for p in first["loc"]) or None
        if first["type"] == "missing":
            message = f"'{param}' is a required property."
        else:
            message = f"Invalid value for '{param}': {first['msg']}."
        raise APIError(400, message, param=param, code="invalid_value") from None
    if path == "/v1/score":
        check_score_pairs(body)
    return parsed


# vLLM's /v1/score takes its two sides under one of these pairs of names (1:1, 1:N or N:N).
SCORE_PAIRS = (("text_1", "text_2"), ("queries", "documents"), ("queries", "items"),
               ("data_1", "data_2"))  # fmt: skip


def check_score_pairs(body: dict[str, Any]) -> None:
    """The 400 for a score request that names neither side of any pair."""
    if any(first in body and second in body for first, second in SCORE_PAIRS):
        return
    names = ", ".join(f"'{a}' and '{b}'" for a, b in SCORE_PAIRS)
    raise APIError(
        400,
        f"A score request compares two sides: send one of {names}.",
        param="text_1",
        code="invalid_value",
    )
