"""The plan of a site deploy: what would change, computed without changing anything.

A site is a cluster deployed through Globus Compute from its login node; the plan compares
the rendered endpoints with the endpoints folder, the node runtime with the endpoint
environment's, and the entry points with the registry's.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from inference_bundle.config.catalog import Catalog, load_catalog
from inference_bundle.config.registry import Registry, load_registry, registry_path
from inference_bundle.ops.endpoint_control import (
    EndpointCommand,
    EndpointError,
    changed_files,
    find_command,
    is_running,
    stale_endpoints,
)
from inference_bundle.ops.registration import (
    FunctionPlan,
    allowed_functions,
    missing_credentials,
    plan_functions,
)
from inference_bundle.ops.runtime_install import (
    RuntimeInstallError,
    bundled_version,
    installed_version,
)
from inference_bundle.rendering.render import RenderedEndpoint, render_catalog, render_jobs_endpoint

Say = Callable[[str], None]


class SiteDeployError(RuntimeError):
    """A site deploy that cannot go on; the message says what to do."""


@dataclass(frozen=True)
class Site:
    """One cluster to deploy: its checkout, catalog and endpoints folder."""

    root: Path
    catalog: Catalog
    endpoints_dir: Path

    @property
    def cluster(self) -> str:
        return self.catalog.cluster

    @property
    def endpoint_python(self) -> str:
        python = self.catalog.profile.endpoint_python
        assert python is not None, "load_site checks it"
        return python


@dataclass(frozen=True)
class EndpointChange:
    """One endpoint against its folder: which files differ, and whether it runs."""

    name: str
    changed: tuple[str, ...]
    new: bool
    running: bool

    @property
    def action(self) -> str | None:
        """restart (changed, running), start (changed or stopped), or None (leave it)."""
        if self.changed and self.running:
            return "restart"
        return None if self.running else "start"


@dataclass(frozen=True)
class SitePlan:
    """What a deploy would do, computed without changing anything."""

    site: Site
    runtime_version: str
    installed_version: str | None
    runtime_problem: str | None
    functions: list[FunctionPlan]
    endpoints: list[EndpointChange]
    stale: list[str]
    credentials_problem: str | None

    @property
    def to_register(self) -> list[str]:
        return [f.name for f in self.functions if f.needs_registration]

    @property
    def to_write(self) -> list[EndpointChange]:
        return [e for e in self.endpoints if e.changed]

    @property
    def to_start(self) -> list[EndpointChange]:
        return [e for e in self.endpoints if e.action]


def load_site(root: Path, cluster: str, endpoints_dir: Path | None = None) -> Site:
    """Validate the catalog and the profile's site settings (CatalogError: the catalog's)."""
    catalog = load_catalog(root, cluster)
    profile = catalog.profile
    source = f"config/clusters/{cluster}.yaml"
    if profile.scheduler == "local":
        raise SiteDeployError(
            f"{cluster} runs on this machine (scheduler: local), not through Globus Compute; "
            f"deploy it with `make deploy CLUSTER={cluster}` and the engine executor"
        )
    if not profile.endpoint_python:
        raise SiteDeployError(
            f"{source}: endpoint_python: not set; set it to the python of the endpoint "
            "environment (the one worker_init activates, with globus-compute-endpoint)"
        )
    folder = (endpoints_dir or Path(profile.paths.endpoints_dir)).expanduser()
    return Site(root, catalog, folder if folder.is_absolute() else root / folder)


def render_site(site: Site, ids: Mapping[str, str]) -> list[RenderedEndpoint]:
    """Every endpoint the cluster needs, each allowed only its own functions."""
    templates = site.root / "templates"
    endpoints = render_catalog(
        site.catalog, templates, allowed_functions(ids, "model"), allowed_functions(ids, "batch")
    )
    jobs = render_jobs_endpoint(site.catalog.profile, templates, allowed_functions(ids, "jobs"))
    if jobs.name in {e.name for e in endpoints}:
        raise SiteDeployError(
            f"endpoints/{site.cluster}/jobs.yaml: its endpoint name {jobs.name} is taken by "
            "the cluster's job-listing endpoint; rename the file"
        )
    return [*endpoints, jobs]


def compare(rendered: list[RenderedEndpoint], endpoints_dir: Path) -> list[EndpointChange]:
    """Each rendered endpoint against its folder under the endpoints folder."""
    changes = []
    for endpoint in rendered:
        folder = endpoints_dir / endpoint.name
        changes.append(
            EndpointChange(
                name=endpoint.name,
                changed=tuple(changed_files(endpoint, folder)),
                new=not folder.is_dir(),
                running=is_running(folder),
            )
        )
    return changes


def plan_site(
    site: Site, credentials: Callable[[Path], str | None] = missing_credentials
) -> SitePlan:
    """The plan: runtime, functions to register, endpoint files that change, starts."""
    registry = existing_registry(site)
    functions = plan_functions(registry)
    # Functions still to register get a stand-in id: their endpoints' config.yaml changes.
    ids = {f.name: f.registered_id or f"<new id of {f.name}>" for f in functions}
    rendered = render_site(site, ids)
    try:
        installed, problem = installed_version(site.endpoint_python), None
    except RuntimeInstallError as err:
        installed, problem = None, str(err)
    return SitePlan(
        site=site,
        runtime_version=bundled_version(site.root),
        installed_version=installed,
        runtime_problem=problem,
        functions=functions,
        endpoints=compare(rendered, site.endpoints_dir),
        stale=stale_endpoints(site.endpoints_dir, site.cluster, {e.name for e in rendered}),
        credentials_problem=credentials(site.endpoints_dir),
    )


def existing_registry(site: Site) -> Registry | None:
    """The registry this site deployed last, or None before its first deploy."""
    if not registry_path(site.root, site.cluster).is_file():
        return None
    return load_registry(site.root, site.cluster)


def login_command(site: Site) -> str:
    """The endpoint CLI's login command for this site, as the operator types it."""
    try:
        executable = find_command(site.endpoint_python)
    except EndpointError:
        executable = Path("globus-compute-endpoint")
    return EndpointCommand(executable, site.endpoints_dir).shown("login")
