"""One entry per framework says what it serves and which flags it takes; errors say their kind."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import get_args

import node_runtime.frameworks as node_frameworks
import pytest

from inference_bundle.config.catalog import load_catalog
from inference_bundle.config.frameworks import FRAMEWORKS
from inference_bundle.config.kinds import Framework
from inference_bundle.config.operations import MODELS_PATH
from inference_bundle.config.problems import CatalogError, ConfigError, RegistryError
from inference_bundle.config.registry import load_registry
from inference_bundle.rendering.specs import server_spec

ROOT = Path(__file__).resolve().parents[2]


def test_every_framework_name_has_its_entry() -> None:
    assert list(FRAMEWORKS) == list(get_args(Framework))
    assert all(info.name == name for name, info in FRAMEWORKS.items())


def test_the_router_serves_the_paths_the_operations_list() -> None:
    assert {name: info.paths for name, info in FRAMEWORKS.items()} == {
        "vllm": (
            "/v1/chat/completions",
            "/v1/completions",
            "/v1/responses",
            "/v1/messages",
            "/tokenize",
            "/detokenize",
            "/v1/embeddings",
            "/v1/rerank",
            "/v1/score",
            "/v1/models",
        ),
        "infinity": ("/v1/embeddings", "/v1/rerank", "/v1/models"),
    }
    assert FRAMEWORKS["vllm"].base_path("local") == "/resource_server/local/vllm/v1"


def test_specs_take_their_flags_from_the_entry(monkeypatch: pytest.MonkeyPatch) -> None:
    catalog = load_catalog(ROOT, "local")
    entry = next(e for e in catalog.entries if e.endpoint.framework == "infinity")
    flagged = dataclasses.replace(FRAMEWORKS["infinity"], server_flags=lambda ep, p: ["--x"])
    monkeypatch.setitem(FRAMEWORKS, "infinity", flagged)
    assert server_spec(entry, catalog.profile).args == ("--x",)


def test_the_catalog_rules_read_the_entries(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = "endpoints/local/all-minilm-l6-v2.yaml"
    (repo / path).write_text((repo / path).read_text().replace("kind: embedding", "kind: chat"))
    with pytest.raises(CatalogError) as caught:
        load_catalog(repo, "local")
    assert [str(p) for p in caught.value.problems] == [
        f"{path}: framework: infinity serves embedding or rerank models only, but kind is "
        "chat; use vllm"
    ]
    wider = dataclasses.replace(FRAMEWORKS["infinity"], kinds=("embedding", "chat"))
    monkeypatch.setitem(FRAMEWORKS, "infinity", wider)
    assert load_catalog(repo, "local").entries


def test_a_missing_registry_is_a_registry_error(tmp_path: Path) -> None:
    with pytest.raises(RegistryError) as caught:
        load_registry(tmp_path, "sophia")
    assert isinstance(caught.value, ConfigError) and not isinstance(caught.value, CatalogError)
    assert [str(p) for p in caught.value.problems] == [
        "config/registry/sophia.yaml: (file): missing; "
        "run `make deploy CLUSTER=sophia` to create it"
    ]


def test_the_config_and_the_node_runtime_know_the_same_frameworks() -> None:
    """A framework added on one side only would render endpoints no node can serve."""
    assert sorted(FRAMEWORKS) == sorted(node_frameworks.names())
    for name, info in FRAMEWORKS.items():
        node = node_frameworks.framework(name).operations
        # Both ways: every operation the router sends a framework, the node forwards as a
        # POST (the model list as a GET), and the node forwards nothing the router never sends.
        expected = {("POST", path) for path in info.paths if path != MODELS_PATH}
        assert node == expected | {("GET", MODELS_PATH)}, name
