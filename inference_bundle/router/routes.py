"""The route table: which cluster, framework and endpoint serve a model name."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from node_runtime.spec import ServerSpec

from inference_bundle.config.catalog import Catalog, CatalogEntry
from inference_bundle.config.frameworks import FRAMEWORKS, FrameworkInfo
from inference_bundle.config.operations import served_paths
from inference_bundle.config.profiles import ClusterProfile
from inference_bundle.rendering.specs import server_spec
from inference_bundle.router.errors import APIError, unknown_cluster


@dataclass(frozen=True)
class Route:
    """Where one model is served, and the spec its node runtime is sent (a task carries
    ``spec.to_dict()``)."""

    cluster: str
    entry: CatalogEntry
    spec: ServerSpec = field(hash=False, compare=False)
    # How long its scheduler lets one job run; None where jobs have no end (the local cluster).
    walltime_s: float | None = field(default=None, hash=False, compare=False)

    @property
    def model(self) -> str:
        return self.entry.endpoint.name

    @property
    def framework(self) -> str:
        return self.entry.endpoint.framework

    @property
    def framework_info(self) -> FrameworkInfo:
        """What the route's framework serves and where users call it."""
        return FRAMEWORKS[self.entry.endpoint.framework]

    @property
    def endpoint_name(self) -> str:
        return self.entry.endpoint_name

    def task_spec(self, replica: int = 0) -> dict[str, Any]:
        """The spec a task of replica ``replica`` carries (its server is its own)."""
        return replace(self.spec, replica=replica).to_dict()

    @property
    def min_replicas(self) -> int:
        return self.entry.endpoint.replicas.min

    @property
    def max_replicas(self) -> int:
        return self.entry.endpoint.replicas.max

    @property
    def target_in_flight(self) -> int:
        """Requests one server runs before the model counts as full (catalog, or framework)."""
        return self.entry.endpoint.target_in_flight or self.framework_info.target_in_flight

    @property
    def places(self) -> int:
        """Requests one server takes at once before its own queue would hold them: its
        ``max_num_seqs``, else its framework's default (vLLM's: 128 without GPUs, 256 with);
        past it, requests wait in the router's fair queue (router.dispatch.admission)."""
        endpoint = self.entry.endpoint
        cpu, gpu = self.framework_info.places
        return endpoint.server_args.max_num_seqs or (gpu if endpoint.gpus else cpu)

    @property
    def names(self) -> tuple[str, ...]:
        """Every name a request may use: the served name, then the aliases."""
        return tuple(self.entry.endpoint.names)

    @property
    def operations(self) -> tuple[str, ...]:
        """The paths this model answers: the operations of its framework, for its kind (vLLM
        serves an embedding model on /v1/embeddings only, a cross-encoder on rerank and score
        only)."""
        return served_paths(self.framework, self.entry.endpoint.kind)


# Whether the caller may use a route (auth.may_use with the caller bound); None: anyone.
Allowed = Callable[[Route], bool]


class RouteTable:
    """Model names and aliases → routes, per cluster; errors say where a model is instead."""

    def __init__(self, catalogs: Iterable[Catalog]) -> None:
        self._by_cluster: dict[str, dict[str, Route]] = {}
        for catalog in catalogs:
            names: dict[str, Route] = {}
            for entry in catalog.entries:
                route = Route(
                    catalog.cluster,
                    entry,
                    server_spec(entry, catalog.profile),
                    walltime_s(entry, catalog.profile),
                )
                for name in entry.endpoint.names:
                    names[name] = route
            self._by_cluster[catalog.cluster] = names

    @property
    def clusters(self) -> list[str]:
        return sorted(self._by_cluster)

    def routes(self, cluster: str | None = None) -> list[Route]:
        """Every distinct route, of one cluster or of all, in a stable order."""
        clusters = [cluster] if cluster else self.clusters
        seen = {id(route): route for name in clusters for route in self._by_cluster[name].values()}
        return sorted(seen.values(), key=lambda r: (r.cluster, r.model))

    def lookup(
        self,
        model: str,
        cluster: str | None = None,
        framework: str | None = None,
        allowed: Allowed | None = None,
    ) -> Route:
        """The route for ``model``; raise an APIError a user can act on.

        ``framework`` is the URL segment the request came under, if any. With ``allowed``,
        hints name only models the caller may use, and a model the caller may not use is
        returned without a word on where it is served (the caller's 403 comes next).
        """
        if cluster is not None and cluster not in self._by_cluster:
            raise unknown_cluster(cluster, self.clusters)
        candidates = [
            self._by_cluster[c][model]
            for c in ([cluster] if cluster else self.clusters)
            if model in self._by_cluster[c]
        ]
        if not candidates:
            raise self._unknown(model, cluster, allowed)
        enabled = [r for r in candidates if r.entry.endpoint.enabled]
        if not enabled:
            route = candidates[0]
            raise APIError(
                404,
                f"The model '{model}' is not served on {route.cluster}: "
                f"{route.entry.endpoint.disabled_reason}",
                param="model",
                code="model_disabled",
            )
        usable = [r for r in enabled if allowed is None or allowed(r)]
        if not usable:
            return enabled[0]
        route = usable[0]
        if framework is not None:
            check_framework(route, model, framework)
        return route

    def _unknown(self, model: str, cluster: str | None, allowed: Allowed | None) -> APIError:
        clusters = [cluster] if cluster else self.clusters
        served = sorted(
            {
                r.model
                for c in clusters
                for r in self._by_cluster[c].values()
                if allowed is None or allowed(r)
            }
        )
        close = difflib.get_close_matches(model, served, n=3, cutoff=0.5)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        where = f" on {cluster}" if cluster else ""
        return APIError(
            404,
            f"The model '{model}' does not exist{where}.{hint} "
            "GET /resource_server/list-endpoints lists the models served.",
            param="model",
            code="model_not_found",
        )


def walltime_s(entry: CatalogEntry, profile: ClusterProfile) -> float | None:
    """The endpoint's job walltime in seconds; None on a cluster whose jobs have none."""
    if profile.scheduler == "local":
        return None
    hours, minutes, seconds = (entry.endpoint.walltime or profile.provider.walltime).split(":")
    return int(hours) * 3600.0 + int(minutes) * 60.0 + int(seconds)


def check_framework(route: Route, model: str, framework: str) -> None:
    """The 400 for a model asked for under another framework's URL, saying where it is."""
    if route.framework_info.url_segment != framework:
        raise APIError(
            400,
            f"The model '{model}' is served by {route.framework}, not {framework}: use "
            f"{route.framework_info.base_path(route.cluster)}.",
            param="model",
            code="wrong_framework",
        )


def user_path(path: str) -> str:
    """How users name a backend path under a base URL that ends in /v1: /chat/completions,
    and /tokenize for the tokenizer that vLLM serves at its root."""
    return path.removeprefix("/v1")


def check_operation(route: Route, model: str, path: str) -> None:
    """The 400 for an operation the model does not answer, saying which it does and where."""
    operations = route.operations
    if path in operations:
        return
    base = route.framework_info.base_path(route.cluster)
    served = ", ".join(user_path(p) for p in operations)
    raise APIError(
        400,
        f"The model '{model}' is a {route.entry.endpoint.kind} model: it answers {served} "
        f"under {base}, not {path}.",
        param="model",
        code="wrong_operation",
    )
