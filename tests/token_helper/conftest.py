"""Fixtures for the token helper: a fake Globus Auth, a scratch token file, a login."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import inference_auth_token as helper
from tests.router.fake_globus_auth import FakeGlobusAuth

ROOT = Path(__file__).resolve().parents[2]


def _sophia() -> helper.GlobusCluster:
    cluster = helper.load_cluster("sophia")
    assert isinstance(cluster, helper.GlobusCluster)
    return cluster


SOPHIA = _sophia()  # the repository's production entry, as the tests log in to it


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeGlobusAuth]:
    """Globus Auth on 127.0.0.1, globus_sdk pointed at it by its own environment settings."""
    with FakeGlobusAuth() as server:
        server.apply_env(monkeypatch)
        yield server


@pytest.fixture
def tokens_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Where this test's tokens go; the cluster choice and config are the repository's."""
    path = tmp_path / "globus" / "inference_app" / "tokens.json"
    monkeypatch.setenv("INFERENCE_AUTH_TOKENS", str(path))
    monkeypatch.delenv("INFERENCE_AUTH_CLUSTER", raising=False)
    monkeypatch.delenv("INFERENCE_AUTH_CONFIG", raising=False)
    return path


Login = Callable[..., list[str]]


@pytest.fixture
def login(fake: FakeGlobusAuth, tokens_file: Path) -> Login:
    """`authenticate` in-process, logging in as `username`; returns what it said."""

    def run(username: str = "jdoe@anl.gov", force: bool = False) -> list[str]:
        said: list[str] = []
        helper.authenticate(
            force=force, ask_code=lambda url: fake.approve(url, username), say=said.append
        )
        return said

    return run
