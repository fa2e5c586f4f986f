"""ServerSpec: validation with sentences that name the field, and a stable round trip."""

from __future__ import annotations

from typing import Any

import pytest
from node_runtime import ServerSpec, SpecError


def spec_dict(**changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "spec_version": 1,
        "name": "meta-llama/Meta-Llama-3.1-8B-Instruct",
        "framework": "vllm",
        "task": "generate",
        "weights": "/eagle/models/llama",
        "args": ["--max-model-len", "256"],
        "env": {"VLLM_CPU_KVCACHE_SPACE": "1"},
        "python": "/opt/env/bin/python",
        "port": 0,
        "idle_timeout_s": 7200,
        "start_timeout_s": 900,
        "state_dir": "/tmp/state",
    }
    data.update(changes)
    return data


def test_round_trip() -> None:
    spec = ServerSpec.from_dict(spec_dict())
    again = ServerSpec.from_dict(spec.to_dict())
    assert again == spec
    assert spec.args == ("--max-model-len", "256")
    assert spec.to_dict()["idle_timeout_s"] == 7200.0


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"spec_version": 2}, "'spec_version' is 2"),
        ({"framework": "tgi"}, "'framework' is 'tgi': use one of vllm, infinity"),
        ({"task": "classify"}, "'task' is 'classify'"),
        ({"framework": "infinity", "task": "generate"}, "Infinity only serves embeddings"),
        ({"weights": "models/llama"}, "'weights' is 'models/llama': give an absolute path"),
        ({"port": 70000}, "'port' is 70000"),
        ({"port": "8000"}, "'port' is '8000': give an integer"),
        ({"args": "--max-model-len 256"}, "'args'"),
        ({"args": ["--max-model-len", 256]}, "'args'"),
        ({"env": {"A": 1}}, "'env'"),
        ({"idle_timeout_s": 0}, "'idle_timeout_s' is 0.0"),
        ({"idle_timeout_s": "2h"}, "'idle_timeout_s' is '2h'"),
        ({"name": "bad name"}, "'name' is 'bad name'"),
        ({"gpus": 8}, "unknown field(s) gpus"),
    ],
)
def test_invalid_specs_name_the_field(changes: dict[str, Any], words: str) -> None:
    with pytest.raises(SpecError) as caught:
        ServerSpec.from_dict(spec_dict(**changes))
    assert words in str(caught.value)


def test_missing_fields_are_listed() -> None:
    data = spec_dict()
    del data["weights"], data["python"]
    with pytest.raises(SpecError, match="missing field\\(s\\) weights, python"):
        ServerSpec.from_dict(data)


def test_not_a_dict() -> None:
    with pytest.raises(SpecError, match="expected a dict, got list"):
        ServerSpec.from_dict([])  # type: ignore[arg-type]


def test_process_hash_follows_the_process_not_the_timeouts() -> None:
    base = ServerSpec.from_dict(spec_dict()).process_hash()
    assert ServerSpec.from_dict(spec_dict(idle_timeout_s=5)).process_hash() == base
    assert ServerSpec.from_dict(spec_dict(start_timeout_s=5)).process_hash() == base
    assert ServerSpec.from_dict(spec_dict(args=["--max-model-len", "512"])).process_hash() != base
    assert ServerSpec.from_dict(spec_dict(env={})).process_hash() != base
