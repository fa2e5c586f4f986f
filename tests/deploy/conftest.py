"""Fixtures for the deploy tests: a scratch copy of the repository's data, site fakes."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.deploy.site_fakes import Fakes, make_fakes

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A copy of endpoints/, config/ and templates/ that a test may break."""
    for folder in ("endpoints", "config", "templates"):
        shutil.copytree(ROOT / folder, tmp_path / folder)
    return tmp_path


@pytest.fixture
def edit(repo: Path) -> Callable[[str, str, str], Path]:
    """Replace text in one file of the scratch copy; fails if the text is not there."""

    def replace(relative: str, old: str, new: str) -> Path:
        path = repo / relative
        text = path.read_text()
        assert old in text, f"{old!r} not in {relative}"
        path.write_text(text.replace(old, new, 1))
        return path

    return replace


@pytest.fixture
def fakes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Fakes:
    """A scratch repository with a trimmed Sophia catalog and a fake endpoint environment."""
    return make_fakes(tmp_path, monkeypatch)
