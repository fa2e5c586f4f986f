"""Entry points through a real GlobusComputeEngine: LocalProvider, Parsl's PBSProProvider over
the qsub/qstat/qdel shim, and SlurmProvider against the local Slurm.

Functions travel source-serialized, as registered, and run in the engine's workers: for PBS
and Slurm inside the block's scheduler job.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import node_runtime
import pytest
from node_runtime.jobs import list_bundle_jobs

from .conftest import MODEL, ROOT
from .engines import EngineRun, TaskFailed

# A test may start an engine, its scheduler's block, and vLLM inside it (up to 180 s).
pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

TINY_MODEL = ROOT / ".state" / "models" / "tiny-llama"
VLLM_PYTHON = ROOT / ".venvs" / "vllm" / "bin" / "python"


def where_am_i() -> dict[str, object]:
    """The worker's host and the scheduler job it runs in."""
    import os
    import socket

    return {
        "host": socket.gethostname(),
        "pbs_job": os.environ.get("PBS_JOBID"),
        "slurm_job": os.environ.get("SLURM_JOB_ID"),
    }


def _listing(engine: EngineRun, state_dir: Path) -> dict[str, Any]:
    result: dict[str, Any] = engine.call(
        list_bundle_jobs,
        node_runtime.__version__,
        engine.scheduler,
        {engine.label: MODEL},
        str(state_dir),
    )
    return result


def test_a_function_runs_in_the_blocks_scheduler_job(engine: EngineRun) -> None:
    where = engine.call(where_am_i)
    assert where["host"] == socket.gethostname()
    if engine.scheduler == "pbspro":
        assert str(where["pbs_job"]).endswith(".pbs-shim")
    if engine.scheduler == "slurm":
        assert str(where["slurm_job"]).isdigit()


def test_the_job_listing_finds_the_engines_own_block(engine: EngineRun, tmp_path: Path) -> None:
    where = engine.call(where_am_i)
    listing = _listing(engine, tmp_path)  # an empty state_dir: no server on any node

    assert listing["scheduler"] == engine.scheduler
    if engine.scheduler == "local":  # no scheduler, and no server started yet
        assert listing["jobs"] == []
        return
    [job] = listing["jobs"]
    assert job["job_id"] == where["pbs_job" if engine.scheduler == "pbspro" else "slurm_job"]
    assert (job["endpoint"], job["model"], job["block"]) == (engine.label, MODEL, 0)
    assert job["scheduler_state"] == "running"
    assert job["state"] == "starting"  # the node is held; no model server on it yet
    assert job["nodes"] == [socket.gethostname()]
    assert job["walltime_s"] == 600


def test_a_runtime_version_mismatch_fails_with_a_clear_message(engine: EngineRun) -> None:
    with pytest.raises(TaskFailed, match="node runtime version mismatch"):
        engine.call(list_bundle_jobs, "0.0.0", engine.scheduler, {}, None)


def test_one_chat_request_through_serve_then_the_listing_shows_it_ready(
    engine: EngineRun, server_state_dir: Path
) -> None:
    assert (TINY_MODEL / "config.json").exists() and VLLM_PYTHON.exists(), (
        "the tiny model or the vLLM environment is missing: run `make backends`"
    )
    from node_runtime.entrypoints import serve

    spec = {
        "spec_version": 1,
        "name": MODEL,
        "framework": "vllm",
        "task": "generate",
        "weights": str(TINY_MODEL),
        "python": str(VLLM_PYTHON),
        "args": ["--dtype", "float32", "--max-model-len", "256", "--enforce-eager"],
        "env": {
            "VLLM_CPU_KVCACHE_SPACE": "1",
            "HF_HUB_OFFLINE": "1",
            "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
            "VLLM_CACHE_ROOT": str(ROOT / ".state" / "cache" / "vllm"),
            "TORCHINDUCTOR_CACHE_DIR": str(ROOT / ".state" / "cache" / "inductor"),
        },
        "port": 0,
        "idle_timeout_s": 30,  # the watchdog then looks every 3 s, so it stops soon after
        "start_timeout_s": 120,
        "state_dir": str(server_state_dir),
    }
    request = {
        "method": "POST",
        "path": "/v1/chat/completions",
        "body": {
            "model": MODEL,
            "messages": [{"role": "user", "content": "Hello"}],
            "max_tokens": 4,
            "temperature": 0,
        },
    }
    answer = engine.call(serve, node_runtime.__version__, spec, request, timeout=180)

    assert answer["status"] == 200, answer
    assert answer["body"]["usage"]["completion_tokens"] == 4
    listing = _listing(engine, server_state_dir)
    [job] = listing["jobs"]  # the local listing has one entry per server instead of per job
    assert job["state"] == "ready"
    [server] = job["servers"]
    assert (server["model"], server["state"], server["node"]) == (MODEL, "ready", job["nodes"][0])
