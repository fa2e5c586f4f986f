"""Fixtures shared by every test tier."""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e_router import RunningRouter, scratch_root, start_router, stop_router, stop_servers

ROOT = Path(__file__).resolve().parents[1]
LOCAL_SLURM = ROOT / "scripts" / "local-slurm.sh"


@pytest.fixture(scope="session")
def local_slurm() -> Iterator[Path]:
    """The one-node Slurm of scripts/local-slurm.sh: reused if it runs, else started here.

    Test sessions running at once share it: each holds a shared lock while it uses it, and
    the last one out stops it if a test session started it (not if an operator did).
    """
    if shutil.which("slurmctld") is None and os.geteuid() != 0:
        pytest.fail("Slurm is not installed and this is not root: run `make slurm-packages`")
    state = Path(os.environ.get("LOCAL_SLURM_DIR", ROOT / ".state" / "slurm"))
    state.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, LOCAL_SLURM_DIR=str(state))
    marker = state / "started-by-tests"
    with open(state / "sessions.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if subprocess.run([LOCAL_SLURM, "status"], env=env, capture_output=True).returncode:
            started = subprocess.run(
                [LOCAL_SLURM, "start"], env=env, capture_output=True, text=True
            )
            if started.returncode != 0:
                pytest.fail(f"scripts/local-slurm.sh start failed:\n{started.stderr}")
            marker.touch()
        fcntl.flock(lock, fcntl.LOCK_SH)
        os.environ["SLURM_CONF"] = str(state / "slurm.conf")
        yield state
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return  # another session still uses it
        if marker.exists():
            subprocess.run([LOCAL_SLURM, "stop"], env=env, check=False)
            marker.unlink()


@pytest.fixture(scope="session")
def e2e_root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The scratch root of the session's shared router (see tests/e2e_router.py)."""
    root = scratch_root(tmp_path_factory.mktemp("router-e2e"))
    yield root
    stop_servers(root)


@pytest.fixture(scope="session")
def e2e_router(e2e_root: Path) -> Iterator[RunningRouter]:
    """One router with real vLLM and Infinity behind it, shared by the slow tiers' modules."""
    running = start_router(e2e_root, "patient", wait_s=300)
    yield running
    stop_router(running)
