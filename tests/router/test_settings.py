"""Router settings: the shipped files load; a mistake names the file and the field."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from inference_bundle.config.problems import CatalogError
from inference_bundle.config.settings import load_settings

ROOT = Path(__file__).resolve().parents[2]


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
    path = _write(tmp_path, direct_path={"enabled": True, "refresh_s": 500})
    with pytest.raises(CatalogError) as caught:
        load_settings(path, tmp_path)
    [problem] = caught.value.problems
    assert (problem.file, problem.field) == ("router.yaml", "direct_path.refresh_s")
    assert "120" in problem.message


def test_the_router_command_prints_the_problem_and_no_traceback(tmp_path: Path) -> None:
    path = _write(tmp_path, direct_path={"refresh": 10})
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
    assert "direct_path.refresh" in ran.stderr and "Traceback" not in ran.stderr
