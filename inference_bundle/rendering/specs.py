"""Server specs: what the node runtime is told about a catalog endpoint.

The spec is the node runtime's own ``ServerSpec``, built here from the catalog entry and its
cluster's profile, so that the router reads typed fields of the one definition the node
validates. A task carries it as ``ServerSpec.to_dict()``, the plain dict the entry point
takes. Every field is written here, none left to the node's defaults: a field the node adds
and this module does not write fails tests/deploy/test_specs.py.
"""

from __future__ import annotations

from node_runtime.spec import ServerSpec, SpecError

from inference_bundle.config.catalog import CatalogEntry
from inference_bundle.config.frameworks import FRAMEWORKS
from inference_bundle.config.problems import CatalogError, Problem
from inference_bundle.config.profiles import ClusterProfile
from inference_bundle.rendering.render import weights_locations

# The runtime's task for a model kind; every other kind generates.
TASKS = {"embedding": "embed", "rerank": "rerank"}
# The spec's fields an endpoint file may set, each defaulting to its cluster profile's.
CATALOG_FIELDS = ("idle_timeout_s", "start_timeout_s", "request_timeout_s", "stop_grace_s")


def server_spec(entry: CatalogEntry, profile: ClusterProfile) -> ServerSpec:
    """The spec the router sends the node runtime for this endpoint.

    A spec the node would refuse (a relative path, say) is a ``CatalogError`` naming the
    endpoint's file, raised when the router loads its routes rather than on a node.
    """
    ep = entry.endpoint
    runtime = profile.runtimes[ep.framework]
    weights, staged = weights_locations(entry, profile)
    try:
        return ServerSpec(
            name=ep.name,
            framework=ep.framework,
            task=TASKS.get(ep.kind, "generate"),
            weights=staged or weights,
            python=runtime.python,
            state_dir=profile.paths.state_dir,
            args=tuple(FRAMEWORKS[ep.framework].server_flags(ep, profile)),
            env=dict(runtime.env),
            port=0,  # the node picks a free one
            # Floats, as ServerSpec.from_dict makes them: a spec reads back equal to itself.
            idle_timeout_s=float(_own_or(ep.idle_timeout_s, profile.idle_timeout_s)),
            start_timeout_s=float(_own_or(ep.start_timeout_s, profile.start_timeout_s)),
            request_timeout_s=float(_own_or(ep.request_timeout_s, profile.request_timeout_s)),
            stop_grace_s=float(_own_or(ep.stop_grace_s, profile.stop_grace_s)),
            role="interactive",  # a batch job makes its own spec "batch" (node_runtime.batch)
            replica=0,  # each replica's task says its own (router.dispatch)
        )
    except SpecError as err:
        raise CatalogError([Problem(entry.file, "(server spec)", str(err))]) from None


def _own_or(own: int | None, profile: int) -> int:
    """The endpoint's own setting, else its profile's (0 is a setting: stop_grace_s)."""
    return profile if own is None else own
