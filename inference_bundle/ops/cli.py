"""The `bundle` command: validate and render the catalog (make check, make render)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from inference_bundle.config.catalog import load_catalog
from inference_bundle.config.problems import ConfigError
from inference_bundle.config.settings import load_settings
from inference_bundle.ops.keys_cli import keys
from inference_bundle.ops.usage_cli import usage
from inference_bundle.rendering.render import render_catalog, write_rendered

ROOT = Path(__file__).resolve().parents[2]


def _fail(err: ConfigError) -> None:
    for problem in err.problems:
        click.echo(str(problem), err=True)
    count = len(err.problems)
    click.echo(f"{count} problem{'s' if count != 1 else ''} found; nothing was written.", err=True)
    sys.exit(1)


@click.group()
@click.option(
    "--root",
    type=click.Path(file_okay=False, path_type=Path),
    default=ROOT,
    show_default=True,
    help="Repository root holding endpoints/, config/ and templates/.",
)
@click.pass_context
def main(ctx: click.Context, root: Path) -> None:
    """Validate, render and deploy the inference endpoint catalog."""
    ctx.obj = root.resolve()


main.add_command(keys)
main.add_command(usage)


@main.command()
@click.pass_obj
def check(root: Path) -> None:
    """Validate every cluster's catalog and load every rendered endpoint; write nothing."""
    from inference_bundle.ops.catalog_check import EndpointLoadError, check_catalogs

    try:
        check_catalogs(root, say=click.echo)
    except ConfigError as err:
        _fail(err)
    except EndpointLoadError as err:
        click.echo(str(err), err=True)
        sys.exit(1)


@main.command()
@click.option(
    "--cluster", default="local", show_default=True, help="Profile under config/clusters."
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("build/endpoints"),
    show_default=True,
    help="Folder that receives <cluster>/<endpoint>/.",
)
@click.pass_obj
def render(root: Path, cluster: str, out: Path) -> None:
    """Write one endpoint directory per enabled endpoint of a cluster."""
    try:
        catalog = load_catalog(root, cluster)
        rendered = render_catalog(catalog, root / "templates")
    except ConfigError as err:
        _fail(err)
    target = out if out.is_absolute() else root / out
    write_rendered(rendered, target / cluster)
    click.echo(f"{cluster}: wrote {len(rendered)} endpoint directories under {target / cluster}")


def _router_executor(root: Path, cluster: str) -> str:
    """The executor a cluster's router settings name; a site without them uses Globus."""
    path = root / "config" / "router" / f"{cluster}.yaml"
    if not path.exists():
        return "globus"
    return load_settings(path, root).executor


@main.command()
@click.option(
    "--cluster", default="local", show_default=True, help="Profile under config/clusters."
)
@click.option(
    "--executor",
    type=click.Choice(["engine", "globus"]),
    default=None,
    help="engine: serve from this machine, no Globus cloud; default: the router settings'.",
)
@click.option("--port", type=int, default=None, help="Router port (engine executor).")
@click.option("--dry-run", is_flag=True, envvar="DRY_RUN", help="Globus: print the plan only.")
@click.option(
    "--endpoints-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    envvar="ENDPOINTS_DIR",
    help="Globus: where endpoint directories go (default: the profile's endpoints_dir).",
)
@click.pass_obj
def deploy(
    root: Path,
    cluster: str,
    executor: str | None,
    port: int | None,
    dry_run: bool,
    endpoints_dir: Path | None,
) -> None:
    """Bring a cluster's catalog to life (make deploy).

    With the engine executor the router runs here in the background and serves the
    cluster through in-process engines; otherwise the catalog becomes Globus Compute
    endpoints on the cluster's login node.
    """
    from inference_bundle.ops import local, site

    try:
        chosen = executor or _router_executor(root, cluster)
        if chosen == "engine":
            local.deploy(root, cluster, port, say=click.echo)
        else:
            site.deploy_site(
                root, cluster, dry_run=dry_run, endpoints_dir=endpoints_dir, say=click.echo
            )
    except ConfigError as err:
        _fail(err)
    except (local.DeployError, site.SiteDeployError) as err:
        click.echo(f"make deploy CLUSTER={cluster}: {err}", err=True)
        sys.exit(1)


@main.command()
@click.pass_obj
def stop(root: Path) -> None:
    """Stop what make deploy started on this machine (make stop)."""
    from inference_bundle.ops import local

    local.stop(root, say=click.echo)


@main.command()
@click.option(
    "--cluster", default="local", show_default=True, help="Profile under config/clusters."
)
@click.pass_obj
def status(root: Path, cluster: str) -> None:
    """Every endpoint with its state, job and last use (make status)."""
    from inference_bundle.ops.status import print_status

    try:
        print_status(root, cluster, say=click.echo)
    except ConfigError as err:
        _fail(err)
