"""What the fair-sharing tests (test_limits*.py, test_usage_accounting.py) share: limits
for the local cluster's users, a scripted answer that reports its usage, a chat request.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx

from tests.router.conftest import Harness, envelope

TINY = "local/tiny-llama"
HELLO = [{"role": "user", "content": "hello"}]
URL = "/resource_server/local/vllm/v1/chat/completions"


def limits(**user: Any) -> dict[str, Any]:
    return {"clusters": {"local": {"user": user}}}


def answer_with_usage(prompt: int, completion: int) -> Callable[..., dict[str, Any]]:
    def handler(spec: dict[str, Any], request: dict[str, Any]) -> dict[str, Any]:
        return envelope(
            200,
            {
                "id": "chatcmpl-1",
                "object": "chat.completion",
                "model": spec["name"],
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}}],
                "usage": {
                    "prompt_tokens": prompt,
                    "completion_tokens": completion,
                    "total_tokens": prompt + completion,
                },
            },
        )

    return handler


async def chat(h: Harness, max_tokens: int = 4, key: str | None = None) -> httpx.Response:
    body = {"model": TINY, "messages": HELLO, "max_tokens": max_tokens}
    auth = {"Authorization": f"Bearer {key}"} if key else h.auth
    return await h.client.post(URL, json=body, headers=auth)
