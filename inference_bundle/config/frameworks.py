"""The serving frameworks, on the config side: what each serves and which server flags it takes.

One entry per framework in ``FRAMEWORKS``; the catalog's rules, the server specs, the
router's URLs, rendering and the deploy printout all read it. What each framework answers
is the operations' (``config.operations``). A new framework is a name in ``kinds.Framework``,
its flag builder and its entry here, its runtime in the profiles, and its name in the
operations it serves.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from inference_bundle.config.endpoint_schema import Endpoint
from inference_bundle.config.kinds import Framework, Kind
from inference_bundle.config.operations import MODELS_PATH, served_paths
from inference_bundle.config.profiles import ClusterProfile


@dataclass(frozen=True)
class FrameworkInfo:
    """One framework as the catalog, the specs and the router's URLs know it."""

    name: Framework
    label: str  # how a sentence for the operator names it
    url_segment: str  # users call /resource_server/<cluster>/<url_segment>/v1/...
    kinds: tuple[Kind, ...]  # the model kinds it may serve
    server_args: frozenset[str]  # the catalog's server_args it takes
    server_flags: Callable[[Endpoint, ClusterProfile], list[str]]
    # Requests one server runs at once before its model counts as full (catalog:
    # target_in_flight): more replicas are asked for past it.
    target_in_flight: int = 32
    # Requests one server takes at once, its own queue aside, unless the catalog says
    # (server_args.max_num_seqs): on a node without GPUs, and with them. The router's fair
    # queue holds the rest (router.dispatch.admission).
    places: tuple[int, int] = (128, 256)

    @property
    def paths(self) -> tuple[str, ...]:
        """The paths its servers answer: its operations', and the model list."""
        return (*served_paths(self.name), MODELS_PATH)

    def base_path(self, cluster: str) -> str:
        """The OpenAI base URL path users call for this framework on ``cluster``."""
        return f"/resource_server/{cluster}/{self.url_segment}/v1"


def vllm_flags(ep: Endpoint, profile: ClusterProfile) -> list[str]:
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
    if args.max_num_seqs:
        flags += ["--max-num-seqs", str(args.max_num_seqs)]
    return flags + list(args.extra)


def infinity_flags(ep: Endpoint, profile: ClusterProfile) -> list[str]:
    """Infinity server flags; token counts come from the tokenizer, as OpenAI reports them."""
    on_gpu = profile.gpus_per_node > 0
    flags = ["--engine", "torch", "--device", "cuda" if on_gpu else "cpu"]
    flags += ["--dtype", ep.server_args.dtype, "--lengths-via-tokenize"]
    if not ep.server_args.trust_remote_code:
        flags.append("--no-trust-remote-code")
    if not on_gpu:
        flags.append("--no-model-warmup")
    return flags + list(ep.server_args.extra)


FRAMEWORKS: dict[Framework, FrameworkInfo] = {
    "vllm": FrameworkInfo(
        name="vllm",
        label="vLLM",
        url_segment="vllm",
        kinds=("chat", "vision", "embedding", "rerank", "base"),
        server_args=frozenset(
            {
                "max_model_len",
                "dtype",
                "trust_remote_code",
                "tool_call_parser",
                "reasoning_parser",
                "gpu_memory_utilization",
                "max_num_seqs",
                "extra",
            }
        ),
        server_flags=vllm_flags,
        target_in_flight=32,
    ),
    "infinity": FrameworkInfo(
        name="infinity",
        label="Infinity",
        url_segment="infinity",
        kinds=("embedding", "rerank"),
        # max_model_len has always been accepted here (and not passed): kept so that no
        # catalog that loads today stops loading.
        server_args=frozenset({"max_model_len", "dtype", "trust_remote_code", "extra"}),
        server_flags=infinity_flags,
        target_in_flight=16,
        places=(32, 32),  # Infinity's own batch size
    ),
}
