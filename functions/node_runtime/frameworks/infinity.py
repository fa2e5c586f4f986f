"""Infinity: embeddings, and rerank with a cross-encoder."""

from __future__ import annotations

from typing import Any

from .base import RERANK_PROBE, Framework, SpecFields


def server_argv(spec: SpecFields, host: str, port: int) -> list[str]:
    """Infinity's v2 CLI, with its routes under /v1 as OpenAI's are."""
    return [
        spec.python,
        "-m",
        "infinity_emb.cli",
        "v2",
        "--model-id",
        spec.weights,
        "--served-model-name",
        spec.name,
        "--host",
        host,
        "--port",
        str(port),
        "--url-prefix",
        "/v1",
    ]


def probe_request(spec: SpecFields) -> tuple[str, dict[str, Any]]:
    """One embedding, or one rerank: a server that loaded its model answers it."""
    if spec.task == "rerank":
        return RERANK_PROBE, {"model": spec.name, "query": "ready?", "documents": ["ready?"]}
    return "/v1/embeddings", {"model": spec.name, "input": ["ready?"]}


def with_agent(argv: list[str]) -> list[str]:
    """Infinity takes no middleware option: wrap the app its CLI gives to uvicorn.run."""
    python, flag, module, *rest = argv
    return [python, flag, "node_runtime.dialout.wrap_uvicorn", module, *rest]


FRAMEWORK = Framework(
    name="infinity",
    label="Infinity",
    tasks=("embed", "rerank"),
    serves="embeddings and rerank",
    operations=frozenset(
        {("POST", "/v1/embeddings"), ("POST", "/v1/rerank"), ("GET", "/v1/models")}
    ),
    server_argv=server_argv,
    probe_request=probe_request,
    with_agent=with_agent,
)
