"""Rerank and score through the router, against real vLLM serving the tiny cross-encoder.

The router is the session's shared one (tests/conftest.py, ``e2e_router``); the model is
endpoints/local/tiny-reranker.yaml, made by scripts/make_tiny_reranker.py (random weights:
the tests assert shapes, order and agreement between operations, never which document wins).
Both base URLs are tried: the guide's ``/resource_server/local/vllm/v1`` and the one ``/v1``.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.e2e_router import TINY, RunningRouter

# The first request starts vLLM's pooling runner (about 40 s here; the router waits 300 s).
pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

RERANKER = "local/tiny-reranker"
BASES = ["/resource_server/local/vllm/v1", "/v1"]
QUERY = "What is the capital of France?"
DOCUMENTS = [
    "Paris is the capital of France.",
    "The quick brown fox jumps over the lazy dog.",
    "Hello",
    "Schedulers queue jobs; workers run functions.",
]


def post(router: RunningRouter, path: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(
        router.url + path,
        json=body,
        headers={"Authorization": f"Bearer {router.key}"},
        timeout=360,  # a cold start is answered within the router's wait_s (300 s)
    )


def rerank(router: RunningRouter, base: str, **extra: Any) -> dict[str, Any]:
    body = {"model": RERANKER, "query": QUERY, "documents": DOCUMENTS, **extra}
    response = post(router, base + "/rerank", body)
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


def score(router: RunningRouter, base: str) -> dict[str, Any]:
    body = {"model": RERANKER, "text_1": QUERY, "text_2": DOCUMENTS}
    response = post(router, base + "/score", body)
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


@pytest.mark.parametrize("base", BASES)
def test_rerank_orders_every_document_by_relevance(e2e_router: RunningRouter, base: str) -> None:
    answer = rerank(e2e_router, base)
    assert answer["model"] == RERANKER
    results = answer["results"]
    assert sorted(r["index"] for r in results) == list(range(len(DOCUMENTS)))
    scores = [r["relevance_score"] for r in results]
    assert all(isinstance(s, float) and 0 <= s <= 1 for s in scores)  # a sigmoid, one label
    assert scores == sorted(scores, reverse=True)
    assert [r["document"]["text"] for r in results] == [DOCUMENTS[r["index"]] for r in results]
    usage = answer["usage"]
    assert (
        usage["prompt_tokens"] > len(DOCUMENTS) and usage["total_tokens"] == usage["prompt_tokens"]
    )
    again = rerank(e2e_router, base)["results"]  # the same pairs, the same scores
    assert [r["index"] for r in again] == [r["index"] for r in results]
    assert [r["relevance_score"] for r in again] == pytest.approx(scores)


@pytest.mark.parametrize("base", BASES)
def test_rerank_top_n_keeps_the_best(e2e_router: RunningRouter, base: str) -> None:
    everything = rerank(e2e_router, base)["results"]
    best = rerank(e2e_router, base, top_n=2)["results"]
    assert [r["index"] for r in best] == [r["index"] for r in everything[:2]]


@pytest.mark.parametrize("base", BASES)
def test_score_gives_one_score_per_pair_in_order(e2e_router: RunningRouter, base: str) -> None:
    answer = score(e2e_router, base)
    assert answer["model"] == RERANKER and answer["object"] == "list"
    data = answer["data"]
    assert [(d["index"], d["object"]) for d in data] == [
        (i, "score") for i in range(len(DOCUMENTS))
    ]
    assert answer["usage"]["prompt_tokens"] > len(DOCUMENTS)
    by_index = {r["index"]: r["relevance_score"] for r in rerank(e2e_router, base)["results"]}
    # Score and rerank run the same cross-encoder over the same pairs.
    assert [d["score"] for d in data] == pytest.approx([by_index[i] for i in range(len(data))])


@pytest.mark.parametrize("base", BASES)
def test_rerank_to_the_chat_model_is_a_400_saying_what_it_answers(
    e2e_router: RunningRouter, base: str
) -> None:
    response = post(e2e_router, base + "/rerank", {"model": TINY, "query": "q", "documents": ["a"]})
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["param"], error["code"]) == ("model", "wrong_operation")
    assert "/chat/completions" in error["message"]


@pytest.mark.parametrize("base", BASES)
def test_rerank_without_documents_is_a_400_naming_the_field(
    e2e_router: RunningRouter, base: str
) -> None:
    response = post(e2e_router, base + "/rerank", {"model": RERANKER, "query": QUERY})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "documents" and "documents" in error["message"]
