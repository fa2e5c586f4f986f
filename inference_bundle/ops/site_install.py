"""The install step of a site deploy: the node runtime into the endpoint environment."""

from __future__ import annotations

from inference_bundle.ops.runtime_install import install, installed_version
from inference_bundle.ops.site_plan import Say, Site, SiteDeployError, SitePlan


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
