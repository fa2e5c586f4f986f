"""Server-sent events in OpenAI's streaming format, made from a whole answer.

A stream rides its server's connection when it can (``router.api.stream_response``). When it cannot
(no server dialled in after a start), the task's whole answer is sent as a short run of valid
chunks, preceded by SSE comment lines that say the model's state while the request waits.
"""

from __future__ import annotations

import json
from typing import Any

DONE = "data: [DONE]\n\n"


def comment(text: str) -> str:
    return f": {text}\n\n"


def event(payload: Any) -> str:
    return f"data: {json.dumps(payload, separators=(',', ':'))}\n\n"


def chunks(style: str, body: dict[str, Any], include_usage: bool) -> list[dict[str, Any]]:
    """The chunks a streaming backend would have sent for this complete answer (``style``:
    chat_chunks or text_chunks, the operation's)."""
    chat = style == "chat_chunks"
    base = {
        "id": body.get("id", ""),
        "object": "chat.completion.chunk" if chat else "text_completion",
        "created": body.get("created", 0),
        "model": body.get("model", ""),
    }
    out: list[dict[str, Any]] = []
    usage_field = {"usage": None} if include_usage else {}
    for choice in body.get("choices", []):
        index = choice.get("index", 0)
        if chat:
            message = choice.get("message") or {}
            delta: dict[str, Any] = {"role": message.get("role", "assistant")}
            delta["content"] = message.get("content")
            for key in ("reasoning_content", "refusal"):
                if message.get(key) is not None:
                    delta[key] = message[key]
            if message.get("tool_calls"):
                delta["tool_calls"] = [
                    {"index": i, **call} for i, call in enumerate(message["tool_calls"])
                ]
            first = {"index": index, "delta": delta, "logprobs": None, "finish_reason": None}
            last = {"index": index, "delta": {}, "logprobs": None}
        else:
            first = {"index": index, "text": choice.get("text", ""), "logprobs": None}
            first["finish_reason"] = None
            last = {"index": index, "text": "", "logprobs": None}
        last["finish_reason"] = choice.get("finish_reason")
        out.append({**base, "choices": [first], **usage_field})
        out.append({**base, "choices": [last], **usage_field})
    if include_usage:
        out.append({**base, "choices": [], "usage": body.get("usage")})
    return out
