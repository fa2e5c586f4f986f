"""Whole Responses and Messages answers as the event streams their servers would have sent.

A stream on a model that no connection reaches is answered whole through a task (see
``router.api.sse_chunks``). OpenAI's Responses and Anthropic's Messages stream named events
(``event: response.output_text.delta``; ``event: content_block_delta``) rather than chunks;
their SDKs dispatch on those names, so a whole answer is replayed as the same run of events:
each item or block opened, its text as one delta, closed, then the finished answer.
"""

from __future__ import annotations

import json
from typing import Any

RESPONSES = "responses"
MESSAGES = "messages"
# The stream styles (``Operation.stream``) of named events, not chunks closed by [DONE].
NAMED_EVENT_STREAMS = (RESPONSES, MESSAGES)
# The event that ends each: a client that has read it has the whole answer.
LAST_EVENTS = (b"event: response.completed\n", b"event: message_stop\n")


def named(kind: str, payload: dict[str, Any]) -> str:
    """One server-sent event with a name, its payload's ``type`` being the same name."""
    data = json.dumps({"type": kind, **payload}, separators=(",", ":"))
    return f"event: {kind}\ndata: {data}\n\n"


def error_event(style: str, body: dict[str, Any]) -> str:
    """An error in a stream, in the shape the operation's SDK raises on."""
    found = body.get("error")
    error: dict[str, Any] = found if isinstance(found, dict) else {}
    if style == MESSAGES:
        # Anthropic's SDK raises on an event named error: {"type": "error", "error": {...}}.
        kind = error.get("type", "api_error")
        return named(
            "error",
            {"error": {"type": kind, "message": error.get("message"), "code": error.get("code")}},
        )
    if style == RESPONSES:
        return named("error", {"code": error.get("code"), "message": error.get("message")})
    data = json.dumps(body, separators=(",", ":"))
    return f"data: {data}\n\n"


def whole_as_events(style: str, body: dict[str, Any]) -> list[str]:
    """The events of a Responses or Messages stream that carried this whole answer."""
    return _responses(body) if style == RESPONSES else _messages(body)


def _responses(body: dict[str, Any]) -> list[str]:
    out: list[str] = []

    def send(kind: str, **payload: Any) -> None:
        out.append(named(kind, {"sequence_number": len(out), **payload}))

    started = {**body, "status": "in_progress", "output": [], "usage": None}
    send("response.created", response=started)
    send("response.in_progress", response=started)
    for index, item in enumerate(body.get("output") or []):
        item_id = item.get("id", "")
        parts = item.get("content") if item.get("type") == "message" else None
        opened = {**item, "status": "in_progress"}
        if parts is not None:
            opened["content"] = []
        send("response.output_item.added", output_index=index, item=opened)
        for content_index, part in enumerate(parts or []):
            where = {"item_id": item_id, "output_index": index, "content_index": content_index}
            text = part.get("text", "")
            if part.get("type") == "output_text":
                send("response.content_part.added", **where, part={**part, "text": ""})
                send("response.output_text.delta", **where, delta=text, logprobs=[])
                send("response.output_text.done", **where, text=text, logprobs=[])
            else:
                send("response.content_part.added", **where, part=part)
            send("response.content_part.done", **where, part=part)
        send("response.output_item.done", output_index=index, item=item)
    send("response.completed", response=body)
    return out


def _messages(body: dict[str, Any]) -> list[str]:
    usage = body.get("usage") or {}
    started = {
        **body,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {**usage, "output_tokens": 0},
    }
    out = [named("message_start", {"message": started})]
    for index, block in enumerate(body.get("content") or []):
        kind = block.get("type")
        if kind == "text":
            opened, delta = {**block, "text": ""}, {"type": "text_delta", "text": block["text"]}
        elif kind == "tool_use":
            arguments = json.dumps(block.get("input", {}))
            opened, delta = {**block, "input": {}}, {"type": "input_json_delta"}
            delta["partial_json"] = arguments
        elif kind == "thinking":
            opened = {**block, "thinking": ""}
            delta = {"type": "thinking_delta", "thinking": block.get("thinking", "")}
        else:
            opened, delta = block, None
        out.append(named("content_block_start", {"index": index, "content_block": opened}))
        if delta is not None:
            out.append(named("content_block_delta", {"index": index, "delta": delta}))
        out.append(named("content_block_stop", {"index": index}))
    stop = {"stop_reason": body.get("stop_reason"), "stop_sequence": body.get("stop_sequence")}
    out.append(named("message_delta", {"delta": stop, "usage": usage}))
    out.append(named("message_stop", {}))
    return out
