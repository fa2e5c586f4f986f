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


# The operations with checks of their own; any other carries at least a model.
OPERATIONS: dict[str, type[_OpenAIRequest]] = {
    "/v1/chat/completions": ChatRequest,
    "/v1/completions": CompletionRequest,
    "/v1/embeddings": EmbeddingRequest,
}


def validate(path: str, body: Any) -> _OpenAIRequest:
    """Check a parsed JSON body for an operation; 400 naming the first bad field."""
    if not isinstance(body, dict):
        raise APIError(400, "The request body must be a JSON object.")
    try:
        return OPERATIONS.get(path, _OpenAIRequest).model_validate(body)
    except ValidationError as err:
        first = err.errors()[0]
        param = ".".join(str(p) for p in first["loc"]) or None
        if first["type"] == "missing":
            message = f"'{param}' is a required property."
        else:
            message = f"Invalid value for '{param}': {first['msg']}."
        raise APIError(400, message, param=param, code="invalid_value") from None
