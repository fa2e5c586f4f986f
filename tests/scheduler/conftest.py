"""Schedulers for the engine tests: the PBS Pro shim, the local Slurm, and the engines.

Each engine is started once per session, on first use, and shut down at the session's end.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from parsl.providers import LocalProvider, PBSProProvider, SlurmProvider

from .engines import EngineRun, processes_under

ROOT = Path(__file__).resolve().parents[2]
PBS_SHIM = ROOT / "tests" / "shims" / "pbs"
LOCAL_SLURM = ROOT / "scripts" / "local-slurm.sh"
ENGINE_KINDS = ("local", "pbspro", "slurm")
MODEL = "tiny-llama"


def _prepend_path(directory: Path | str) -> None:
    os.environ["PATH"] = f"{directory}{os.pathsep}{os.environ.get('PATH', '')}"


@pytest.fixture(scope="session", autouse=True)
def venv_on_path() -> None:
    """The engine starts its interchange and workers through PATH (python-exec)."""
    _prepend_path(Path(sys.executable).parent)


@pytest.fixture(scope="session")
def pbs_shim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """qsub/qstat/qdel on PATH, keeping their jobs under a fresh folder."""
    state = tmp_path_factory.mktemp("pbs-shim")
    os.environ["PBS_SHIM_DIR"] = str(state)
    _prepend_path(PBS_SHIM)
    yield state
    running = subprocess.run(["qstat", "-f", "-F", "json"], capture_output=True, text=True)
    leftover = list(json.loads(running.stdout).get("Jobs", {}))
    if leftover:
        subprocess.run(["qdel", *leftover], check=False)


def _provider(kind: str, request: pytest.FixtureRequest) -> object:
    if kind == "local":
        return LocalProvider(init_blocks=0, min_blocks=0, max_blocks=1)  # type: ignore[no-untyped-call]
    if kind == "pbspro":
        request.getfixturevalue("pbs_shim")
        return PBSProProvider(  # type: ignore[no-untyped-call]
            account="argonne_tpc",
            queue="by-node",
            select_options="ngpus=8",
            scheduler_options="#PBS -l filesystems=home:eagle",
            walltime="00:10:00",
            cpus_per_node=2,
            init_blocks=0,
            min_blocks=0,
            max_blocks=1,
        )
    request.getfixturevalue("local_slurm")
    return SlurmProvider(
        walltime="00:10:00",
        exclusive=False,
        init_blocks=0,
        min_blocks=0,
        max_blocks=1,
    )


@pytest.fixture(scope="session")
def server_state_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The runtime's state_dir, shared by the three engines as a node's is by its workers.

    Torn down after the engines: by then each model server must have been stopped by its
    watchdog (the job that used it is gone); a survivor is killed and fails the session.
    """
    state = tmp_path_factory.mktemp("servers")
    yield state
    deadline = time.monotonic() + 30.0
    while (left := processes_under(state)) and time.monotonic() < deadline:
        time.sleep(0.2)
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    assert not left, f"model servers outlived their engines' jobs: {left}"


def _start_engine(
    kind: str, request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[EngineRun]:
    """A started GlobusComputeEngine whose label is an endpoint name, as rendered ones are."""
    request.getfixturevalue("server_state_dir")  # set up first, so torn down last
    provider = _provider(kind, request)
    label = f"{kind}{os.getpid()}-{MODEL}"  # an endpoint name, unique to this test session
    run = EngineRun(kind, label, provider, tmp_path_factory.mktemp(kind))
    yield run
    left = run.shutdown()
    assert not left, f"the {kind} engine left processes behind: {left}"


@pytest.fixture(scope="session")
def local_engine(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[EngineRun]:
    yield from _start_engine("local", request, tmp_path_factory)


@pytest.fixture(scope="session")
def pbspro_engine(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[EngineRun]:
    yield from _start_engine("pbspro", request, tmp_path_factory)


@pytest.fixture(scope="session")
def slurm_engine(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[EngineRun]:
    yield from _start_engine("slurm", request, tmp_path_factory)


@pytest.fixture(params=ENGINE_KINDS)
def engine(request: pytest.FixtureRequest) -> EngineRun:
    """Each engine in turn. They stay up together until the session ends, so that one
    model server started through one is reused through the others, as on a shared node."""
    run: EngineRun = request.getfixturevalue(f"{request.param}_engine")
    return run
