"""A remote node on this machine: model jobs in their own network and UTS namespace.

``network_namespace`` makes a namespace joined to the root one by a veth pair on a private
/30; ``remote_node`` deploys the local cluster so that its endpoints' worker pools (and so
the model servers they start) run inside it, under the namespace's own hostname, and starts
a real router on the root side of the veth. The worker pools reach the engine's interchange
(a process of the router, root namespace) over the veth; the router cannot reach a model
server, which listens on the namespace's own loopback. That is a node behind NAT on a site:
it can dial the router, the router cannot dial it. (This machine has no netfilter or tc
actions, so no firewall stops a connection to the node's address itself; nothing listens
there.) Needs root: ``ip netns``, ``ip link`` and ``unshare``.

The namespace itself is tests/network_namespace.py, the router process tests/router_process.py.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from node_runtime.server import stop_recorded
from node_runtime.server_files import ServerPaths, ServerState, exclusive_lock, read_state

from inference_bundle.config.catalog import load_catalog
from tests.e2e_router import RunningRouter, scratch_root, stop_router
from tests.network_namespace import (
    NetworkNamespace,
    alive,
    connects,
    get_from_node,
    hostname_of,
    namespace_exists,
    namespace_link,
    network_namespace,
)
from tests.router_process import CLUSTER, restart_router, start_router_on, write_router_config

# What the e2e tests import from here: the namespace and the router process live in
# tests/network_namespace.py and tests/router_process.py.
__all__ = [
    "CLUSTER",
    "NetworkNamespace",
    "RemoteNode",
    "alive",
    "connects",
    "get_from_node",
    "hostname_of",
    "namespace_exists",
    "namespace_link",
    "network_namespace",
    "remote_node",
    "restart_router",
    "start_router_on",
    "write_node_profile",
    "write_router_config",
]


def write_node_profile(root: Path, namespace: NetworkNamespace) -> None:
    """Make the scratch root's local profile start its worker pools inside ``namespace``."""
    path = root / "config" / "clusters" / f"{CLUSTER}.yaml"
    profile = yaml.safe_load(path.read_text())
    profile["provider"]["launcher"] = "WrappedLauncher"
    profile["provider"]["launcher_prepend"] = namespace.shell_prefix()
    # The interchange listens on the veth's root side, the one address the node reaches.
    profile["network_interface"] = namespace.root_veth
    path.write_text(yaml.safe_dump(profile, sort_keys=False))


@dataclass(frozen=True)
class RemoteNode:
    """A router in the root namespace whose local cluster's jobs run in ``namespace``."""

    router: RunningRouter
    namespace: NetworkNamespace
    root: Path  # the scratch root (tests/e2e_router.scratch_root)

    @property
    def state_dir(self) -> Path:
        """The node's runtime state: <profile state_dir>/<the node's hostname>."""
        profile = load_catalog(self.root, CLUSTER).profile
        return Path(profile.paths.state_dir) / self.namespace.hostname

    def servers(self) -> dict[str, ServerState]:
        """The model servers the node runtime has recorded on the node, by model name."""
        states = (read_state(ServerPaths(folder)) for folder in self.state_dir.glob("*"))
        return {state.name: state for state in states if state is not None}

    def server(self, model: str) -> ServerState:
        """The recorded server of ``model`` (AssertionError if none)."""
        found = self.servers()
        assert model in found, f"no server of {model} under {self.state_dir}: {sorted(found)}"
        return found[model]

    def stop_servers(self) -> None:
        """Stop every recorded model server on the node, as the node runtime would."""
        for folder in self.state_dir.glob("*"):
            paths = ServerPaths(folder)
            with exclusive_lock(paths.lock, 60, f"stopping the server in {folder}"):
                state = read_state(paths)
                if state is not None:
                    stop_recorded(paths, state, "the test's node is going away")


def remote_node(
    tmp: Path,
    tag: str,
    name: str = "remote",
    extra_settings: Callable[[str], Mapping[str, Any]] | None = None,
) -> Generator[RemoteNode, None, None]:
    """A module's remote node: ``yield from remote_node(tmp_path_factory.mktemp(...), tag)``.

    A scratch root under ``tmp`` whose local cluster runs its worker pools in netns
    ``bundle-<tag>``, and a router on the namespace's root_ip (so that the node can dial it).
    ``extra_settings(router_url)`` returns router settings merged into its config. Stops the
    router, the node's servers and the namespace after.
    """
    with network_namespace(tag) as namespace:
        root = scratch_root(tmp)
        (root / ".state" / "batches").mkdir()  # the profile's batch_input_roots
        write_node_profile(root, namespace)
        running = start_router_on(root, name, namespace.root_ip, extra_settings)
        node = RemoteNode(running, namespace, root)
        try:
            yield node
        finally:
            try:
                stop_router(running)
            finally:
                node.stop_servers()
