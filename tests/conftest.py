"""Fixtures shared by every test tier."""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e_router import (
    SHARED_ROUTER,
    RunningRouter,
    cancel_unfinished_batches,
    scratch_root,
    start_router,
    stop_router,
    stop_servers,
)
from tests.postgres import PostgresMissing, PostgresServer

ROOT = Path(__file__).resolve().parents[1]
LOCAL_SLURM = ROOT / "scripts" / "local-slurm.sh"
# Session fixtures (routers, model servers, engines, the local Slurm) are torn down in the
# last test's teardown, which pytest-timeout counts in that test's limit.
SESSION_TEARDOWN_S = 600
# The shared router's batch jobs end this long after their last work (see ``e2e_root``).
BATCH_IDLE_S = 30


@pytest.hookimpl(trylast=True)  # after `-m` has deselected, so items[-1] is the last to run
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Give the last test the time to stop what the slow tests started for the session."""
    if not items or not any(item.get_closest_marker("slow") for item in items):
        return
    last = items[-1]
    marker = last.get_closest_marker("timeout")
    if marker is not None:
        limit = float(marker.kwargs.get("timeout", marker.args[0] if marker.args else 0))
    else:
        limit = _default_timeout(config)
    if limit > 0:  # 0: no limit at all, which stays so
        last.add_marker(pytest.mark.timeout(limit + SESSION_TEARDOWN_S), append=False)


def _default_timeout(config: pytest.Config) -> float:
    """A test's limit without a timeout mark, looked up as pytest-timeout does."""
    for value in (
        config.getoption("timeout"),
        os.environ.get("PYTEST_TIMEOUT"),
        config.getini("timeout"),
    ):
        if value not in (None, ""):
            return float(value)
    return 0.0


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
def postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL server of the session's own (tests/postgres.py), removed after it.

    A test that stops it starts it again; modules take their own database (``postgres_url``).
    """
    try:
        server = PostgresServer()
    except PostgresMissing as error:
        pytest.fail(str(error))
    with server:
        server.start()
        yield server


@pytest.fixture(scope="module")
def postgres_url(request: pytest.FixtureRequest, postgres: PostgresServer) -> str:
    """The URL of a new, empty database on the session's PostgreSQL, one per test module."""
    if not postgres.running:  # left stopped by an earlier test that failed half-way
        postgres.start()
    return postgres.fresh_database(request.module.__name__)


@pytest.fixture(scope="session")
def e2e_root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The scratch root of the session's shared router (see tests/e2e_router.py)."""
    root = scratch_root(tmp_path_factory.mktemp("router-e2e"))
    (root / ".state" / "batches").mkdir()  # the profile's batch_input_roots
    # A batch job ends after BATCH_IDLE_S without work rather than the profile's 60 s: the
    # batch modules follow one another, and the last one waits for that end.
    profile = root / "config" / "clusters" / "local.yaml"
    text = profile.read_text()
    assert "\nbatch_idle_timeout_s: 60\n" in text
    profile.write_text(
        text.replace("\nbatch_idle_timeout_s: 60\n", f"\nbatch_idle_timeout_s: {BATCH_IDLE_S}\n")
    )
    yield root
    stop_servers(root)


@pytest.fixture(scope="session")
def e2e_router(e2e_root: Path) -> Iterator[RunningRouter]:
    """One router with real vLLM and Infinity behind it, shared by the slow tiers' modules."""
    running = start_router(e2e_root, SHARED_ROUTER, wait_s=300)
    yield running
    stop_router(running)


@pytest.fixture(scope="module")
def batch_router(
    request: pytest.FixtureRequest, e2e_router: RunningRouter
) -> Iterator[RunningRouter]:
    """The shared router for a module of batch tests; its batches are cancelled after it.

    The batch modules share it (and so a warm batch job and server) rather than each paying
    a router, engines and a cold vLLM of its own; each keeps to its own batch ids, files and
    users. After the session's last of them, the batch servers stop too: later modules
    count the vLLM servers over this root.
    """
    yield e2e_router
    cancel_unfinished_batches(e2e_router)
    if not _later_tests_use(request, "batch_router"):
        stop_servers(e2e_router.root, roles=("batch",))


def _later_tests_use(request: pytest.FixtureRequest, fixture: str) -> bool:
    """Whether a test after this module's, in this session, uses ``fixture``."""
    items = request.session.items
    here = max(n for n, item in enumerate(items) if item.path == request.node.path)
    return any(fixture in getattr(item, "fixturenames", ()) for item in items[here + 1 :])
