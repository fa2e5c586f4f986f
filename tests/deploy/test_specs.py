"""Server specs built from the catalog are the node runtime's own, with every field written;
the timeouts an endpoint file may set default to its cluster profile's."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from node_runtime.spec import ServerSpec

from inference_bundle.config.catalog import Endpoint, load_all, load_catalog
from inference_bundle.config.problems import CatalogError
from inference_bundle.config.profiles import LocalProfile
from inference_bundle.rendering import specs
from inference_bundle.rendering.specs import CATALOG_FIELDS, server_spec

ROOT = Path(__file__).resolve().parents[2]
Edit = Callable[[str, str, str], Path]
TINY_CHAT = "endpoints/local/tiny-chat.yaml"
LOCAL = "config/clusters/local.yaml"
SOPHIA = "config/clusters/sophia.yaml"


def test_every_endpoint_gives_a_spec_the_node_reads_back_equal() -> None:
    for catalog in load_all(ROOT):
        for entry in catalog.entries:  # disabled ones too: the router builds their routes
            spec = server_spec(entry, catalog.profile)
            assert spec.name == entry.endpoint.name
            assert ServerSpec.from_dict(spec.to_dict()) == spec


def test_every_field_of_the_nodes_spec_is_written(monkeypatch: pytest.MonkeyPatch) -> None:
    """None is left to the node's defaults: a field the node adds fails here until the
    router writes it (and, if operators should set it, the catalog takes it)."""
    written: list[set[str]] = []

    def recording(**fields: Any) -> ServerSpec:
        written.append(set(fields))
        return ServerSpec(**fields)

    monkeypatch.setattr(specs, "ServerSpec", recording)
    catalog = load_catalog(ROOT, "local")
    for entry in catalog.entries:
        server_spec(entry, catalog.profile)
    node_fields = {f.name for f in dataclasses.fields(ServerSpec)}
    assert written and all(fields == node_fields for fields in written)


def test_the_spec_timeouts_are_fields_of_the_endpoint_and_the_profile() -> None:
    node_fields = {f.name for f in dataclasses.fields(ServerSpec)}
    assert set(CATALOG_FIELDS) <= node_fields
    assert set(CATALOG_FIELDS) <= set(Endpoint.model_fields)
    assert set(CATALOG_FIELDS) <= set(LocalProfile.model_fields)
    # The rest are the catalog's in other words (model, kind, server_args, runtimes, paths)
    # or the router's to fix: the port a node picks, the role a batch job changes, the
    # replica each task names.
    assert node_fields - set(CATALOG_FIELDS) == {
        "name", "framework", "task", "weights", "python", "state_dir", "args", "env", "port",
        "role", "replica",
    }  # fmt: skip


def local_spec(root: Path, slug: str) -> ServerSpec:
    catalog = load_catalog(root, "local")
    [entry] = [e for e in catalog.entries if e.slug == slug]
    return server_spec(entry, catalog.profile)


def timeouts(spec: ServerSpec) -> dict[str, float]:
    return {name: getattr(spec, name) for name in CATALOG_FIELDS}


def test_the_profile_gives_the_defaults_and_an_endpoint_its_own(repo: Path, edit: Edit) -> None:
    assert timeouts(local_spec(repo, "tiny-chat")) == {
        "idle_timeout_s": 7200.0,
        "start_timeout_s": 300.0,
        "request_timeout_s": 600.0,
        "stop_grace_s": 10.0,
    }
    edit(LOCAL, "request_timeout_s: 600", "request_timeout_s: 1800")
    own = "idle_timeout_s: 60\nstart_timeout_s: 120\nrequest_timeout_s: 2\nstop_grace_s: 0\n"
    edit(TINY_CHAT, "batch: true\n", "batch: true\n" + own)
    assert timeouts(local_spec(repo, "tiny-chat")) == {
        "idle_timeout_s": 60.0,
        "start_timeout_s": 120.0,
        "request_timeout_s": 2.0,
        "stop_grace_s": 0.0,  # zero is a setting, not "unset"
    }
    assert timeouts(local_spec(repo, "tiny-vision"))["request_timeout_s"] == 1800.0
    # What a task carries: the plain dict the node's entry point reads.
    assert local_spec(repo, "tiny-chat").to_dict()["request_timeout_s"] == 2.0


def test_a_profile_without_the_new_timeouts_takes_the_built_in_defaults(
    repo: Path, edit: Edit
) -> None:
    edit(LOCAL, "request_timeout_s: 600\nstop_grace_s: 10\n", "")
    spec = local_spec(repo, "tiny-chat")
    assert (spec.request_timeout_s, spec.stop_grace_s) == (600.0, 10.0)


def problems(repo: Path, cluster: str) -> list[str]:
    with pytest.raises(CatalogError) as caught:
        load_catalog(repo, cluster)
    return [str(p) for p in caught.value.problems]


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("request_timeout_s: 0", "Input should be greater than or equal to 1 (got 0)"),
        (
            "request_timeout_s: 10m",
            "Input should be a valid integer, unable to parse string as an integer (got '10m')",
        ),
        ("stop_grace_s: -1", "Input should be greater than or equal to 0 (got -1)"),
        ("start_timeout_s: 0", "Input should be greater than or equal to 1 (got 0)"),
    ],
)
def test_a_bad_timeout_in_an_endpoint_names_the_file_and_field(
    repo: Path, edit: Edit, setting: str, message: str
) -> None:
    edit(TINY_CHAT, "batch: true\n", f"batch: true\n{setting}\n")
    field = setting.partition(":")[0]
    assert problems(repo, "local") == [f"{TINY_CHAT}: {field}: {message}"]


def test_a_bad_timeout_in_a_profile_names_the_file_and_field(repo: Path, edit: Edit) -> None:
    edit(SOPHIA, "request_timeout_s: 600", "request_timeout_s: 0.5")
    edit(SOPHIA, "stop_grace_s: 10", "stop_grace_s: -1")
    assert problems(repo, "sophia") == [
        f"{SOPHIA}: request_timeout_s: Input should be a valid integer, got a number with a "
        "fractional part (got 0.5)",
        f"{SOPHIA}: stop_grace_s: Input should be greater than or equal to 0 (got -1)",
    ]


def test_a_spec_the_node_would_refuse_names_the_endpoint_file(repo: Path, edit: Edit) -> None:
    # "~" is not expanded on a node: the spec would fail there, on the first request.
    edit(LOCAL, "python: .venvs/vllm/bin/python", "python: ~/vllm/bin/python")
    with pytest.raises(CatalogError) as caught:
        local_spec(repo, "tiny-chat")
    assert [str(p) for p in caught.value.problems] == [
        f"{TINY_CHAT}: (server spec): server spec field 'python' is '~/vllm/bin/python': "
        "give an absolute path"
    ]


def entry_spec(cluster: str, slug: str) -> ServerSpec:
    catalog = load_catalog(ROOT, cluster)
    entry = next(e for e in catalog.entries if e.slug == slug)
    return server_spec(entry, catalog.profile)


def test_four_node_model_uses_ray_and_staged_weights() -> None:
    spec = entry_spec("sophia", "meta-llama-3-1-405b-instruct")
    args = " ".join(spec.args)
    assert "--tensor-parallel-size 8 --pipeline-parallel-size 4" in args
    assert "--distributed-executor-backend ray" in args
    assert "--enable-auto-tool-choice --tool-call-parser llama3_json" in args
    assert spec.weights == "/raid/argonne_tpc/model_weights/Meta-Llama-3.1-405B-Instruct"
    assert spec.idle_timeout_s == 7200
    assert spec.task == "generate"


def test_local_specs_point_into_the_checkout() -> None:
    chat = entry_spec("local", "tiny-chat")
    assert chat.weights == str(ROOT / ".state/models/tiny-llama")
    assert chat.python == str(ROOT / ".venvs/vllm/bin/python")
    assert chat.args == (
        "--dtype", "float32", "--max-model-len", "256",
        "--enable-auto-tool-choice", "--tool-call-parser", "hermes",
        "--enforce-eager",
    )  # fmt: skip
    assert chat.env["VLLM_CACHE_ROOT"] == str(ROOT / ".state/cache/vllm")
    embed = entry_spec("local", "all-minilm-l6-v2")
    assert embed.task == "embed" and embed.framework == "infinity"
    assert embed.args[:4] == ("--engine", "torch", "--device", "cpu")
