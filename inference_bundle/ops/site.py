"""`make deploy CLUSTER=<site>` on a login node: the catalog served through Globus Compute.

Steps, each a function below: validate and render (the model endpoints, their batch twins
and the cluster's `<cluster>-jobs` endpoint); compare with the endpoints folder; check the
Globus credentials; install the node runtime into the endpoint environment if its version
differs; register the entry points whose source changed; write the endpoints' files, with
the registered ids as their allowed functions; start or restart the endpoints whose files
changed (and start those not running); write config/registry/<cluster>.yaml. A dry run
prints the plan and touches nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import yaml

from inference_bundle.config.catalog import Catalog, load_catalog
from inference_bundle.config.registry import (
    RegisteredFunction,
    Registry,
    load_registry,
    registry_path,
)
from inference_bundle.ops.endpoint_control import (
    EndpointCommand,
    EndpointError,
    changed_files,
    endpoint_id,
    find_command,
    is_running,
    stale_endpoints,
    write_files,
)
from inference_bundle.ops.registration import (
    FunctionClient,
    FunctionPlan,
    allowed_functions,
    default_client,
    missing_credentials,
    plan_functions,
    register_functions,
)
from inference_bundle.ops.runtime_install import (
    RuntimeInstallError,
    bundled_version,
    install,
    installed_version,
)
from inference_bundle.rendering.render import RenderedEndpoint, render_catalog, render_jobs_endpoint

Say = Callable[[str], None]
ID_WAIT_S = 60.0
REGISTRY_HEADER = (
    "# Written by `make deploy CLUSTER={cluster}`: the Globus Compute ids of this cluster's\n"
    "# functions and endpoints. Commit it; the router reads it. Do not edit by hand.\n"
)


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
    registry = _existing_registry(site)
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


def deploy_site(
    root: Path,
    cluster: str,
    *,
    dry_run: bool = False,
    endpoints_dir: Path | None = None,
    say: Say = print,
    client_factory: Callable[[Path], FunctionClient] = default_client,
    credentials: Callable[[Path], str | None] = missing_credentials,
    id_wait_s: float = ID_WAIT_S,
) -> SitePlan:
    """Deploy one site's catalog through Globus Compute; with dry_run, print the plan only."""
    try:
        return _deploy(
            root, cluster, dry_run, endpoints_dir, say, client_factory, credentials, id_wait_s
        )
    except (EndpointError, RuntimeInstallError) as err:
        raise SiteDeployError(str(err)) from None


def _deploy(
    root: Path,
    cluster: str,
    dry_run: bool,
    endpoints_dir: Path | None,
    say: Say,
    client_factory: Callable[[Path], FunctionClient],
    credentials: Callable[[Path], str | None],
    id_wait_s: float,
) -> SitePlan:
    site = load_site(root, cluster, endpoints_dir)
    plan = plan_site(site, credentials)
    if dry_run:
        print_plan(plan, say)
        return plan
    if plan.credentials_problem:
        raise SiteDeployError(
            f"no Globus credentials: {plan.credentials_problem}. Log in with "
            f"`{_login_command(site)}` (or export GLOBUS_COMPUTE_CLIENT_ID and "
            f"GLOBUS_COMPUTE_CLIENT_SECRET for a client identity), then run "
            f"`make deploy CLUSTER={cluster}` again; nothing was changed"
        )
    command = EndpointCommand(find_command(site.endpoint_python), site.endpoints_dir)
    installed = ensure_runtime(site, plan, say)
    functions = _register(site, plan, client_factory, say)
    write_registry(site, functions)
    rendered = render_site(site, {name: f.id for name, f in functions.items()})
    changes = compare(rendered, site.endpoints_dir)
    for endpoint, change in zip(rendered, changes, strict=True):
        if change.changed:
            write_files(endpoint, site.endpoints_dir / endpoint.name, list(change.changed))
    failures = start_endpoints(command, changes, id_wait_s, say)
    written = write_registry(site, functions)
    print_summary(site, plan, installed, functions, changes, failures, written, say)
    if failures:
        raise SiteDeployError(
            f"{len(failures)} endpoint(s) did not start: " + "; ".join(failures) + ". Fix that "
            f"and run `make deploy CLUSTER={cluster}` again: what did start stays as it is"
        )
    return plan


def ensure_runtime(site: Site, plan: SitePlan, say: Say) -> bool:
    """Install functions/ into the endpoint environment unless that version is there."""
    if plan.runtime_problem:
        raise SiteDeployError(plan.runtime_problem)
    if plan.installed_version == plan.runtime_version:
        return False
    say(
        f"installing node runtime {plan.runtime_version} into {site.endpoint_python} "
        f"(installed: {plan.installed_version or 'none'})"
    )
    install(site.endpoint_python, site.root / "functions")
    now = installed_version(site.endpoint_python)
    if now != plan.runtime_version:
        raise SiteDeployError(
            f"after installing, {site.endpoint_python} imports node runtime {now or 'none'}, not "
            f"{plan.runtime_version}; check that environment's site-packages and PYTHONPATH"
        )
    return True


