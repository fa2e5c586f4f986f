"""Routing that knows where a model is hot, for real: one router serves the tiny model on two
clusters of this machine, ``local`` (local processes) and ``local-slurm`` (the one-node
Slurm), with real vLLM. Warm on local-slurm and cold on local, requests on /v1 go to
local-slurm; with its server killed and its endpoint failing, they go to local, and the
X-Inference-Cluster header says so each time.

Two cold starts of vLLM on a 2-core machine (one through a Slurm job), so the module keeps
one router and sends few requests. local-slurm's endpoint fails the way a broken install
does: its interpreter path goes away, and its task fails at once (ServerStartError).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import node_runtime
import pytest
from node_runtime.server_files import ServerPaths, read_state

from inference_bundle.config.catalog import load_catalog
from inference_bundle.rendering.specs import server_spec
from inference_bundle.router.api.failover import CLUSTER_HEADER
from tests.dataplane_e2e import access_record, short_chat
from tests.e2e_router import ROOT, TINY, RunningRouter, scratch_root, start_router, stop_router

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
NAME = "placed"
CLUSTERS = ("local", "local-slurm")
# local-slurm's interpreters through a folder of their own: removing it breaks that cluster
# alone (local keeps .venvs).
SLURM_VENVS = ".venvs-slurm"


@dataclass
class Pair:
    router: RunningRouter
    root: Path

    @property
    def log(self) -> Path:
        return self.root / ".state" / f"{NAME}.log"

    def chat(self, path: str = "/v1/chat/completions") -> httpx.Response:
        answer = httpx.post(
            self.router.url + path,
            json=short_chat(TINY),
            headers={"Authorization": f"Bearer {self.router.key}"},
            timeout=600,
        )
        assert answer.status_code == 200, answer.text
        return answer


def specs(root: Path, cluster: str) -> list[node_runtime.ServerSpec]:
    """The interactive server specs of the cluster's endpoints under ``root``."""
    catalog = load_catalog(root, cluster)
    return [server_spec(entry, catalog.profile) for entry in catalog.entries]


def tiny_running(root: Path, cluster: str) -> bool:
    [spec] = [s for s in specs(root, cluster) if s.name == TINY]
    return read_state(ServerPaths.for_model(spec.state_dir, spec.name)) is not None


@pytest.fixture(scope="module")
def pair(local_slurm: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    root = scratch_root(tmp_path_factory.mktemp("placement"))
    (root / ".state" / "batches").mkdir()  # the profiles' batch_input_roots
    # Only the tiny model on local: the others would start nothing, but keep the listing short.
    for endpoint in (root / "endpoints" / "local").glob("*.yaml"):
        if endpoint.name != "tiny-chat.yaml":
            endpoint.unlink()
    os.symlink(ROOT / ".venvs", root / SLURM_VENVS)
    profile = root / "config" / "clusters" / "local-slurm.yaml"
    text = profile.read_text()
    assert "python: .venvs/vllm/bin/python" in text
    profile.write_text(text.replace(".venvs/vllm/bin/python", f"{SLURM_VENVS}/vllm/bin/python"))
    router = start_router(root, NAME, 300, extra={"clusters": list(CLUSTERS)})
    try:
        yield Pair(router, root)
    finally:
        try:
            stop_router(router)
        finally:
            for cluster in CLUSTERS:
                for spec in specs(root, cluster):
                    node_runtime.stop_server(spec)


def test_requests_on_v1_go_where_the_model_is_warm(pair: Pair) -> None:
    warmed = pair.chat("/resource_server/local-slurm/vllm/v1/chat/completions")
    assert warmed.headers[CLUSTER_HEADER] == "local-slurm"
    assert not tiny_running(pair.root, "local")  # local stays cold: the test means something
    answers = [pair.chat() for _ in range(2)]
    assert [a.headers[CLUSTER_HEADER] for a in answers] == ["local-slurm"] * 2
    assert not tiny_running(pair.root, "local")
    for answer in answers:
        assert access_record(pair.log, answer.headers["x-request-id"])["cluster"] == "local-slurm"


def test_a_killed_server_on_a_failing_endpoint_sends_requests_elsewhere(pair: Pair) -> None:
    assert tiny_running(pair.root, "local-slurm"), "the first test warms local-slurm"
    (pair.root / SLURM_VENVS).unlink()  # its next start fails: no interpreter
    [spec] = [s for s in specs(pair.root, "local-slurm") if s.name == TINY]
    node_runtime.stop_server(spec)
    assert not tiny_running(pair.root, "local-slurm")
    offset = pair.log.stat().st_size
    moved = pair.chat()  # tries local-slurm, which fails, then starts local
    assert moved.headers[CLUSTER_HEADER] == "local"
    written = pair.log.read_bytes()[offset:].decode(errors="replace")
    assert f"{TINY} on local-slurm failed (" in written, written[-3000:]
    assert "trying local" in written
    assert access_record(pair.log, moved.headers["x-request-id"])["cluster"] == "local"
    # local-slurm is passed over now: the next request goes to local at once.
    again = pair.chat()
    assert again.headers[CLUSTER_HEADER] == "local"
    assert not tiny_running(pair.root, "local-slurm")
