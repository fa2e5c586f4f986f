"""`launcher: WrappedLauncher` with `launcher_prepend`: the worker pool runs inside a command."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from parsl.launchers import WrappedLauncher

from inference_bundle.config.catalog import Catalog, load_catalog
from inference_bundle.config.problems import CatalogError
from inference_bundle.rendering.render import render_catalog
from inference_bundle.rendering.verify import load_rendered

Edit = Callable[[str, str, str], Path]
LOCAL = "config/clusters/local.yaml"
SOPHIA = "config/clusters/sophia.yaml"
# Quotes and a shell parameter: the prepend must reach the job script as it was written.
PREPEND = """ip netns exec bundle-x unshare --uts sh -c 'hostname "$0"; exec "$@"' node-x"""


def wrapped(edit: Edit, path: str, old: str, prepend: str = PREPEND) -> None:
    quoted = prepend.replace("'", "''")
    edit(path, old, f"  launcher: WrappedLauncher\n  launcher_prepend: '{quoted}'\n")


def problems(repo: Path, cluster: str) -> list[str]:
    with pytest.raises(CatalogError) as caught:
        load_catalog(repo, cluster)
    return [str(p) for p in caught.value.problems]


def without_interface(catalog: Catalog) -> Catalog:
    """The catalog with Parsl left to pick the address (a site's interface is not here)."""
    profile = catalog.profile.model_copy(update={"network_interface": None})
    return Catalog(profile=profile, entries=catalog.entries)


def test_the_worker_pool_command_follows_the_prepend(
    repo: Path, edit: Edit, tmp_path: Path
) -> None:
    wrapped(edit, LOCAL, "  launcher: SingleNodeLauncher\n")
    catalog = load_catalog(repo, "local")
    assert catalog.profile.provider.launcher_prepend == PREPEND
    endpoint = render_catalog(catalog, repo / "templates")[0]
    config = load_rendered(endpoint, tmp_path / "loaded")
    try:
        launcher = config.engine.executor.provider.launcher
        assert isinstance(launcher, WrappedLauncher)
        assert launcher.prepend == PREPEND
        assert launcher("pool --port=1", 1, 1) == f"{PREPEND} pool --port=1"
    finally:
        config.engine.shutdown()


def test_a_multi_node_model_keeps_the_wrapped_launcher(
    repo: Path, edit: Edit, tmp_path: Path
) -> None:
    """WrappedLauncher starts one pool, as a multi-node model needs; its prepend stays."""
    wrapped(edit, SOPHIA, "  launcher: SimpleLauncher\n", "apptainer exec endpoint.sif")
    rendered = render_catalog(without_interface(load_catalog(repo, "sophia")), repo / "templates")
    endpoint = next(e for e in rendered if e.name == "sophia-meta-llama-3-1-405b-instruct")
    config = load_rendered(endpoint, tmp_path / "loaded")
    try:
        launcher = config.engine.executor.provider.launcher
        assert isinstance(launcher, WrappedLauncher)
        assert launcher.prepend == "apptainer exec endpoint.sif"
    finally:
        config.engine.shutdown()


def test_wrapped_launcher_needs_a_prepend(repo: Path, edit: Edit) -> None:
    edit(LOCAL, "  launcher: SingleNodeLauncher\n", "  launcher: WrappedLauncher\n")
    assert problems(repo, "local") == [
        f"{LOCAL}: provider.launcher_prepend: is required with launcher WrappedLauncher; set it "
        "to the command that the worker pool's command is appended to"
    ]


def test_a_blank_prepend_is_a_missing_one(repo: Path, edit: Edit) -> None:
    wrapped(edit, LOCAL, "  launcher: SingleNodeLauncher\n", "  ")
    [line] = problems(repo, "local")
    assert line.startswith(f"{LOCAL}: provider.launcher_prepend: is required")


def test_a_prepend_with_another_launcher(repo: Path, edit: Edit) -> None:
    edit(
        SOPHIA,
        "  launcher: SimpleLauncher\n",
        "  launcher: SimpleLauncher\n  launcher_prepend: apptainer exec endpoint.sif\n",
    )
    assert problems(repo, "sophia") == [
        f"{SOPHIA}: provider.launcher_prepend: is only used by launcher WrappedLauncher "
        "(launcher is SimpleLauncher); remove it or set launcher: WrappedLauncher"
    ]


def test_jinja_in_the_prepend(repo: Path, edit: Edit) -> None:
    wrapped(edit, LOCAL, "  launcher: SingleNodeLauncher\n", "docker run {{ image }}")
    with pytest.raises(CatalogError) as caught:
        render_catalog(load_catalog(repo, "local"), repo / "templates")
    [line] = [str(p) for p in caught.value.problems]
    assert line.startswith(f"{LOCAL}: provider.launcher_prepend: contains {{{{")
