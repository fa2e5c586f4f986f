"""Fixtures for the token helper: a fake Globus Auth, a scratch token file, a login."""

from __future__ import annotations

import queue
import subprocess
import threading
import time
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


def login_url(process: subprocess.Popen[str], timeout_s: float) -> str:
    """The authorize URL the helper prints first; fails if none comes within timeout_s."""
    assert process.stdout is not None
    stdout = process.stdout
    lines: queue.Queue[str] = queue.Queue()

    def read() -> None:
        # readline blocks, so it runs in a thread and the test waits on the queue with a
        # deadline; it stops at the URL, leaving the rest of stdout to communicate().
        while line := stdout.readline():
            lines.put(line)
            if line.strip().startswith("http"):
                return
        lines.put("")  # end of output

    threading.Thread(target=read, daemon=True).start()
    deadline = time.monotonic() + timeout_s
    url = ""
    while not url:
        try:
            line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            process.kill()
            pytest.fail(f"no login URL within {timeout_s:.0f} s: {process.communicate()}")
        assert line, process.communicate()
        url = line.strip() if line.strip().startswith("http") else ""
    return url
