"""Two replicas of a real vLLM model on two "nodes": each its own network and UTS namespace.

The local cluster's profile starts a replica's worker pool in netns ``bundle-rp<index>``
under hostname ``node-rp<index>``: its launcher prefix names the namespace by the job's
``BUNDLE_REPLICA``, as a scheduler puts each job on a node of its own. Through the real
engine executor (one engine a replica), the real node runtime and vLLM, and the router's
replica control (min 2: both are started with the router).
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from node_runtime.server import stop_recorded
from node_runtime.server_files import ServerPaths, exclusive_lock, read_state

from inference_bundle.config.catalog import load_catalog
from tests.dataplane_e2e import (
    CHAT,
    TimedStream,
    access_record,
    long_chat,
    post,
    short_chat,
    timed_stream,
)
from tests.e2e_router import TINY, RunningRouter, scratch_root, stop_router
from tests.network_namespace import NetworkNamespace, network_namespace
from tests.remote_node import CLUSTER, start_router_on
from tests.waiting import wait_until

# Two cold vLLM starts side by side on this machine's two cores.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]
REPLICA = "$BUNDLE_REPLICA"


@dataclass(frozen=True)
class TwoNodes:
    router: RunningRouter
    namespaces: tuple[NetworkNamespace, NetworkNamespace]
    root: Path

    @property
    def log(self) -> Path:
        return self.root / ".state" / "replicas.log"

    def state_dir(self, index: int) -> Path:
        profile = load_catalog(self.root, CLUSTER).profile
        return Path(profile.paths.state_dir) / self.namespaces[index].hostname

    def server_group(self, index: int) -> int:
        """The process group of the chat model's server on node ``index``."""
        for folder in self.state_dir(index).glob("*"):
            state = read_state(ServerPaths(folder))
            if state is not None and state.name == TINY:
                return state.pgid
        raise AssertionError(f"no {TINY} server on {self.namespaces[index].hostname}")

    def replicas(self) -> list[dict[str, Any]]:
        return list(self.model()["replicas"])

    def connected_servers(self) -> list[dict[str, Any]]:
        return list(self.model()["connected_servers"])

    def model(self) -> dict[str, Any]:
        listing = httpx.get(
            self.router.url + "/resource_server/list-endpoints",
            headers={"Authorization": f"Bearer {self.router.key}"},
            timeout=30,
        ).json()
        models = listing["clusters"][CLUSTER]["frameworks"]["vllm"]["models"]
        [model] = [m for m in models if m["id"] == TINY]
        return dict(model)

    def connected_hosts(self) -> list[str]:
        return sorted(r["host"] for r in self.replicas() if r["state"] == "ready")


def replica_profile(root: Path, first: NetworkNamespace) -> None:
    """Each replica's worker pool in netns bundle-rp<index>, the chat model at 2 replicas."""
    path = root / "config" / "clusters" / f"{CLUSTER}.yaml"
    profile = yaml.safe_load(path.read_text())
    # The first namespace's prefix with its index made the job's: bundle-rp0 -> bundle-rp$...
    prefix = first.shell_prefix()
    assert first.name in prefix and prefix.endswith(first.hostname)
    prefix = prefix.replace(first.name, f"bundle-rp{REPLICA}")
    prefix = prefix.removesuffix(first.hostname) + f"node-rp{REPLICA}"
    profile["provider"]["launcher"] = "WrappedLauncher"
    profile["provider"]["launcher_prepend"] = prefix
    profile["network_interface"] = first.root_veth  # the interchanges listen there
    profile["max_replicas"] = 2
    path.write_text(yaml.safe_dump(profile, sort_keys=False))
    endpoint = root / "endpoints" / CLUSTER / "tiny-chat.yaml"
    endpoint.write_text(endpoint.read_text() + yaml.safe_dump({"replicas": {"min": 2, "max": 2}}))


def settings(url: str) -> dict[str, Any]:
    return {
        "data_plane": {"dial_url": url},
        "replicas": {"lost_after_s": 5},
    }


@pytest.fixture(scope="module")
def nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TwoNodes]:
    tmp = tmp_path_factory.mktemp("two-nodes")
    with network_namespace("rp0") as first, network_namespace("rp1") as second:
        for namespace in (first, second):
            # Each node reaches every address of the router's host (the interchanges listen
            # on the first veth's), as a site's nodes reach its gateway.
            subprocess.run(
                ["ip", "-n", namespace.name, "route", "add", "default", "via", namespace.root_ip],
                check=True,
                capture_output=True,
            )
        root = scratch_root(tmp)
        (root / ".state" / "batches").mkdir()
        replica_profile(root, first)
        router = start_router_on(root, "replicas", first.root_ip, settings)
        running = TwoNodes(router, (first, second), root)
        try:
            yield running
        finally:
            stop_router(router)
            for index in (0, 1):  # the nodes' servers, as the node runtime stops them
                for folder in running.state_dir(index).glob("*"):
                    paths = ServerPaths(folder)
                    with exclusive_lock(paths.lock, 60, f"stopping the server in {folder}"):
                        state = read_state(paths)
                        if state is not None:
                            stop_recorded(paths, state, "the test's nodes are going away")


