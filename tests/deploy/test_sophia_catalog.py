"""The Sophia catalog is the guide's model list, with the guide's batch (B) flags."""

from __future__ import annotations

from pathlib import Path

from inference_bundle.config.catalog import load_catalog

ROOT = Path(__file__).resolve().parents[2]

# Copied from the user guide's "Available Models" section: name -> marked B.
GUIDE_MODELS = {
    "Qwen/Qwen2.5-14B-Instruct": True,
    "Qwen/Qwen2.5-7B-Instruct": True,
    "Qwen/QwQ-32B-Preview": True,
    "meta-llama/Meta-Llama-3-70B-Instruct": True,
    "meta-llama/Meta-Llama-3-8B-Instruct": True,
    "meta-llama/Meta-Llama-3.1-70B-Instruct": True,
    "meta-llama/Meta-Llama-3.1-8B-Instruct": True,
    "meta-llama/Meta-Llama-3.1-405B-Instruct": False,
    "meta-llama/Llama-3.3-70B-Instruct": True,
    "mistralai/Mistral-7B-Instruct-v0.3": True,
    "mistralai/Mistral-Large-Instruct-2407": True,
    "mistralai/Mixtral-8x22B-Instruct-v0.1": True,
    "mgoin/Nemotron-4-340B-Instruct-hf": False,
    "argonne-private/AuroraGPT-7B": False,
    "argonne-private/AuroraGPT-IT-v4-0125": False,
    "argonne-private/AuroraGPT-Tulu3-SFT-0125": False,
    "argonne-private/AuroraGPT-KTO-1902": False,
    "argonne-private/AuroraGPT-DPO-1902": False,
    "argonne-private/AuroraGPT-SFT-190": False,
    "deepseek-ai/DeepSeek-R1": False,
    "deepseek-ai/DeepSeek-V3": False,
    "allenai/Llama-3.1-Tulu-3-405B": False,
    "Qwen/Qwen2-VL-72B-Instruct": True,
    "meta-llama/Llama-3.2-90B-Vision-Instruct": False,
    "nvidia/NV-Embed-v2": False,
}
GUIDE_OLD_NAMES = {
    "auroragpt/auroragpt-0.1-chkpt-7B-Base": "argonne-private/AuroraGPT-7B",
    "auroragpt/auroragpt-0.1-chkpt-7B-IT": "argonne-private/AuroraGPT-IT-v4-0125",
    "auroragpt/auroragpt-0.1-chkpt-7B-KTO": "argonne-private/AuroraGPT-KTO-1902",
    "auroragpt/auroragpt-0.1-chkpt-7B-DPO": "argonne-private/AuroraGPT-DPO-1902",
}


def test_every_guide_model_with_its_batch_flag() -> None:
    endpoints = {e.endpoint.name: e.endpoint for e in load_catalog(ROOT, "sophia").entries}
    assert {name: ep.batch for name, ep in endpoints.items()} == GUIDE_MODELS


def test_old_names_are_aliases() -> None:
    owners = {
        alias: e.endpoint.name
        for e in load_catalog(ROOT, "sophia").entries
        for alias in e.endpoint.aliases
    }
    assert owners == GUIDE_OLD_NAMES


def test_kinds_and_frameworks() -> None:
    endpoints = {e.endpoint.name: e.endpoint for e in load_catalog(ROOT, "sophia").entries}
    vision = {n for n, ep in endpoints.items() if ep.kind == "vision"}
    assert vision == {"Qwen/Qwen2-VL-72B-Instruct", "meta-llama/Llama-3.2-90B-Vision-Instruct"}
    assert endpoints["nvidia/NV-Embed-v2"].framework == "infinity"
    assert endpoints["argonne-private/AuroraGPT-7B"].kind == "base"


def test_405b_models_span_four_nodes() -> None:
    endpoints = {e.endpoint.name: e.endpoint for e in load_catalog(ROOT, "sophia").entries}
    for name in ("meta-llama/Meta-Llama-3.1-405B-Instruct", "allenai/Llama-3.1-Tulu-3-405B"):
        ep = endpoints[name]
        assert (ep.nodes, ep.tensor_parallel, ep.pipeline_parallel) == (4, 8, 4), name


def test_deepseek_disabled_with_the_guides_reason() -> None:
    endpoints = {e.endpoint.name: e.endpoint for e in load_catalog(ROOT, "sophia").entries}
    for name in ("deepseek-ai/DeepSeek-R1", "deepseek-ai/DeepSeek-V3"):
        assert not endpoints[name].enabled
        assert "Not supported natively on A100" in (endpoints[name].disabled_reason or "")