def start_endpoints(
    command: EndpointCommand, changes: list[EndpointChange], id_wait_s: float, say: Say
) -> list[str]:
    """Start or restart what needs it; the failures, one sentence each."""
    failures = []
    for change in changes:
        action = change.action
        if action is None:
            continue
        why = f" ({', '.join(change.changed)} changed)" if change.changed else " (not running)"
        say(f"{action}ing {change.name}{why}")
        try:
            if action == "restart":
                command.restart(change.name)
            else:
                command.start(change.name)
            command.wait_for_id(change.name, id_wait_s)
        except EndpointError as err:
            failures.append(str(err))
    return failures


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


def print_plan(plan: SitePlan, say: Say) -> None:
    """The plan as an operator reads it: what would change, and nothing else done."""
    site = plan.site
    say(f"{site.cluster}: plan (dry run: nothing is changed)")
    say(f"  endpoints folder: {site.endpoints_dir}")
    if plan.credentials_problem:
        say(
            f"  Globus credentials: missing: {plan.credentials_problem}; "
            f"log in with `{_login_command(site)}` before deploying"
        )
    else:
        say("  Globus credentials: found")
    if plan.runtime_problem:
        say(f"  node runtime: {plan.runtime_problem}")
    elif plan.installed_version == plan.runtime_version:
        say(f"  node runtime: {plan.runtime_version} already in {site.endpoint_python}")
    else:
        say(
            f"  node runtime: install {plan.runtime_version} into {site.endpoint_python} "
            f"(installed: {plan.installed_version or 'none'})"
        )
    say(f"  functions to register: {', '.join(plan.to_register) or 'none (source unchanged)'}")
    say(f"  endpoints: {len(plan.endpoints)}, files change in {len(plan.to_write)}")
    for change in plan.to_write:
        files = "new" if change.new else ", ".join(change.changed)
        say(f"    {change.name}: {files}")
    starts = [f"{c.name} ({c.action})" for c in plan.to_start]
    say(f"  endpoints to start or restart: {', '.join(starts) or 'none'}")
    for name in plan.stale:
        say(
            f"  {name}: no longer in the catalog; left as it is (stop it with "
            f"`globus-compute-endpoint stop {name}`)"
        )
    say(f"  registry: {registry_path(site.root, site.cluster)}")


def print_summary(
    site: Site,
    plan: SitePlan,
    installed: bool,
    functions: dict[str, RegisteredFunction],
    changes: list[EndpointChange],
    failures: list[str],
    registry_written: bool,
    say: Say,
) -> None:
    registered = set(plan.to_register)
    started = [c for c in changes if c.action == "start"]
    restarted = [c for c in changes if c.action == "restart"]
    say(f"{site.cluster}: deployed through Globus Compute")
    say(
        f"  node runtime {plan.runtime_version} in {site.endpoint_python}: "
        + ("installed now" if installed else "already there")
    )
    for name, function in functions.items():
        state = "registered now" if name in registered else "unchanged"
        say(f"  function {name}: {function.id} ({state})")
    say(
        f"  endpoints: {len(changes)} in {site.endpoints_dir}: "
        f"{sum(bool(c.changed) for c in changes)} written, {len(started)} started, "
        f"{len(restarted)} restarted, {len(failures)} failed"
    )
    shown = registry_path(site.root, site.cluster).relative_to(site.root)
    say(f"  registry: {shown} " + ("updated; commit it" if registry_written else "unchanged"))


def _existing_registry(site: Site) -> Registry | None:
    if not registry_path(site.root, site.cluster).is_file():
        return None
    return load_registry(site.root, site.cluster)


def _register(
    site: Site,
    plan: SitePlan,
    client_factory: Callable[[Path], FunctionClient],
    say: Say,
) -> dict[str, RegisteredFunction]:
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
            f"login (`{_login_command(site)}`), then deploy again"
        ) from None


class _NoClient:
    """Stands in when nothing needs registering, so no SDK client is built."""

    def register_function(self, function: Callable[..., object]) -> str:
        raise AssertionError("nothing is registered when every source is unchanged")


def _login_command(site: Site) -> str:
    try:
        executable = find_command(site.endpoint_python)
    except EndpointError:
        executable = Path("globus-compute-endpoint")
    return EndpointCommand(executable, site.endpoints_dir).shown("login")
