"""Server specs: what the node runtime is told about a catalog endpoint (spec_version 1).

The runtime never reads the catalog; the router sends it this plain dict with each request.
Its shape is defined by ``node_runtime.spec.ServerSpec``.
"""

from __future__ import annotations

from typing import Any

from inference_bundle.config.catalog import CatalogEntry
from inference_bundle.config.frameworks import FRAMEWORKS
from inference_bundle.config.profiles import ClusterProfile
from inference_bundle.rendering.render import weights_locations

SPEC_VERSION = 1
# The runtime's task for a model kind; every other kind generates.
TASKS = {"embedding": "embed", "rerank": "rerank"}


def server_spec(entry: CatalogEntry, profile: ClusterProfile) -> dict[str, Any]:
    """The spec dict the router sends the node runtime for this endpoint."""
    ep = entry.endpoint
    runtime = profile.runtimes[ep.framework]
    weights, staged = weights_locations(entry, profile)
    args = FRAMEWORKS[ep.framework].server_flags(ep, profile)
    return {
        "spec_version": SPEC_VERSION,
        "name": ep.name,
        "framework": ep.framework,
        "task": TASKS.get(ep.kind, "generate"),
        "weights": staged or weights,
        "args": args,
        "env": dict(runtime.env),
        "python": runtime.python,
        "port": 0,
        "idle_timeout_s": ep.idle_timeout_s or profile.idle_timeout_s,
        "start_timeout_s": profile.start_timeout_s,
        "state_dir": profile.paths.state_dir,
    }
