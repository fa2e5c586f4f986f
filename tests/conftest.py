"""Fixtures shared by every test tier."""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

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
