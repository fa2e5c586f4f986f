"""Rendering: golden files, determinism, and what `make render` writes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from inference_bundle.config.catalog import load_catalog
from inference_bundle.rendering.render import ENDPOINT_FILES, render_catalog, write_rendered

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = ROOT / "tests" / "golden" / "sophia"
GOLDEN_ENDPOINTS = [
    "sophia-meta-llama-3-1-8b-instruct",  # one node, chat
    "sophia-nv-embed-v2",  # embedding, Infinity
    "sophia-meta-llama-3-1-405b-instruct",  # four nodes, Ray
]


def rendered(cluster: str, root: Path = ROOT) -> dict[str, dict[str, str]]:
    catalog = load_catalog(root, cluster)
    return {e.name: e.files for e in render_catalog(catalog, root / "templates")}


@pytest.mark.parametrize("name", GOLDEN_ENDPOINTS)
def test_golden_files(name: str) -> None:
    """Set UPDATE_GOLDEN=1 to rewrite them after an intended change, then review the diff."""
    files = rendered("sophia")[name]
    assert sorted(files) == sorted(ENDPOINT_FILES)
    for filename, text in files.items():
        golden = GOLDEN / name / filename
        if os.environ.get("UPDATE_GOLDEN") == "1":
            golden.parent.mkdir(parents=True, exist_ok=True)
            golden.write_text(text)
        # Bytes, not text: a changed line ending or encoding is a difference too.
        assert text.encode() == golden.read_bytes(), f"{name}/{filename} differs from its golden"


def test_one_directory_per_enabled_endpoint_plus_batch_twins() -> None:
    catalog = load_catalog(ROOT, "sophia")
    names = set(rendered("sophia"))
    enabled = [e for e in catalog.entries if e.endpoint.enabled]
    assert len(catalog.entries) == 25 and len(enabled) == 23
    assert names == {e.endpoint_name for e in enabled} | {
        f"{e.endpoint_name}-batch" for e in enabled if e.endpoint.batch
    }
    assert "sophia-deepseek-r1" not in names


def test_batch_twin_has_one_worker_and_a_short_idle_time() -> None:
    files = rendered("sophia")["sophia-meta-llama-3-1-8b-instruct-batch"]
    template = files["user_config_template.yaml.j2"]
    assert "max_workers_per_node: 1\n" in template
    assert "max_idletime: 300\n" in template


def test_make_render_is_byte_identical(tmp_path: Path) -> None:
    def render_to(out: Path) -> dict[str, bytes]:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "inference_bundle",
                "render",
                "--cluster",
                "sophia",
                "--out",
                str(out),
            ],
            check=True,
            capture_output=True,
        )
        return {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*") if p.is_file()}

    first, second = render_to(tmp_path / "a"), render_to(tmp_path / "b")
    assert first == second
    assert len(first) == 35 * len(ENDPOINT_FILES)


def test_render_replaces_stale_directories(tmp_path: Path) -> None:
    stale = tmp_path / "sophia" / "sophia-removed-model"
    stale.mkdir(parents=True)
    catalog = load_catalog(ROOT, "sophia")
    write_rendered(render_catalog(catalog, ROOT / "templates"), tmp_path / "sophia")
    assert not stale.exists()
    assert (tmp_path / "sophia" / "sophia-nv-embed-v2" / "config.yaml").exists()