def both_ready(nodes: TwoNodes) -> None:
    wait_until(
        lambda: nodes.connected_hosts() == ["node-rp0", "node-rp1"],
        lambda: f"both replicas ready: {nodes.replicas()}",
        timeout_s=900,
        every_s=2,
    )


def test_requests_spread_over_two_nodes_whole_and_streamed(nodes: TwoNodes) -> None:
    both_ready(nodes)
    url, key = nodes.router.url, nodes.router.key
    servers = {r["server"]: r["host"] for r in nodes.replicas()}

    def whole(_: int) -> tuple[str, str]:
        answer = post(url, key, CHAT, short_chat(TINY))
        assert answer.status_code == 200, answer.text
        return "whole", answer.headers["x-request-id"]

    def streamed(_: int) -> tuple[str, str]:
        stream = timed_stream(url, key, CHAT, long_chat(TINY, 24))
        assert stream.status == 200 and stream.events[-1] == "[DONE]", stream.events[-3:]
        return "stream", stream.request_id

    with ThreadPoolExecutor(8) as pool:
        done = list(pool.map(whole, range(8))) + list(pool.map(streamed, range(8)))
    answered: dict[str, set[str]] = {"node-rp0": set(), "node-rp1": set()}
    for kind, request_id in done:
        record = access_record(nodes.log, request_id)
        assert record["via"] == "connection", record
        answered[servers[record["server"]]].add(kind)
    # Each node answered whole and streamed requests.
    assert answered == {"node-rp0": {"whole", "stream"}, "node-rp1": {"whole", "stream"}}
    # Each server reports its own load (vLLM's running and waiting) with its heartbeats.
    wait_until(
        lambda: (
            all(s["server_waiting"] == 0 for s in nodes.connected_servers())
            and len(nodes.connected_servers()) == 2
        ),
        lambda: f"the servers' load reports: {nodes.connected_servers()}",
        timeout_s=60,
        every_s=1,
    )


def test_a_killed_server_loses_only_its_own_requests(nodes: TwoNodes) -> None:
    both_ready(nodes)
    url, key = nodes.router.url, nodes.router.key
    victim = nodes.server_group(1)
    servers = {r["server"]: r["host"] for r in nodes.replicas()}
    frozen = threading.Event()
    begun: list[int] = []
    lock = threading.Lock()

    def freeze_once(count: int, data: str) -> bool:
        # Once every stream has begun, node-rp1's server stops where it is: its streams are
        # then cut mid-way when it is killed below.
        if count == 1:
            with lock:
                begun.append(1)
                if len(begun) == 6:
                    os.killpg(victim, signal.SIGSTOP)
                    frozen.set()
        return True

    def stream(_: int) -> TimedStream:
        # Eight sampled choices of 230 tokens: a stream lasts long enough for all six to begin.
        body = {**long_chat(TINY, 230), "n": 8, "temperature": 1.0, "seed": 1}
        return timed_stream(url, key, CHAT, body, on_event=freeze_once)

    with ThreadPoolExecutor(6) as pool:
        running = [pool.submit(stream, n) for n in range(6)]
        wait_until(frozen.is_set, lambda: f"six streams begun: {len(begun)}", timeout_s=120)
        # The other node's streams finish while this one stays frozen, then it dies.
        wait_until(lambda: sum(r.done() for r in running) >= 1, "a stream done", timeout_s=120)
        os.killpg(victim, signal.SIGKILL)
        streams = [r.result() for r in running]
    records = [access_record(nodes.log, s.request_id) for s in streams]
    hosts = [servers[record["server"]] for record in records]
    # A stream cut by its server's death ends with an error event (server_gone), then
    # [DONE]: every stream on node-rp0 finished, and those on the dead node were cut.
    assert all(s.events[-1] == "[DONE]" for s in streams)
    cut = ["server_gone" in s.events[-2] for s in streams]
    assert cut == [host == "node-rp1" for host in hosts], (hosts, [s.events[-2] for s in streams])
    assert any(cut), hosts
    assert all(r["status"] == (502 if gone else 200) for r, gone in zip(records, cut, strict=True))
    # The next requests all succeed, on the node left.
    for _ in range(6):
        answer = post(url, key, CHAT, short_chat(TINY))
        assert answer.status_code == 200, answer.text
    # The lost replica is let go and, min being 2, another is asked for.
    lost = {label for label, host in servers.items() if host == "node-rp1"}
    wait_until(
        lambda: (
            lost.isdisjoint(r["server"] for r in nodes.replicas()) and len(nodes.replicas()) == 2
        ),
        lambda: f"the lost replica replaced: {nodes.replicas()}",
        timeout_s=120,
        every_s=1,
    )
