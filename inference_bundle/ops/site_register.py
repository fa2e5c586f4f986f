"""The register step of a site deploy: entry points to Globus Compute, ids to the registry.

The registry (config/registry/<cluster>.yaml) records the functions' and endpoints' ids
for the router; it is written deterministically, so an unchanged deploy leaves it as is.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import yaml

from inference_bundle.config.registry import RegisteredFunction, Registry, registry_path
from inference_bundle.ops.endpoint_control import endpoint_id
from inference_bundle.ops.registration import FunctionClient, register_functions
from inference_bundle.ops.runtime_install import bundled_version
from inference_bundle.ops.site_plan import (
    Say,
    Site,
    SiteDeployError,
    SitePlan,
    login_command,
    render_site,
)

REGISTRY_HEADER = (
    "# Written by `make deploy CLUSTER={cluster}`: the Globus Compute ids of this cluster's\n"
    "# functions and endpoints. Commit it; the router reads it. Do not edit by hand.\n"
)


def register_site_functions(
    site: Site,
    plan: SitePlan,
    client_factory: Callable[[Path], FunctionClient],
    say: Say,
) -> dict[str, RegisteredFunction]:
    """Register the entry points whose source changed; every function's id."""
    if plan.to_register:
        say(f"registering {', '.join(plan.to_register)} with Globus Compute")
        client = client_factory(site.endpoints_dir)
    else:
        client = _NoClient()
    try:
        return register_functions(plan.functions, client)
    except Exception as err:  # the SDK raises Globus API, network and auth errors
        raise SiteDeployError(
            f"registering the entry points failed: {err}; check the network and your Globus "
            f"login (`{login_command(site)}`), then deploy again"
        ) from None


class _NoClient:
    """Stands in when nothing needs registering, so no SDK client is built."""

    def register_function(self, function: Callable[..., object]) -> str:
        raise AssertionError("nothing is registered when every source is unchanged")


def registry_text(registry: Registry) -> str:
    """The registry as deterministic YAML: sorted keys, a header saying where it came from."""
    body = yaml.safe_dump(registry.model_dump(mode="json"), sort_keys=True, width=100)
    return REGISTRY_HEADER.format(cluster=registry.cluster) + body


def write_registry(site: Site, functions: dict[str, RegisteredFunction]) -> bool:
    """Write the functions' ids and every endpoint's id known so far; True if it changed."""
    names = [e.name for e in render_site(site, {name: f.id for name, f in functions.items()})]
    endpoints = {}
    for name in names:
        found = endpoint_id(site.endpoints_dir / name)
        if found is not None:
            endpoints[name] = found
    registry = Registry(
        cluster=site.cluster,
        runtime_version=bundled_version(site.root),
        functions=functions,
        endpoints=endpoints,
    )
    path = registry_path(site.root, site.cluster)
    text = registry_text(registry)
    if path.is_file() and path.read_text(encoding="utf-8") == text:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return True
