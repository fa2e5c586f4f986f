"""`make deploy CLUSTER=<site>` before it changes anything: the plan, and what stops it.

A dry run prints the plan and touches nothing; missing credentials and sites that cannot
deploy stop with what to do; the cluster's jobs endpoint loads with the endpoint's loader.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from node_runtime.version import __version__

from inference_bundle.config.naming import jobs_endpoint_name
from inference_bundle.ops.site_plan import SiteDeployError, load_site
from inference_bundle.rendering.render import render_jobs_endpoint
from inference_bundle.rendering.verify import load_rendered
from tests.deploy.site_fakes import Fakes, bundle, make_fakes, tree


def test_dry_run_end_to_end_prints_the_plan_and_touches_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fakes = make_fakes(tmp_path, monkeypatch, trim=False)  # the whole Sophia catalog
    repo_before = tree(fakes.root)

    done = bundle(fakes, DRY_RUN="1")

    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "plan (dry run: nothing is changed)" in out
    assert "functions to register: serve, run_batch, list_bundle_jobs" in out
    assert f"node runtime: install {__version__}" in out
    assert "files change in 36" in out
    assert "    sophia-meta-llama-3-1-405b-instruct: new" in out
    assert "sophia-jobs (start)" in out
    assert f"log in with `{fakes.env_bin / 'globus-compute-endpoint'} -c " in out
    assert not fakes.endpoints_dir.exists()
    assert tree(fakes.root) == repo_before
    assert fakes.calls("globus-compute-endpoint") == []
    assert [argv[1] for argv in fakes.calls("python")] == ["-c"], "version probe only"


def test_dry_run_after_a_deploy_lists_only_what_changed(fakes: Fakes) -> None:
    fakes.deploy()
    fakes.edit(
        "endpoints/sophia/nv-embed-v2.yaml", "batch: false", "batch: false\nwalltime: 06:00:00"
    )
    (fakes.endpoints_dir / "sophia-old-model").mkdir()
    (fakes.endpoints_dir / "sophia-old-model" / "config.yaml").write_text(
        "# Rendered by `bundle render` from endpoints/sophia/old-model.yaml\n"
    )
    tree_before = tree(fakes.endpoints_dir)
    fakes.reset_log()

    said = "\n".join(fakes.deploy(dry_run=True))

    assert "functions to register: none (source unchanged)" in said
    assert "files change in 1\n    sophia-nv-embed-v2: user_config_template.yaml.j2" in said
    assert "endpoints to start or restart: sophia-nv-embed-v2 (restart)" in said
    assert "sophia-old-model: no longer in the catalog" in said
    assert tree(fakes.endpoints_dir) == tree_before
    assert fakes.endpoint_calls() == []


def test_missing_credentials_stop_before_any_change_with_the_login_command(
    fakes: Fakes,
) -> None:
    repo_before = tree(fakes.root)

    done = bundle(fakes)

    assert done.returncode == 1
    login = f"`{fakes.env_bin / 'globus-compute-endpoint'} -c {fakes.endpoints_dir} login`"
    assert login in done.stderr
    assert "nothing was changed" in done.stderr
    assert not fakes.endpoints_dir.exists(), "not even the token storage was created"
    assert tree(fakes.root) == repo_before
    assert fakes.calls("globus-compute-endpoint") == []
    assert not [argv for argv in fakes.calls("python") if "pip" in argv]


def test_jobs_endpoint_loads_with_the_endpoints_own_loader(fakes: Fakes, tmp_path: Path) -> None:
    site = load_site(fakes.root, "sophia", fakes.endpoints_dir)
    endpoint = render_jobs_endpoint(
        site.catalog.profile, fakes.root / "templates", [str(uuid.uuid4())]
    )
    assert endpoint.name == jobs_endpoint_name("sophia")
    config = load_rendered(endpoint, tmp_path / "scratch")
    try:
        assert type(config.engine.executor.provider).__name__ == "LocalProvider"
        assert config.engine.executor.label == "sophia-jobs-HighThroughputExecutor"
    finally:
        config.engine.shutdown()


@pytest.mark.parametrize(
    ("cluster", "edit", "message"),
    [
        ("local", None, "runs on this machine"),
        ("sophia", "endpoint_python: ", "endpoint_python: not set"),
    ],
)
def test_sites_that_cannot_deploy_say_why(
    fakes: Fakes, cluster: str, edit: str | None, message: str
) -> None:
    if edit:
        path = fakes.root / "config" / "clusters" / f"{cluster}.yaml"
        text = "\n".join(
            line for line in path.read_text().splitlines() if not line.startswith(edit)
        )
        path.write_text(text + "\n")
    with pytest.raises(SiteDeployError, match=message):
        load_site(fakes.root, cluster)
