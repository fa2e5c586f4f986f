"""Private prefix caches: the router sets each request's cache_salt from its caller and
model, whatever the client sent; other users' prompts never share a salt. The same on real
vLLM, with its prefix-cache counters, is test_prefix_cache_e2e.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from inference_bundle.router.api.prefix_cache import cache_salt
from inference_bundle.router.auth import create_api_key
from tests.router.conftest import Harness

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]
BASE = "/resource_server/local/vllm/v1"
TINY = "local/tiny-llama"
CHAT = {"model": TINY, "messages": [{"role": "user", "content": "hi"}]}


async def sent_salt(h: Harness, path: str, body: dict[str, Any], key: str) -> Any:
    answer = await h.client.post(BASE + path, json=body, headers={"Authorization": f"Bearer {key}"})
    assert answer.status_code == 200, answer.text
    return h.endpoint.submitted[-1]["body"].get("cache_salt", "absent")


async def test_each_user_gets_a_salt_of_their_own_whatever_the_client_sent(
    harness: Harness, tmp_path: Path
) -> None:
    bob = create_api_key(tmp_path / "keys.json", "bob@anl.gov")
    alice = harness.key
    first = await sent_salt(harness, "/chat/completions", CHAT, alice)
    assert isinstance(first, str) and len(first) == 64
    assert await sent_salt(harness, "/chat/completions", CHAT, alice) == first
    forged = {**CHAT, "cache_salt": "bobs-salt"}
    assert await sent_salt(harness, "/chat/completions", forged, alice) == first
    theirs = await sent_salt(harness, "/chat/completions", CHAT, bob)
    assert theirs not in (first, "bobs-salt")
    completion = {"model": TINY, "prompt": "hi", "max_tokens": 1}
    assert await sent_salt(harness, "/completions", completion, alice) == first
    # An operation vLLM takes no salt for gets none.
    assert await sent_salt(harness, "/tokenize", {"model": TINY, "prompt": "hi"}, alice) == "absent"


def test_a_group_shares_its_salt_and_none_leaves_the_clients() -> None:
    model = "local/tiny-llama"
    by_user = cache_salt("k", "user", "alice", "physics", model)
    assert by_user != cache_salt("k", "user", "bob", "physics", model)
    assert by_user != cache_salt("k", "user", "alice", "physics", "other/model")
    assert by_user != cache_salt("another key", "user", "alice", "physics", model)
    shared = cache_salt("k", "group", "alice", "physics", model)
    assert shared == cache_salt("k", "group", "bob", "physics", model) != by_user
    # No group to share: the user's own.
    assert cache_salt("k", "group", "carol", "", model) == cache_salt(
        "k", "user", "carol", "", model
    )
    assert cache_salt("k", "none", "alice", "physics", model) is None
