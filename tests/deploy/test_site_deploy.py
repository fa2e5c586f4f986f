"""`make deploy CLUSTER=<site>`: each step at the SDK and CLI boundary, never the cloud.

Install, register, write, start and record, against the fakes of site_fakes: what a first
deploy does, what a second one leaves alone, and what a change or a failure restarts.
"""

from __future__ import annotations

import json

import pytest
import yaml
from node_runtime.version import __version__

from inference_bundle.config.registry import load_registry, registry_path
from inference_bundle.ops.site import SiteDeployError
from inference_bundle.ops.site_register import registry_text
from tests.deploy.site_fakes import ENDPOINTS, Fakes, allowed, ids, tree


def test_first_deploy_installs_registers_writes_starts_and_records(fakes: Fakes) -> None:
    said = fakes.deploy()

    assert fakes.calls("python") == [
        ["python", "-c", "import node_runtime; print(node_runtime.__version__)"],
        ["python", "-m", "pip", "install", "--quiet", str(fakes.root / "functions")],
        ["python", "-c", "import node_runtime; print(node_runtime.__version__)"],
    ]
    registered = {name: (sha, fid) for name, sha, fid in fakes.client.registered}
    assert sorted(registered) == ["list_bundle_jobs", "run_batch", "serve"]
    serve_id, jobs_id = registered["serve"][1], registered["list_bundle_jobs"][1]
    batch_id = registered["run_batch"][1]

    # Each endpoint is allowed only its own function: model endpoints serve, batch twins
    # run batches, the jobs endpoint lists jobs.
    for name in ENDPOINTS[:-1]:
        expected = batch_id if name.endswith("-batch") else serve_id
        assert allowed(fakes, name) == [expected]
    assert allowed(fakes, "sophia-jobs") == [jobs_id]
    assert sorted(p.name for p in fakes.endpoints_dir.iterdir()) == sorted(ENDPOINTS)

    assert sorted(fakes.endpoint_calls()) == sorted(("start", name) for name in ENDPOINTS)
    for argv in fakes.calls("globus-compute-endpoint"):
        assert argv[1:3] == ["-c", str(fakes.endpoints_dir)] and argv[-1] == "--detach"
    first = json.loads(fakes.log.read_text().splitlines()[-1])
    assert first["path0"] == str(fakes.env_bin), "the endpoint env's bin must lead PATH"

    registry = load_registry(fakes.root, "sophia")
    assert registry.runtime_version == __version__
    assert registry.function_id("serve") == serve_id
    assert registry.functions["serve"].source_sha256 == registered["serve"][0]
    assert registry.functions["list_bundle_jobs"].id == jobs_id
    assert registry.endpoints == ids(fakes)
    text = registry_path(fakes.root, "sophia").read_text()
    assert text == registry_text(registry), "the registry is written deterministically"
    assert "updated; commit it" in said[-1]


def test_second_deploy_with_unchanged_input_changes_nothing(fakes: Fakes) -> None:
    fakes.deploy()
    registry_before = registry_path(fakes.root, "sophia").read_text()
    tree_before = tree(fakes.endpoints_dir)
    fakes.reset_log()

    said = fakes.deploy()

    assert fakes.client.registered == []
    assert fakes.endpoint_calls() == []
    assert [argv[1] for argv in fakes.calls("python")] == ["-c"], "version probe only"
    assert tree(fakes.endpoints_dir) == tree_before
    assert registry_path(fakes.root, "sophia").read_text() == registry_before
    assert "0 written, 0 started, 0 restarted" in "\n".join(said)
    assert said[-1].endswith("unchanged")


def test_a_changed_endpoint_file_restarts_only_that_endpoint(fakes: Fakes) -> None:
    fakes.deploy()
    ids_before = ids(fakes)
    fakes.reset_log()
    fakes.edit(
        "endpoints/sophia/nv-embed-v2.yaml", "batch: false", "batch: false\nwalltime: 06:00:00"
    )

    fakes.deploy()

    assert fakes.endpoint_calls() == [("restart", "sophia-nv-embed-v2")]
    assert fakes.client.registered == []
    assert ids(fakes) == ids_before, "a restart keeps the endpoint's id"


def test_stopped_endpoint_is_started_again(fakes: Fakes) -> None:
    fakes.deploy()
    (fakes.endpoints_dir / "sophia-jobs" / "daemon.pid").unlink()
    fakes.reset_log()

    fakes.deploy()

    assert fakes.endpoint_calls() == [("start", "sophia-jobs")]


def test_changed_function_source_is_registered_again_and_its_endpoints_restart(
    fakes: Fakes,
) -> None:
    fakes.deploy()
    path = registry_path(fakes.root, "sophia")
    data = yaml.safe_load(path.read_text())
    old_serve = data["functions"]["serve"]["id"]
    data["functions"]["serve"]["source_sha256"] = "0" * 64  # as if serve's source changed
    path.write_text(yaml.safe_dump(data))
    fakes.reset_log()

    fakes.deploy()

    assert [name for name, _, _ in fakes.client.registered] == ["serve"]
    new_serve = fakes.client.registered[0][2]
    assert new_serve != old_serve
    model_endpoints = [n for n in ENDPOINTS[:-1] if not n.endswith("-batch")]
    assert sorted(fakes.endpoint_calls()) == [("restart", name) for name in model_endpoints]
    assert allowed(fakes, "sophia-nv-embed-v2") == [new_serve]
    assert load_registry(fakes.root, "sophia").function_id("serve") == new_serve


def test_runtime_installed_only_when_its_version_differs(fakes: Fakes) -> None:
    (fakes.env_bin / "runtime-version").write_text(__version__)
    fakes.deploy()
    assert not [argv for argv in fakes.calls("python") if "pip" in argv]

    (fakes.env_bin / "runtime-version").write_text("0.0.9")
    fakes.reset_log()
    said = fakes.deploy()
    assert len([argv for argv in fakes.calls("python") if "pip" in argv]) == 1
    assert any("(installed: 0.0.9)" in line for line in said)


def test_an_endpoint_that_fails_to_start_is_named_and_the_others_recorded(
    fakes: Fakes, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_GCE_FAIL", "sophia-nv-embed-v2")
    with pytest.raises(SiteDeployError, match="1 endpoint") as failed:
        fakes.deploy()
    assert "sophia-nv-embed-v2" in str(failed.value)
    assert "quota exceeded" in str(failed.value)
    assert "sophia-nv-embed-v2" not in load_registry(fakes.root, "sophia").endpoints
    assert len(load_registry(fakes.root, "sophia").endpoints) == 3

    monkeypatch.delenv("FAKE_GCE_FAIL")
    fakes.reset_log()
    fakes.deploy()
    assert fakes.endpoint_calls() == [("start", "sophia-nv-embed-v2")]
    assert len(load_registry(fakes.root, "sophia").endpoints) == 4
