"""The rules on an endpoint that pydantic's per-field checks cannot see.

Fields against each other (GPUs and parallelism, batch and nodes, enabled and its reason),
against the endpoint's framework (the model kinds it serves, the server options it takes)
and against the cluster's profile (GPUs per node, runtimes, multi-node support); and names
unique within a cluster. Each broken rule is a ``Problem`` naming file and field.
"""

from __future__ import annotations

import re

from inference_bundle.config.endpoint_schema import CatalogEntry, Endpoint, Replicas, ServerArgs
from inference_bundle.config.frameworks import FRAMEWORKS
from inference_bundle.config.problems import Problem
from inference_bundle.config.profiles import ClusterProfile

SLUG = re.compile(r"^[a-z0-9][a-z0-9-]*$")


def endpoint_problems(
    entry: CatalogEntry, profile: ClusterProfile, broken: frozenset[str] = frozenset()
) -> list[Problem]:
    """The cross-field rules that pydantic's per-field checks cannot see.

    ``broken`` names top-level fields that already failed validation: rules that read
    them are skipped, so a file's other mistakes are still reported in the same pass.
    """
    ep, file, cluster = entry.endpoint, entry.file, profile.name
    problems: list[Problem] = []

    def add(field: str, message: str) -> None:
        problems.append(Problem(file, field, message))

    def usable(*fields: str) -> bool:
        return broken.isdisjoint(fields)

    if not SLUG.match(entry.slug):
        add("(file name)", "use lower-case letters, digits and dashes, e.g. llama-3-1-8b.yaml")
    if usable("gpus", "nodes", "tensor_parallel", "pipeline_parallel"):
        problems += _gpu_problems(ep, file, profile)
    if usable("batch", "nodes") and ep.batch and ep.nodes > 1:
        add("batch", f"batches need a single-node model but nodes is {ep.nodes}; set batch: false")
    if usable("batch", "kind") and ep.batch and ep.kind == "rerank":
        # Batch lines are chat, completions or embeddings requests (router.batches).
        add("batch", "batches take generation and embedding models, not rerank; set batch: false")
    if usable("framework", "kind"):
        problems += _kind_problems(ep, file)
    if usable("framework") and ep.framework not in profile.runtimes:
        add(
            "framework",
            f"{cluster} has no {ep.framework} runtime; add it to the profile's runtimes",
        )
    if usable("framework", "server_args"):
        problems += _server_arg_problems(ep, file)
    if usable("nodes") and ep.nodes > 1 and profile.multi_node is None:
        add("nodes", f"is {ep.nodes} but {cluster} has no multi_node settings; use 1 node")
    if usable("replicas"):
        problems += _replica_problems(ep, file, profile)
    if usable("enabled", "disabled_reason"):
        if not ep.enabled and not ep.disabled_reason:
            add("disabled_reason", "a disabled endpoint needs a reason users can read; add one")
        if ep.enabled and ep.disabled_reason:
            add("disabled_reason", "is set but enabled is true; remove it or set enabled: false")
    return problems


def _replica_problems(ep: Endpoint, file: str, profile: ClusterProfile) -> list[Problem]:
    """min within max, and max within the nodes the cluster lets one model hold."""
    # An endpoint whose other fields failed is built unchecked: its replicas may be a dict.
    replicas = Replicas.model_validate(ep.replicas)
    low, high = replicas.min, replicas.max
    problems = []
    if low > high:
        problems.append(
            Problem(file, "replicas.min", f"is {low} but replicas.max is {high}; lower min")
        )
    if high > profile.max_replicas:
        problems.append(
            Problem(
                file,
                "replicas.max",
                f"is {high} but {profile.name} lets one model hold at most "
                f"{profile.max_replicas} node(s) (its profile's max_replicas); lower it",
            )
        )
    return problems


def _kind_problems(ep: Endpoint, file: str) -> list[Problem]:
    """A framework serves only the model kinds its entry lists."""
    served = FRAMEWORKS[ep.framework].kinds
    if ep.kind in served:
        return []
    others = [f.name for f in FRAMEWORKS.values() if ep.kind in f.kinds]
    message = f"{ep.framework} serves {' or '.join(served)} models only, but kind is {ep.kind}"
    return [
        Problem(file, "framework", message + (f"; use {' or '.join(others)}" if others else ""))
    ]


def _server_arg_problems(ep: Endpoint, file: str) -> list[Problem]:
    """Server options set in the catalog that the endpoint's framework does not take."""
    takes = FRAMEWORKS[ep.framework].server_args
    problems = []
    for arg in sorted(set(ServerArgs.model_fields) - takes):
        default = ServerArgs.model_fields[arg].get_default(call_default_factory=True)
        if getattr(ep.server_args, arg) != default:
            owners = [f.label for f in FRAMEWORKS.values() if arg in f.server_args]
            problems.append(
                Problem(
                    file,
                    f"server_args.{arg}",
                    f"is a {' or '.join(owners)} option; remove it for {ep.framework}",
                )
            )
    return problems


def _gpu_problems(ep: Endpoint, file: str, profile: ClusterProfile) -> list[Problem]:
    """TP × PP must fit the GPUs the endpoint asks for, and those must exist on a node."""
    cluster, world = profile.name, ep.tensor_parallel * ep.pipeline_parallel
    if profile.gpus_per_node == 0:
        problems = []
        if ep.gpus:
            problems.append(Problem(file, "gpus", f"is {ep.gpus} but {cluster} has no GPUs; set 0"))
        if world > 1:
            problems.append(
                Problem(
                    file, "tensor_parallel", f"TP × PP is {world} but {cluster} runs on CPUs; use 1"
                )
            )
        return problems
    if ep.gpus > profile.gpus_per_node:
        return [
            Problem(
                file,
                "gpus",
                f"is {ep.gpus} but {cluster} nodes have {profile.gpus_per_node} GPUs; "
                "lower gpus or add nodes",
            )
        ]
    if world > ep.gpus * ep.nodes:
        return [
            Problem(
                file,
                "tensor_parallel",
                f"TP {ep.tensor_parallel} × PP {ep.pipeline_parallel} = {world} GPUs but the "
                f"endpoint has {ep.gpus} GPUs × {ep.nodes} node(s) on {cluster}; lower "
                "tensor_parallel or pipeline_parallel, or raise gpus or nodes",
            )
        ]
    return []


def duplicate_name_problems(entries: list[CatalogEntry]) -> list[Problem]:
    """Served names and aliases must be unique within a cluster."""
    owners: dict[str, CatalogEntry] = {}
    problems = []
    for entry in entries:
        fields = ["served_name" if entry.endpoint.served_name else "model"]
        fields += [f"aliases[{i}]" for i in range(len(entry.endpoint.aliases))]
        for field, name in zip(fields, entry.endpoint.names, strict=True):
            first = owners.setdefault(name, entry)
            if first is not entry:
                problems.append(
                    Problem(entry.file, field, f"{name!r} is already served by {first.file}")
                )
    return problems
