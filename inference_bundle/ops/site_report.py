"""What a site deploy tells the operator: the plan (dry run) and the summary."""

from __future__ import annotations

from inference_bundle.config.registry import RegisteredFunction, registry_path
from inference_bundle.ops.site_plan import EndpointChange, Say, Site, SitePlan, login_command


def print_plan(plan: SitePlan, say: Say) -> None:
    """The plan as an operator reads it: what would change, and nothing else done."""
    site = plan.site
    say(f"{site.cluster}: plan (dry run: nothing is changed)")
    say(f"  endpoints folder: {site.endpoints_dir}")
    if plan.credentials_problem:
        say(
            f"  Globus credentials: missing: {plan.credentials_problem}; "
            f"log in with `{login_command(site)}` before deploying"
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
    """What the deploy did, one line per step."""
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
