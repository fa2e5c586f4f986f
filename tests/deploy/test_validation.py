"""Each catalog rule: a broken file gives one line naming the file, the field and the fix."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from inference_bundle.config.catalog import load_all, load_catalog
from inference_bundle.config.problems import CatalogError
from inference_bundle.rendering.render import render_catalog

Edit = Callable[[str, str, str], Path]
LLAMA8 = "endpoints/sophia/meta-llama-3-1-8b-instruct.yaml"
EMBED = "endpoints/sophia/nv-embed-v2.yaml"
SOPHIA = "config/clusters/sophia.yaml"


def problems(repo: Path, cluster: str = "sophia") -> list[str]:
    with pytest.raises(CatalogError) as caught:
        load_catalog(repo, cluster)
    return [str(p) for p in caught.value.problems]


def test_the_shipped_catalog_is_valid() -> None:
    catalogs = load_all(Path(__file__).resolve().parents[2])
    assert {c.cluster for c in catalogs} == {
        "sophia",
        "polaris",
        "example-slurm",
        "local",
        "local-slurm",
    }


def test_unknown_framework(repo: Path, edit: Edit) -> None:
    edit(LLAMA8, "framework: vllm", "framework: tgi")
    assert problems(repo) == [f"{LLAMA8}: framework: must be 'vllm' or 'infinity' (got 'tgi')"]


def test_tensor_parallel_larger_than_the_node(repo: Path, edit: Edit) -> None:
    edit(LLAMA8, "tensor_parallel: 4", "tensor_parallel: 16")
    [line] = problems(repo)
    assert line.startswith(f"{LLAMA8}: tensor_parallel: TP 16 × PP 1 = 16 GPUs")
    assert "8 GPUs × 1 node(s) on sophia" in line


def test_more_gpus_than_a_node_has(repo: Path, edit: Edit) -> None:
    edit(LLAMA8, "gpus: 8", "gpus: 16")
    assert problems(repo) == [
        f"{LLAMA8}: gpus: is 16 but sophia nodes have 8 GPUs; lower gpus or add nodes"
    ]


def test_batch_needs_a_single_node(repo: Path, edit: Edit) -> None:
    path = "endpoints/sophia/meta-llama-3-1-405b-instruct.yaml"
    edit(path, "batch: false", "batch: true")
    assert problems(repo) == [
        f"{path}: batch: batches need a single-node model but nodes is 4; set batch: false"
    ]


def test_a_reranker_takes_no_batches(repo: Path, edit: Edit) -> None:
    path = "endpoints/local/tiny-reranker.yaml"
    edit(path, "batch: false", "batch: true")
    assert problems(repo, "local") == [
        f"{path}: batch: batches take generation and embedding models, not rerank; set batch: false"
    ]


def test_infinity_serves_embeddings_only(repo: Path, edit: Edit) -> None:
    edit(EMBED, "kind: embedding", "kind: chat")
    assert problems(repo) == [
        f"{EMBED}: framework: infinity serves embedding or rerank models only, but kind is chat; "
        "use vllm"
    ]


@pytest.mark.parametrize("option", ["tool_call_parser: hermes", "max_num_seqs: 16"])
def test_vllm_options_on_infinity(repo: Path, edit: Edit, option: str) -> None:
    edit(EMBED, "trust_remote_code: true", f"trust_remote_code: true\n  {option}")
    name = option.split(":")[0]
    assert problems(repo) == [
        f"{EMBED}: server_args.{name}: is a vLLM option; remove it for infinity"
    ]


def test_slug_must_be_lower_case(repo: Path) -> None:
    source = repo / LLAMA8
    source.rename(source.with_name("Llama_8B.yaml"))
    [line] = problems(repo)
    assert line.startswith("endpoints/sophia/Llama_8B.yaml: (file name): use lower-case")


def test_served_names_unique_within_a_cluster(repo: Path, edit: Edit) -> None:
    path = "endpoints/sophia/meta-llama-3-8b-instruct.yaml"
    edit(path, "framework:", "aliases: [meta-llama/Meta-Llama-3.1-8B-Instruct]\nframework:")
    assert problems(repo) == [
        f"{path}: aliases[0]: 'meta-llama/Meta-Llama-3.1-8B-Instruct' is already served by {LLAMA8}"
    ]


def test_same_name_on_two_clusters_is_fine(repo: Path) -> None:
    polaris = {e.endpoint.name for e in load_catalog(repo, "polaris").entries}
    sophia = {e.endpoint.name for e in load_catalog(repo, "sophia").entries}
    assert "meta-llama/Meta-Llama-3.1-8B-Instruct" in polaris & sophia


def test_disabled_needs_a_reason(repo: Path, edit: Edit) -> None:
    edit(LLAMA8, "batch: true", "batch: true\nenabled: false")
    assert problems(repo) == [
        f"{LLAMA8}: disabled_reason: a disabled endpoint needs a reason users can read; add one"
    ]


def test_reason_without_disabling(repo: Path, edit: Edit) -> None:
    edit(LLAMA8, "batch: true", "batch: true\ndisabled_reason: maintenance")
    [line] = problems(repo)
    assert line == (
        f"{LLAMA8}: disabled_reason: is set but enabled is true; remove it or set enabled: false"
    )


def test_unknown_field_lists_the_valid_ones(repo: Path, edit: Edit) -> None:
    edit(LLAMA8, "batch: true", "bacth: true")
    [line] = problems(repo)
    assert line.startswith(f"{LLAMA8}: bacth: unknown field; valid fields here are: aliases, batch")


def test_unknown_nested_field(repo: Path, edit: Edit) -> None:
    edit(LLAMA8, "max_model_len:", "max_len:")
    [line] = problems(repo)
    assert line.startswith(f"{LLAMA8}: server_args.max_len: unknown field;")
    assert "max_model_len" in line


def test_missing_required_field(repo: Path, edit: Edit) -> None:
    edit(LLAMA8, "kind: chat\n", "")
    assert problems(repo) == [f"{LLAMA8}: kind: required field is missing; add it"]


def test_bad_walltime(repo: Path, edit: Edit) -> None:
    edit(LLAMA8, "batch: true", "batch: true\nwalltime: 2 hours")
    [line] = problems(repo)
    assert line.startswith(f"{LLAMA8}: walltime: String should match pattern")


def test_yaml_syntax_error_names_the_line(repo: Path, edit: Edit) -> None:
    edit(LLAMA8, "kind: chat", "kind: [chat")
    [line] = problems(repo)
    assert line.startswith(f"{LLAMA8}: line ")
    assert "invalid YAML" in line


def test_duplicate_key(repo: Path, edit: Edit) -> None:
    edit(LLAMA8, "batch: true", "batch: true\nbatch: false")
    [line] = problems(repo)
    assert "key 'batch' appears twice" in line
    assert line.startswith(f"{LLAMA8}: line 11: invalid YAML: key")
    assert "(first on line 10)" in line


def test_multi_node_needs_the_profile_settings(repo: Path, edit: Edit) -> None:
    path = "endpoints/local/all-minilm-l6-v2.yaml"
    edit(path, "gpus: 0", "gpus: 0\nnodes: 2")
    assert problems(repo, "local") == [
        f"{path}: nodes: is 2 but local has no multi_node settings; use 1 node"
    ]


def test_gpus_on_a_cpu_cluster(repo: Path, edit: Edit) -> None:
    path = "endpoints/local/tiny-chat.yaml"
    edit(path, "gpus: 0", "gpus: 1")
    assert problems(repo, "local") == [f"{path}: gpus: is 1 but local has no GPUs; set 0"]


def test_pbs_profile_needs_account_and_queue(repo: Path, edit: Edit) -> None:
    edit(SOPHIA, "  account: argonne_tpc\n", "")
    assert problems(repo) == [
        f"{SOPHIA}: provider.account: is required for a PBS Pro cluster; set it"
    ]


def test_profile_name_matches_its_file(repo: Path, edit: Edit) -> None:
    edit(SOPHIA, "name: sophia", "name: sofia")
    assert problems(repo) == [f"{SOPHIA}: name: is 'sofia' but the file is sophia.yaml; match them"]


def test_endpoint_folder_without_profile(repo: Path) -> None:
    (repo / "endpoints" / "aurora").mkdir()
    with pytest.raises(CatalogError) as caught:
        load_all(repo)
    assert [str(p) for p in caught.value.problems] == [
        "endpoints/aurora: (folder): no profile config/clusters/aurora.yaml; add one"
    ]


def test_jinja_in_profile_text(repo: Path, edit: Edit) -> None:
    edit(SOPHIA, "module load conda", "module load {{ conda }}")
    with pytest.raises(CatalogError) as caught:
        render_catalog(load_catalog(repo, "sophia"), repo / "templates")
    [line] = [str(p) for p in caught.value.problems]
    assert line.startswith(f"{SOPHIA}: worker_init: contains {{{{")


def test_every_problem_in_one_pass(repo: Path, edit: Edit) -> None:
    edit(LLAMA8, "framework: vllm", "framework: tgi")
    edit(LLAMA8, "tensor_parallel: 4", "tensor_parallel: 16")
    edit(EMBED, "kind: embedding", "kind: vision")
    found = problems(repo)
    assert [line.split(": ")[:2] for line in found] == [
        [LLAMA8, "framework"],
        [LLAMA8, "tensor_parallel"],
        [EMBED, "framework"],
    ]


def test_make_check_style_output(repo: Path, edit: Edit) -> None:
    """The command an operator runs: non-zero, one line a problem, no traceback."""
    edit(LLAMA8, "framework: vllm", "framework: tgi")
    edit(LLAMA8, "tensor_parallel: 4", "tensor_parallel: 16")
    run = subprocess.run(
        [sys.executable, "-m", "inference_bundle", "--root", str(repo), "check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 1
    assert "Traceback" not in run.stderr
    lines = run.stderr.splitlines()
    assert lines[0] == f"{LLAMA8}: framework: must be 'vllm' or 'infinity' (got 'tgi')"
    assert lines[1].startswith(f"{LLAMA8}: tensor_parallel: TP 16")
    assert lines[2] == "2 problems found; nothing was written."


# --- The scheduler picks the provider's shape ---------------------------------------------

EXAMPLE_SLURM = "config/clusters/example-slurm.yaml"


def test_a_slurm_field_under_a_pbs_profile(repo: Path, edit: Edit) -> None:
    edit(SOPHIA, "  queue: by-node\n", "  queue: by-node\n  partition: gpu\n")
    assert problems(repo) == [
        f"{SOPHIA}: provider.partition: unknown field; valid fields here are: account, "
        "cpus_per_node, launcher, launcher_prepend, queue, scheduler_options, select_options, "
        "walltime"
    ]


def test_a_pbs_field_under_a_slurm_profile(repo: Path, edit: Edit) -> None:
    edit(EXAMPLE_SLURM, "  partition: gpu\n", "  partition: gpu\n  select_options: ngpus=4\n")
    assert problems(repo, "example-slurm") == [
        f"{EXAMPLE_SLURM}: provider.select_options: unknown field; valid fields here are: "
        "account, cpus_per_node, exclusive, launcher, launcher_prepend, partition, "
        "scheduler_options, walltime"
    ]


def test_a_scheduler_field_under_the_local_profile(repo: Path, edit: Edit) -> None:
    path = "config/clusters/local.yaml"
    edit(path, "  launcher: SingleNodeLauncher\n", "  launcher: SingleNodeLauncher\n  account: x\n")
    assert problems(repo, "local") == [
        f"{path}: provider.account: unknown field; valid fields here are: launcher, "
        "launcher_prepend, walltime"
    ]


def test_an_empty_pbs_queue_is_a_missing_one(repo: Path, edit: Edit) -> None:
    edit(SOPHIA, "queue: by-node", 'queue: ""')
    assert problems(repo) == [
        f"{SOPHIA}: provider.queue: is required for a PBS Pro cluster; set it"
    ]


def test_unknown_scheduler(repo: Path, edit: Edit) -> None:
    edit(SOPHIA, "scheduler: pbspro", "scheduler: no-such-scheduler")
    assert problems(repo) == [
        f"{SOPHIA}: scheduler: must be 'pbspro', 'slurm' or 'local' (got 'no-such-scheduler')"
    ]


def test_missing_scheduler(repo: Path, edit: Edit) -> None:
    edit(SOPHIA, "scheduler: pbspro\n", "")
    assert problems(repo) == [f"{SOPHIA}: scheduler: required field is missing; add it"]


def test_replicas_min_above_max(repo: Path, edit: Edit) -> None:
    edit(LLAMA8, "  min: 0\n  max: 3", "  min: 3\n  max: 2")
    assert problems(repo) == [f"{LLAMA8}: replicas.min: is 3 but replicas.max is 2; lower min"]


def test_replicas_beyond_what_the_cluster_allows(repo: Path, edit: Edit) -> None:
    edit(LLAMA8, "  max: 3", "  max: 9")
    assert problems(repo) == [
        f"{LLAMA8}: replicas.max: is 9 but sophia lets one model hold at most 4 node(s) "
        "(its profile's max_replicas); lower it"
    ]


def test_a_target_of_zero_requests(repo: Path, edit: Edit) -> None:
    edit(LLAMA8, "replicas:", "target_in_flight: 0\nreplicas:")
    [line] = problems(repo)
    assert line.startswith(f"{LLAMA8}: target_in_flight: ")
    assert "greater than or equal to 1" in line, line


def test_replicas_take_only_min_and_max(repo: Path, edit: Edit) -> None:
    edit(LLAMA8, "  max: 3", "  max: 3\n  most: 5")
    [line] = problems(repo)
    assert line.startswith(f"{LLAMA8}: replicas.most: ")
