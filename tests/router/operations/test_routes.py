"""The route table: names and aliases to endpoints, and the errors users get otherwise."""

from __future__ import annotations

from pathlib import Path

import pytest

from inference_bundle.config.catalog import load_all
from inference_bundle.router.errors import APIError
from inference_bundle.router.routes import RouteTable

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def table() -> RouteTable:
    return RouteTable(load_all(ROOT))


def error(table: RouteTable, *args: str | None) -> APIError:
    with pytest.raises(APIError) as caught:
        table.lookup(*args)  # type: ignore[arg-type]
    return caught.value


def test_model_and_alias_reach_the_same_endpoint(table: RouteTable) -> None:
    model = table.lookup("argonne-private/AuroraGPT-7B", "sophia", "vllm")
    alias = table.lookup("auroragpt/auroragpt-0.1-chkpt-7B-Base", "sophia", "vllm")
    assert model is alias
    assert model.endpoint_name == "sophia-auroragpt-7b"
    assert model.spec.name == "argonne-private/AuroraGPT-7B"


def test_one_base_url_routes_across_clusters(table: RouteTable) -> None:
    assert table.lookup("local/tiny-llama").cluster == "local"
    assert table.lookup("Qwen/Qwen2-VL-72B-Instruct").cluster == "sophia"


def test_unknown_model_lists_the_closest_names(table: RouteTable) -> None:
    err = error(table, "meta-llama/Meta-Llama-3.1-8B-Instruc", "sophia", "vllm")
    assert (err.status, err.code, err.param) == (404, "model_not_found", "model")
    assert "Did you mean: meta-llama/Meta-Llama-3.1-8B-Instruct" in err.message


def test_embedding_model_on_vllm_says_where_it_is(table: RouteTable) -> None:
    err = error(table, "nvidia/NV-Embed-v2", "sophia", "vllm")
    assert (err.status, err.code) == (400, "wrong_framework")
    assert "/resource_server/sophia/infinity/v1" in err.message


def test_disabled_model_says_why(table: RouteTable) -> None:
    err = error(table, "deepseek-ai/DeepSeek-R1", "sophia", "vllm")
    assert (err.status, err.code) == (404, "model_disabled")
    assert "Not supported natively on A100" in err.message


def test_unknown_cluster(table: RouteTable) -> None:
    err = error(table, "local/tiny-llama", "aurora", "vllm")
    assert (
        err.status == 404
        and "Clusters: example-slurm, local, local-slurm, polaris, sophia" in err.message
    )


def test_error_body_is_openais_shape(table: RouteTable) -> None:
    body = error(table, "nope/nope", None, None).body()
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["type"] == "invalid_request_error"


def test_routes_are_listed_once_each(table: RouteTable) -> None:
    sophia = table.routes("sophia")
    assert len(sophia) == 25
    assert len({r.endpoint_name for r in sophia}) == 25
