"""Server specs: what the node runtime is told about a catalog endpoint (spec_version 1).

The runtime never reads the catalog; the router sends it this plain dict with each request.
Its shape is defined by ``node_runtime.spec.ServerSpec``.
"""

from __future__ import annotations

from typing import Any

from inference_bundle.config.catalog import CatalogEntry, Endpoint
from inference_bundle.config.profiles import ClusterProfile
from inference_bundle.rendering.render import weights_locations

SPEC_VERSION = 1


def vllm_flags(ep: Endpoint) -> list[str]:
    """vLLM server flags for an endpoint's parallelism and server_args."""
    args = ep.server_args
    flags = ["--dtype", args.dtype]
    if args.max_model_len:
        flags += ["--max-model-len", str(args.max_model_len)]
    if ep.tensor_parallel > 1:
        flags += ["--tensor-parallel-size", str(ep.tensor_parallel)]
    if ep.pipeline_parallel > 1:
        flags += ["--pipeline-parallel-size", str(ep.pipeline_parallel)]
    if ep.nodes > 1:
        # The job's worker_init started a Ray cluster across the block's nodes.
        flags += ["--distributed-executor-backend", "ray"]
    if args.trust_remote_code:
        flags.append("--trust-remote-code")
    if args.tool_call_parser:
        flags += ["--enable-auto-tool-choice", "--tool-call-parser", args.tool_call_parser]
    if args.reasoning_parser:
        flags += ["--reasoning-parser", args.reasoning_parser]
    if args.gpu_memory_utilization:
        flags += ["--gpu-memory-utilization", str(args.gpu_memory_utilization)]
    return flags + list(args.extra)


def infinity_flags(ep: Endpoint, on_gpu: bool) -> list[str]:
    """Infinity server flags; token counts come from the tokenizer, as OpenAI reports them."""
    flags = ["--engine", "torch", "--device", "cuda" if on_gpu else "cpu"]
    flags += ["--dtype", ep.server_args.dtype, "--lengths-via-tokenize"]
    if not ep.server_args.trust_remote_code:
        flags.append("--no-trust-remote-code")
    if not on_gpu:
        flags.append("--no-model-warmup")
    return flags + list(ep.server_args.extra)


def server_spec(entry: CatalogEntry, profile: ClusterProfile) -> dict[str, Any]:
    """The spec dict the router sends the node runtime for this endpoint."""
    ep = entry.endpoint
    runtime = profile.runtimes[ep.framework]
    weights, staged = weights_locations(entry, profile)
    if ep.framework == "vllm":
        args = vllm_flags(ep)
    else:
        args = infinity_flags(ep, on_gpu=profile.gpus_per_node > 0)
    return {
        "spec_version": SPEC_VERSION,
        "name": ep.name,
        "framework": ep.framework,
        "task": "embed" if ep.kind == "embedding" else "generate",
        "weights": staged or weights,
        "args": args,
        "env": dict(runtime.env),
        "python": runtime.python,
        "port": 0,
        "idle_timeout_s": ep.idle_timeout_s or profile.idle_timeout_s,
        "start_timeout_s": profile.start_timeout_s,
        "state_dir": profile.paths.state_dir,
    }
