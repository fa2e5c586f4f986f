"""A cross-encoder on Infinity through the runtime: its rerank task, probe and operation.

The router's tests rerank on vLLM's pooling runner (tests/router/api/test_rerank_e2e.py); this
one starts Infinity on the same tiny cross-encoder (seconds, not a minute), so that both
frameworks the catalog lets serve ``kind: rerank`` are run for real.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import node_runtime
import pytest

from .conftest import stop_checked
from .local_backends import ROOT, Spec, infinity_spec

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
RERANKER = ROOT / ".state" / "models" / "tiny-reranker"
DOCUMENTS = ["Paris is the capital of France.", "The quick brown fox.", "Compute nodes."]


@pytest.fixture(scope="module")
def reranker(state_dir: Path) -> Iterator[Spec]:
    spec = infinity_spec("tiny-reranker-infinity", state_dir, task="rerank", weights=str(RERANKER))
    yield spec
    stop_checked(spec)


def rerank(spec: Spec, query: str, documents: list[str]) -> list[dict[str, Any]]:
    """Infinity's ranked results for ``documents``."""
    body = {"model": spec["name"], "query": query, "documents": documents}
    envelope = node_runtime.handle(spec, {"method": "POST", "path": "/v1/rerank", "body": body})
    assert envelope["status"] == 200, envelope
    results: list[dict[str, Any]] = envelope["body"]["results"]
    return results


def test_infinity_reranks_with_the_tiny_cross_encoder(reranker: Spec) -> None:
    results = rerank(reranker, "What is the capital of France?", DOCUMENTS)
    assert sorted(r["index"] for r in results) == [0, 1, 2]
    scores = [r["relevance_score"] for r in results]
    assert all(isinstance(s, float) and 0.0 <= s <= 1.0 for s in scores)
    assert scores == sorted(scores, reverse=True)
    # The same pair scores the same, alone or among others: a real model, not noise.
    [alone] = rerank(reranker, "What is the capital of France?", DOCUMENTS[:1])
    first = next(r for r in results if r["index"] == 0)
    assert abs(alone["relevance_score"] - first["relevance_score"]) < 1e-5


def test_infinity_takes_no_embeddings_for_a_reranker(reranker: Spec) -> None:
    body = {"model": reranker["name"], "input": ["x"]}
    envelope = node_runtime.handle(
        reranker, {"method": "POST", "path": "/v1/embeddings", "body": body}
    )
    assert envelope["status"] >= 400
    assert "error" in envelope["body"] or "detail" in envelope["body"]
