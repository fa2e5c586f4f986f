"""Server specs built from the catalog are what the node runtime accepts."""

from __future__ import annotations

from pathlib import Path

import pytest
from node_runtime.spec import ServerSpec

from inference_bundle.config.catalog import load_catalog
from inference_bundle.rendering.specs import server_spec

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("cluster", ["sophia", "polaris", "example-slurm", "local", "local-slurm"])
def test_every_enabled_endpoint_gives_a_valid_spec(cluster: str) -> None:
    catalog = load_catalog(ROOT, cluster)
    for entry in catalog.enabled():
        spec = ServerSpec.from_dict(server_spec(entry, catalog.profile))
        assert spec.name == entry.endpoint.name
        assert spec.to_dict() == ServerSpec.from_dict(spec.to_dict()).to_dict()


def entry_spec(cluster: str, slug: str) -> dict[str, object]:
    catalog = load_catalog(ROOT, cluster)
    entry = next(e for e in catalog.entries if e.slug == slug)
    return server_spec(entry, catalog.profile)


def test_four_node_model_uses_ray_and_staged_weights() -> None:
    spec = entry_spec("sophia", "meta-llama-3-1-405b-instruct")
    args = " ".join(spec["args"])  # type: ignore[arg-type]
    assert "--tensor-parallel-size 8 --pipeline-parallel-size 4" in args
    assert "--distributed-executor-backend ray" in args
    assert "--enable-auto-tool-choice --tool-call-parser llama3_json" in args
    assert spec["weights"] == "/raid/argonne_tpc/model_weights/Meta-Llama-3.1-405B-Instruct"
    assert spec["idle_timeout_s"] == 7200
    assert spec["task"] == "generate"


def test_local_specs_point_into_the_checkout() -> None:
    chat = entry_spec("local", "tiny-chat")
    assert chat["weights"] == str(ROOT / ".state/models/tiny-llama")
    assert chat["python"] == str(ROOT / ".venvs/vllm/bin/python")
    assert chat["args"] == [
        "--dtype", "float32", "--max-model-len", "256",
        "--enable-auto-tool-choice", "--tool-call-parser", "hermes",
        "--enforce-eager",
    ]  # fmt: skip
    assert chat["env"]["VLLM_CACHE_ROOT"] == str(ROOT / ".state/cache/vllm")  # type: ignore[index]
    embed = entry_spec("local", "all-minilm-l6-v2")
    assert embed["task"] == "embed" and embed["framework"] == "infinity"
    assert embed["args"][:4] == ["--engine", "torch", "--device", "cpu"]  # type: ignore[index]
