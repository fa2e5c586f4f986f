"""Frameworks and schedulers are found by name; each knows its argv, probe or state table."""

from __future__ import annotations

from typing import Any

import pytest
from node_runtime import frameworks, launch, schedulers
from node_runtime.proxy import ROUTES
from node_runtime.schedulers import JobListingError
from node_runtime.spec import ServerSpec
from node_runtime.state_names import JobState, ModelState, SchedulerState


def spec(framework: str, task: str) -> ServerSpec:
    return ServerSpec(
        name="m/x",
        framework=framework,
        task=task,
        weights="/w",
        python="/p/python",
        state_dir="/s",
        args=("--a", "1"),
    )


def test_an_unknown_framework_lists_the_known_ones() -> None:
    assert frameworks.names() == ("vllm", "infinity")
    with pytest.raises(
        frameworks.UnknownFrameworkError,
        match="unknown framework 'tgi': use one of vllm, infinity",
    ):
        frameworks.framework("tgi")


def test_an_unknown_scheduler_lists_the_known_ones() -> None:
    assert schedulers.names() == ("pbspro", "slurm", "local")
    with pytest.raises(
        JobListingError, match="unknown scheduler 'no-such-scheduler': use one of pbspro, slurm"
    ):
        schedulers.scheduler("no-such-scheduler")


_HEAD = ["--served-model-name", "m/x", "--host", "127.0.0.1", "--port", "8011"]
# vLLM takes the data plane's agent as middleware; Infinity's CLI runs inside a wrapper.
_VLLM_AGENT = ["--middleware", "node_runtime.dialout.DialOut"]


@pytest.mark.parametrize(
    ("framework", "task", "argv"),
    [
        (
            "vllm",
            "generate",
            ["/p/python", "-m", "vllm.entrypoints.openai.api_server", "--model", "/w", *_HEAD]
            + _VLLM_AGENT,
        ),
        (
            "vllm",
            "embed",
            ["/p/python", "-m", "vllm.entrypoints.openai.api_server", "--model", "/w", *_HEAD]
            + ["--runner", "pooling", *_VLLM_AGENT],
        ),
        (
            "vllm",
            "rerank",
            ["/p/python", "-m", "vllm.entrypoints.openai.api_server", "--model", "/w", *_HEAD]
            + ["--runner", "pooling", *_VLLM_AGENT],
        ),
        (
            "infinity",
            "embed",
            ["/p/python", "-m", "node_runtime.dialout.wrap_uvicorn", "infinity_emb.cli", "v2"]
            + ["--model-id", "/w", *_HEAD, "--url-prefix", "/v1"],
        ),
    ],
)
def test_each_framework_starts_its_server_with_the_specs_args_last(
    framework: str, task: str, argv: list[str]
) -> None:
    assert launch.command(spec(framework, task), 8011) == [*argv, "--a", "1"]


@pytest.mark.parametrize(
    ("framework", "task", "probe"),
    [
        ("vllm", "generate", ("/v1/completions", {"prompt": "ready?", "max_tokens": 1})),
        ("vllm", "embed", ("/v1/embeddings", {"input": ["ready?"]})),
        ("infinity", "embed", ("/v1/embeddings", {"input": ["ready?"]})),
        ("vllm", "rerank", ("/v1/rerank", {"query": "ready?", "documents": ["ready?"]})),
        ("infinity", "rerank", ("/v1/rerank", {"query": "ready?", "documents": ["ready?"]})),
    ],
)
def test_each_framework_is_probed_with_one_real_request(
    framework: str, task: str, probe: tuple[str, dict[str, Any]]
) -> None:
    path, body = probe
    assert launch.probe_request(spec(framework, task)) == (path, {"model": "m/x", **body})


def test_the_runtime_forwards_any_frameworks_operation() -> None:
    assert frameworks.framework("infinity").operations < frameworks.framework("vllm").operations
    assert sorted(ROUTES) == [
        ("GET", "/v1/models"),
        ("POST", "/detokenize"),
        ("POST", "/tokenize"),
        ("POST", "/v1/chat/completions"),
        ("POST", "/v1/completions"),
        ("POST", "/v1/embeddings"),
        ("POST", "/v1/messages"),
        ("POST", "/v1/rerank"),
        ("POST", "/v1/responses"),
        ("POST", "/v1/score"),
    ]


def test_each_schedulers_table_maps_its_own_codes() -> None:
    pbspro = schedulers.scheduler("pbspro")
    slurm = schedulers.scheduler("slurm")
    assert (pbspro.states["Q"], pbspro.states["H"], pbspro.states["E"]) == (
        "queued",
        "held",
        "exiting",
    )
    assert slurm.states["COMPLETING"] == SchedulerState.EXITING
    assert (
        set(pbspro.states.values())
        == set(slurm.states.values())
        == set(SchedulerState) - {SchedulerState.UNKNOWN}
    )
    assert schedulers.scheduler("local").list_jobs is None  # no scheduler to ask


def test_one_vocabulary_for_states() -> None:
    assert list(ModelState) == ["cold", "queued", "starting", "ready", "idle", "stopped"]
    # a job's lifecycle is the model's, where both name a state
    assert {s.value for s in ModelState} - {"cold"} <= {s.value for s in JobState}
    from inference_bundle.router.fleet.states import ModelState as RouterModelState

    assert RouterModelState is ModelState
