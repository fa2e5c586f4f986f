"""`make deploy CLUSTER=<site>` on a login node: the catalog served through Globus Compute.

The steps, in order, each in its own module:
- site_plan: validate and render (the model endpoints, their batch twins and the cluster's
  `<cluster>-jobs` endpoint), compare with the endpoints folder, check the Globus credentials;
- site_install: install the node runtime into the endpoint environment if its version differs;
- site_register: register the entry points whose source changed;
- site_start: write the endpoints' files, with the registered ids as their allowed
  functions; start or restart the endpoints whose files changed (and start those not running);
- site_register again: write config/registry/<cluster>.yaml.
A dry run prints the plan (site_report) and touches nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from inference_bundle.ops.endpoint_control import EndpointCommand, EndpointError, find_command
from inference_bundle.ops.registration import FunctionClient, default_client, missing_credentials
from inference_bundle.ops.runtime_install import RuntimeInstallError
from inference_bundle.ops.site_install import ensure_runtime
from inference_bundle.ops.site_plan import (
    Say,
    SiteDeployError,
    SitePlan,
    compare,
    load_site,
    login_command,
    plan_site,
    render_site,
)
from inference_bundle.ops.site_register import register_site_functions, write_registry
from inference_bundle.ops.site_report import print_plan, print_summary
from inference_bundle.ops.site_start import start_endpoints, write_endpoints

__all__ = ["ID_WAIT_S", "SiteDeployError", "deploy_site"]

ID_WAIT_S = 60.0


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
            f"`{login_command(site)}` (or export GLOBUS_COMPUTE_CLIENT_ID and "
            f"GLOBUS_COMPUTE_CLIENT_SECRET for a client identity), then run "
            f"`make deploy CLUSTER={cluster}` again; nothing was changed"
        )
    command = EndpointCommand(find_command(site.endpoint_python), site.endpoints_dir)
    installed = ensure_runtime(site, plan, say)
    functions = register_site_functions(site, plan, client_factory, say)
    write_registry(site, functions)
    rendered = render_site(site, {name: f.id for name, f in functions.items()})
    changes = compare(rendered, site.endpoints_dir)
    write_endpoints(site, rendered, changes)
    failures = start_endpoints(command, changes, id_wait_s, say)
    written = write_registry(site, functions)
    print_summary(site, plan, installed, functions, changes, failures, written, say)
    if failures:
        raise SiteDeployError(
            f"{len(failures)} endpoint(s) did not start: " + "; ".join(failures) + ". Fix that "
            f"and run `make deploy CLUSTER={cluster}` again: what did start stays as it is"
        )
    return plan
