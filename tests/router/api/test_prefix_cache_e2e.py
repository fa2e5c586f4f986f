"""Private prefix caches on real vLLM, through the session's shared router: the same long
prompt from one user reuses its cached blocks; from another user it shares none
(vLLM's own prefix-cache counters)."""

from __future__ import annotations

import pytest

from inference_bundle.router.auth import create_api_key
from tests.dataplane_e2e import (
    COMPLETIONS,
    both_models_connected,
    metric,
    post,
    server_metrics,
    server_state,
)
from tests.e2e_router import TINY, RunningRouter

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
HITS = "vllm:prefix_cache_hits_total"
# About 195 tokens: one full cache block (vLLM's CPU backend caches blocks of 128 tokens),
# short of the tiny model's 256; its own words, so that no other test's prompt begins so.
PROMPT = "private prefix " + " ".join(f"line {n} of a preamble" for n in range(12))


def hits_after(router: RunningRouter, key: str) -> float:
    """The server's prefix-cache hits (tokens) gained by one request of ``key``'s user."""
    port = server_state(router.root, TINY).port
    before = metric(server_metrics(port), HITS)
    body = {"model": TINY, "prompt": PROMPT, "max_tokens": 1, "temperature": 0}
    answer = post(router.url, key, COMPLETIONS, body)
    assert answer.status_code == 200, answer.text
    return metric(server_metrics(port), HITS) - before


def test_one_users_prompt_shares_no_cached_blocks_with_anothers(e2e_router: RunningRouter) -> None:
    router = both_models_connected(e2e_router)
    bob = create_api_key(router.root / ".state" / "keys.json", "bob@anl.gov")
    assert hits_after(router, router.key) == 0  # the first of this prompt anywhere
    assert hits_after(router, router.key) > 0  # the same user again: its blocks are reused
    assert hits_after(router, bob) == 0  # another user: the same text, no shared block
    assert hits_after(router, bob) > 0  # and that user's own second request reuses its own
