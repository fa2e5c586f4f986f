"""Every rendered endpoint loads with globus-compute-endpoint's own loader, as it would run."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from parsl.launchers import SimpleLauncher
from parsl.providers import LocalProvider, PBSProProvider, SlurmProvider

from inference_bundle.config.catalog import Catalog, load_catalog
from inference_bundle.rendering.render import RenderedEndpoint, render_catalog
from inference_bundle.rendering.verify import load_rendered

ROOT = Path(__file__).resolve().parents[2]
PROVIDERS = {"pbspro": PBSProProvider, "slurm": SlurmProvider, "local": LocalProvider}


def endpoints(cluster: str) -> tuple[Catalog, list[RenderedEndpoint]]:
    catalog = load_catalog(ROOT, cluster)
    if catalog.profile.network_interface:  # not on this host; see `bundle check`
        profile = catalog.profile.model_copy(update={"network_interface": None})
        catalog = Catalog(profile=profile, entries=catalog.entries)
    return catalog, render_catalog(catalog, ROOT / "templates")


def loaded(endpoint: RenderedEndpoint, scratch: Path, **opts: Any) -> Iterator[Any]:
    config = load_rendered(endpoint, scratch, **opts)
    try:
        yield config
    finally:
        config.engine.shutdown()


@pytest.mark.parametrize("cluster", ["sophia", "polaris", "example-slurm", "local", "local-slurm"])
def test_every_endpoint_loads_with_its_provider(cluster: str, tmp_path: Path) -> None:
    catalog, rendered = endpoints(cluster)
    profile = catalog.profile
    entries = {e.endpoint_name: e for e in catalog.entries}
    assert rendered
    for endpoint in rendered:
        batch = endpoint.name.endswith("-batch")
        entry = entries[endpoint.name.removesuffix("-batch")]
        for config in loaded(endpoint, tmp_path):
            engine = config.engine
            provider = engine.executor.provider
            where = f"{cluster}/{endpoint.name}"
            assert type(engine).__name__ == "GlobusComputeEngine", where
            assert engine.label == endpoint.name, where
            assert isinstance(provider, PROVIDERS[profile.scheduler]), where
            assert (provider.init_blocks, provider.min_blocks, provider.max_blocks) == (0, 0, 1)
            idle = entry.endpoint.idle_timeout_s or profile.idle_timeout_s
            max_idletime = engine._job_status_kwargs["max_idletime"]
            assert max_idletime == (profile.batch_idle_timeout_s if batch else idle + 120), where
            # The endpoint must outlive the engine's idle time, or it kills the job first.
            period = profile.engine.heartbeat_period_s
            assert config.idle_heartbeats_soft > math.ceil(max_idletime / period), where
            workers = 1 if batch else profile.engine.max_workers_per_node
            assert engine.executor.max_workers_per_node == workers, where
            assert "INFERENCE_RUNTIME_STATE_DIR" in provider.worker_init, where
            if profile.scheduler == "local":
                continue
            assert provider.account == profile.provider.account, where
            assert provider.walltime == (entry.endpoint.walltime or profile.provider.walltime)
            assert provider.nodes_per_block == entry.endpoint.nodes, where
            if profile.scheduler == "pbspro":
                assert provider.queue == profile.provider.queue, where
                assert provider.select_options == profile.provider.select_options, where
                assert "filesystems=home:eagle" in provider.scheduler_options, where
            else:
                assert provider.partition == profile.provider.partition, where
            if entry.endpoint.nodes > 1:
                assert isinstance(provider.launcher, SimpleLauncher), where
                assert 'ray" start --head' in provider.worker_init, where


def test_sophia_facts(tmp_path: Path) -> None:
    """The settings the ALCF deployment runs Sophia with (docs/platform-notes.md)."""
    _, rendered = endpoints("sophia")
    by_name = {e.name: e for e in rendered}
    for config in loaded(by_name["sophia-meta-llama-3-1-405b-instruct"], tmp_path):
        provider = config.engine.executor.provider
        assert (provider.account, provider.queue) == ("argonne_tpc", "by-node")
        assert provider.select_options == "ngpus=8"
        assert provider.walltime == "24:00:00"
        assert provider.nodes_per_block == 4
        assert config.engine._job_status_kwargs["max_idletime"] == 7320
        assert "cp -r" in provider.worker_init and "/raid/argonne_tpc" in provider.worker_init


def test_user_walltime_option(tmp_path: Path) -> None:
    _, rendered = endpoints("sophia")
    endpoint = next(e for e in rendered if e.name == "sophia-meta-llama-3-1-8b-instruct")
    for config in loaded(endpoint, tmp_path, user_opts={"walltime": "02:30:00"}):
        assert config.engine.executor.provider.walltime == "02:30:00"
    with pytest.raises(jsonschema.ValidationError):
        load_rendered(endpoint, tmp_path, user_opts={"walltime": "forever"})
    with pytest.raises(jsonschema.ValidationError):
        load_rendered(endpoint, tmp_path, user_opts={"queue": "debug"})


def test_replica_option(tmp_path: Path) -> None:
    # meta-llama-3-1-8b-instruct may have 3 replicas: indexes 0..5 (a walltime successor
    # beside each). Each loads as its own engine, its job told which replica it serves.
    _, rendered = endpoints("sophia")
    endpoint = next(e for e in rendered if e.name == "sophia-meta-llama-3-1-8b-instruct")
    for config in loaded(endpoint, tmp_path, user_opts={"replica": 5}):
        assert "export BUNDLE_REPLICA=5\n" in config.engine.executor.provider.worker_init
    for config in loaded(endpoint, tmp_path):  # the endpoint as it always was: replica 0
        assert "export BUNDLE_REPLICA=0\n" in config.engine.executor.provider.worker_init
    for wrong in (6, -1, "1"):
        with pytest.raises(jsonschema.ValidationError):
            load_rendered(endpoint, tmp_path, user_opts={"replica": wrong})
