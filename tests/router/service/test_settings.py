"""Router settings: the shipped files load; a mistake names the file and the field."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from inference_bundle.config.problems import CatalogError, ConfigError, SettingsError
from inference_bundle.config.settings import load_settings

ROOT = Path(__file__).resolve().parents[3]


@pytest.mark.parametrize("path", sorted((ROOT / "config" / "router").glob("*.yaml")))
def test_the_shipped_router_configs_load(path: Path) -> None:
    assert load_settings(path, ROOT).clusters


def _write(tmp_path: Path, **changes: object) -> Path:
    data = yaml.safe_load((ROOT / "config" / "router" / "local.yaml").read_text())
    data.update(changes)
    path = tmp_path / "router.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_a_refresh_past_the_jobs_margin_names_the_file_and_field(tmp_path: Path) -> None:
    path = _write(tmp_path, data_plane={"enabled": True, "refresh_s": 500})
    with pytest.raises(SettingsError) as caught:
        load_settings(path, tmp_path)
    [problem] = caught.value.problems
    assert (problem.file, problem.field) == ("router.yaml", "data_plane.refresh_s")
    assert "120" in problem.message


def test_the_router_command_prints_the_problem_and_no_traceback(tmp_path: Path) -> None:
    path = _write(tmp_path, data_plane={"refresh": 10})
    ran = subprocess.run(
        [
            sys.executable,
            "-m",
            "inference_bundle.router",
            "--config",
            str(path),
            "--root",
            str(ROOT),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert ran.returncode == 1
    assert "data_plane.refresh" in ran.stderr and "Traceback" not in ran.stderr


def _problems(tmp_path: Path, **changes: object) -> list[tuple[str, str, str]]:
    with pytest.raises(SettingsError) as caught:
        load_settings(_write(tmp_path, **changes), tmp_path)
    return [(p.file, p.field, p.message) for p in caught.value.problems]


def test_an_unknown_top_level_field_lists_the_valid_ones(tmp_path: Path) -> None:
    [(file, field, message)] = _problems(tmp_path, direct_path={"enabled": True})
    assert (file, field) == ("router.yaml", "direct_path")
    assert message == (
        "unknown field; valid fields here are: auth, batches, check_media_hosts, clusters, "
        "data_plane, executor, file_group, limits, listen, log_prompts, max_body_bytes, "
        "metrics, queue, replicas, state_dir, store, tracing, wait_s"
    )


def test_a_queue_mistake_names_its_field(tmp_path: Path) -> None:
    problems = _problems(
        tmp_path,
        queue={
            "max_waiting": 0,
            "group_weights": {"auroragpt": 0},
            "classes": {"keys": {"k": 1}},
        },
    )
    assert {field for _, field, _ in problems} == {
        "queue.max_waiting",
        "queue.group_weights.auroragpt",
        "queue.classes.keys",
    }
    assert all(file == "router.yaml" for file, _, _ in problems)


def test_a_dial_url_must_be_a_base_url_and_tls_goes_in_pairs(tmp_path: Path) -> None:
    problems = _problems(
        tmp_path,
        data_plane={"dial_url": "gateway.example.org/api"},
        listen={"host": "0.0.0.0", "port": 8443, "tls_cert": "cert.pem"},
    )
    fields = {field for _, field, _ in problems}
    assert fields == {"data_plane.dial_url", "listen"}
    assert any("tls_cert and tls_key go together" in message for *_, message in problems)


def test_nodes_dial_the_listen_address_unless_told_otherwise(tmp_path: Path) -> None:
    plain = load_settings(_write(tmp_path, listen={"host": "0.0.0.0", "port": 9000}), tmp_path)
    assert plain.dial_url() == "http://127.0.0.1:9000"
    tls = {"host": "10.0.0.5", "port": 8443, "tls_cert": "c.pem", "tls_key": "k.pem"}
    assert load_settings(_write(tmp_path, listen=tls), tmp_path).dial_url() == (
        "https://10.0.0.5:8443"
    )
    site = load_settings(
        _write(tmp_path, data_plane={"dial_url": "https://gateway.example.org/"}), tmp_path
    )
    assert site.dial_url() == "https://gateway.example.org"


def test_mode_globus_names_a_keys_file_and_its_missing_section(tmp_path: Path) -> None:
    assert _problems(tmp_path, auth={"mode": "globus", "keys_file": "k.json"}) == [
        ("router.yaml", "auth.globus", "required field is missing; add it"),
        (
            "router.yaml",
            "auth.keys_file",
            "unknown field; valid fields here are: admins, globus, mode, policy",
        ),
    ]


def test_unknown_executor_and_mode_name_their_field(tmp_path: Path) -> None:
    assert _problems(tmp_path, executor="lambda") == [
        ("router.yaml", "executor", "must be 'engine' or 'globus' (got 'lambda')")
    ]
    assert _problems(tmp_path, auth={"mode": "tokens"}) == [
        ("router.yaml", "auth.mode", "must be 'keys' or 'globus' (got 'tokens')")
    ]
    assert _problems(tmp_path, auth={"keys_file": "k.json"}) == [
        ("router.yaml", "auth.mode", "required field is missing; add it")
    ]


def test_an_unknown_policy_field_lists_the_policy_fields(tmp_path: Path) -> None:
    auth = {"mode": "keys", "keys_file": "k.json", "policy": {"local": {"domains": ["x"]}}}
    assert _problems(tmp_path, auth=auth) == [
        (
            "router.yaml",
            "auth.policy.local.domains",
            "unknown field; valid fields here are: groups, identity_domains",
        )
    ]


def test_a_settings_error_is_a_config_error_not_a_catalog_error(tmp_path: Path) -> None:
    path = tmp_path / "router.yaml"
    path.write_text("clusters: [local\n")
    with pytest.raises(SettingsError) as caught:
        load_settings(path, tmp_path)
    assert isinstance(caught.value, ConfigError) and not isinstance(caught.value, CatalogError)
    [problem] = caught.value.problems
    assert problem.file == "router.yaml" and "invalid YAML" in problem.message
