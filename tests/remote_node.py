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
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import signal
import socket
import ssl
import subprocess
import sys
import time
import zlib
from collections.abc import Callable, Generator, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml
from node_runtime.server import stop_recorded
from node_runtime.state import ServerPaths, ServerState, exclusive_lock, read_state

from inference_bundle.config.catalog import load_catalog
from inference_bundle.router.auth import create_api_key
from tests.e2e_router import RunningRouter, scratch_root, stop_router

# Interface names are at most IFNAMSIZ - 1 = 15 bytes: "bn-" + tag + "-r".
_TAG = re.compile(r"^[a-z0-9]{1,10}$")
_SUBNETS = 256  # 10.231.<n>.0/30, n picked from the tag
CLUSTER = "local"


@dataclass(frozen=True)
class NetworkNamespace:
    """A network namespace joined to the root one by a veth pair; its processes' hostname."""

    name: str  # under /run/netns, as `ip netns` names it
    root_ip: str  # the root side's address: what the node dials
    node_ip: str  # the node side's address
    hostname: str  # what commands run through ``command_prefix`` see as their hostname
    root_veth: str  # the root side's interface (the profile's network_interface)
    node_veth: str

    def command_prefix(self) -> list[str]:
        """The argv that runs the command appended to it inside, under its own hostname."""
        # A new UTS namespace per command, given the node's hostname: sh sets it and execs
        # the command, which keeps sh's pid and signals. "$0" is the word after the prefix:
        # the hostname (shell_prefix and run append it).
        script = 'hostname "$0" && exec "$@"'
        return ["ip", "netns", "exec", self.name, "unshare", "--uts", "sh", "-c", script]

    def shell_prefix(self) -> str:
        """``command_prefix`` plus the hostname, as one shell string (a launcher_prepend)."""
        return shlex.join([*self.command_prefix(), self.hostname])

    def run(self, argv: list[str], timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside the namespace, under its hostname; output captured as text."""
        return subprocess.run(
            [*self.command_prefix(), self.hostname, *argv],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )

    def pids(self) -> list[int]:
        """The processes whose network namespace this is."""
        listed = _ip("netns", "pids", self.name, check=False)
        return [int(word) for word in listed.stdout.split()]

    def inode(self) -> int:
        """The namespace's inode, which /proc/<pid>/ns/net of its processes links to."""
        return os.stat(f"/run/netns/{self.name}").st_ino


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    run = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if check and run.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed: {run.stderr.strip()}")
    return run


def _addresses_in_use() -> set[str]:
    listed = _ip("-o", "-4", "addr", "show").stdout
    return set(re.findall(r"inet (\d+\.\d+\.\d+\.\d+)/", listed))


def _subnet_for(tag: str) -> int:
    """A /30 for the tag, stable across runs; the next free one if another interface has it."""
    in_use = _addresses_in_use()
    first = zlib.crc32(tag.encode()) % _SUBNETS
    for step in range(_SUBNETS):
        n = (first + step) % _SUBNETS
        if f"10.231.{n}.1" not in in_use and f"10.231.{n}.2" not in in_use:
            return n
    raise RuntimeError("every 10.231.<n>.0/30 is in use")


def _stop_processes(namespace: NetworkNamespace, grace_s: float = 10) -> None:
    """SIGTERM what runs in the namespace, SIGKILL what is left after grace_s; wait it out."""
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 10.0)):
        for pid in namespace.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + wait_s
        while namespace.pids() and time.monotonic() < deadline:
            time.sleep(0.2)
        if not namespace.pids():
            return
    raise RuntimeError(f"processes outlived SIGKILL in {namespace.name}: {namespace.pids()}")


def _remove(namespace: NetworkNamespace) -> None:
    """Stop the namespace's processes, delete the veth pair and the namespace (if present)."""
    if Path(f"/run/netns/{namespace.name}").exists():
        _stop_processes(namespace)
    if _ip("link", "show", namespace.root_veth, check=False).returncode == 0:
        _ip("link", "del", namespace.root_veth)  # its peer goes with it
    if Path(f"/run/netns/{namespace.name}").exists():
        _ip("netns", "del", namespace.name)


@contextlib.contextmanager
def network_namespace(tag: str) -> Iterator[NetworkNamespace]:
    """Netns ``bundle-<tag>`` with a veth pair to the root namespace; removed on exit.

    ``tag``: 1 to 10 lower-case letters or digits. A namespace left by an earlier run under
    the same tag is removed first.
    """
    if not _TAG.match(tag):
        raise ValueError(f"tag {tag!r}: use 1 to 10 lower-case letters or digits")
    stale = NetworkNamespace(f"bundle-{tag}", "", "", f"node-{tag}", f"bn-{tag}-r", f"bn-{tag}-n")
    _remove(stale)
    n = _subnet_for(tag)
    namespace = NetworkNamespace(
        name=stale.name,
        root_ip=f"10.231.{n}.1",
        node_ip=f"10.231.{n}.2",
        hostname=stale.hostname,
        root_veth=stale.root_veth,
        node_veth=stale.node_veth,
    )
    try:
        _ip("netns", "add", namespace.name)
        _ip("link", "add", namespace.root_veth, "type", "veth", "peer", "name", namespace.node_veth)
        _ip("link", "set", namespace.node_veth, "netns", namespace.name)
        _ip("addr", "add", f"{namespace.root_ip}/30", "dev", namespace.root_veth)
        _ip("link", "set", namespace.root_veth, "up")
        inside = ("-n", namespace.name)
        _ip(*inside, "addr", "add", f"{namespace.node_ip}/30", "dev", namespace.node_veth)
        _ip(*inside, "link", "set", namespace.node_veth, "up")
        _ip(*inside, "link", "set", "lo", "up")
        yield namespace
    finally:
        _remove(namespace)


def namespace_exists(name: str) -> bool:
    """Whether `ip netns list` shows a namespace of this name."""
    listed = _ip("netns", "list").stdout
    return name in [line.split()[0] for line in listed.splitlines() if line.strip()]


# --- The local cluster deployed with its workers on the node --------------------------------


def write_node_profile(root: Path, namespace: NetworkNamespace) -> None:
    """Make the scratch root's local profile start its worker pools inside ``namespace``."""
    path = root / "config" / "clusters" / f"{CLUSTER}.yaml"
    profile = yaml.safe_load(path.read_text())
    profile["provider"]["launcher"] = "WrappedLauncher"
    profile["provider"]["launcher_prepend"] = namespace.shell_prefix()
    # The interchange listens on the veth's root side, the one address the node reaches.
    profile["network_interface"] = namespace.root_veth
    path.write_text(yaml.safe_dump(profile, sort_keys=False))


def _merged(base: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``extra`` laid over it, nested mappings merged key by key."""
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _merged(merged[key], value)
        else:
            merged[key] = value
    return merged


def write_router_config(
    root: Path,
    name: str,
    listen: tuple[str, int],
    keys_file: Path,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write config/router/<name>.yaml for the local cluster; ``extra`` is merged in."""
    host, port = listen
    settings = {
        "clusters": [CLUSTER],
        "executor": "engine",
        "listen": {"host": host, "port": port},
        "wait_s": 540,  # a cold vLLM on a busy machine (the default, under the SDK's 600 s)
        "state_dir": str(root / ".state" / name),
        "auth": {"mode": "keys", "keys_file": str(keys_file)},
    }
    config = root / "config" / "router" / f"{name}.yaml"
    config.write_text(yaml.safe_dump(_merged(settings, extra or {})))
    return config


def _free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def start_router_on(
    root: Path,
    name: str,
    host: str,
    extra: Callable[[str], Mapping[str, Any]] | None = None,
    scheme: str = "http",
    verify: ssl.SSLContext | bool = True,
) -> RunningRouter:
    """A router over ``root`` listening on ``host``; ``extra(url)`` gives settings to merge.

    ``scheme`` https: ``extra`` gives the router its certificate (``listen.tls_cert``,
    ``tls_key``), and ``verify`` is what this process trusts to reach it.
    """
    port = _free_port(host)
    url = f"{scheme}://{host}:{port}"
    keys = root / ".state" / "keys.json"
    key = create_api_key(keys, "alice@anl.gov")
    write_router_config(root, name, (host, port), keys, extra(url) if extra else None)
    return _launch_router(root, name, url, key, verify)


def restart_router(
    running: RunningRouter, name: str, verify: ssl.SSLContext | bool = True
) -> RunningRouter:
    """Stop the router and start it again from its config: the same port and state folder,
    none of its memory (credentials, connections). Its log goes on in the same file."""
    stop_router(running)
    return _launch_router(running.root, name, running.url, running.key, verify)


def _launch_router(
    root: Path, name: str, url: str, key: str, verify: ssl.SSLContext | bool
) -> RunningRouter:
    """Run the router of config/router/<name>.yaml; wait until ``url`` answers /health."""
    config = root / "config" / "router" / f"{name}.yaml"
    log_path = root / ".state" / f"{name}.log"
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "inference_bundle.router", "--config", str(config)]
            + ["--root", str(root)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    running = RunningRouter(url, key, root, process)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"router {name} exited:\n{log_path.read_text()}")
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(running.url + "/health", timeout=1, verify=verify).status_code == 200:
                return running
        time.sleep(0.2)
    stop_router(running)
    raise AssertionError(f"router {name} did not come up:\n{log_path.read_text()}")


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


# --- What a test checks about a process on the node ---------------------------------------


def namespace_link(pid: int, kind: str) -> str:
    """The namespace ``kind`` (net, uts, ...) of a process, as /proc links it: 'net:[4026...]'."""
    return os.readlink(f"/proc/{pid}/ns/{kind}")


def hostname_of(pid: int) -> str:
    """The hostname a process sees (its UTS namespace's), read through nsenter."""
    run = subprocess.run(
        ["nsenter", "-t", str(pid), "-u", "hostname"],
        capture_output=True,
        text=True,
        timeout=10,
        check=True,
    )
    return run.stdout.strip()


def alive(pid: int) -> bool:
    """Whether the process runs (a zombie waiting for its parent does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def connects(host: str, port: int, timeout_s: float = 3) -> bool:
    """Whether a TCP connection from this process's namespace to host:port is accepted."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


_GET = """
import sys, urllib.request
try:
    print(urllib.request.urlopen(sys.argv[1], timeout=float(sys.argv[2])).status)
except Exception as err:
    print(type(err).__name__, err)
"""


def get_from_node(namespace: NetworkNamespace, url: str, timeout_s: float = 10) -> str:
    """GET ``url`` from inside the namespace: the status code, or the error, as text."""
    run = namespace.run([sys.executable, "-c", _GET, url, str(timeout_s)], timeout_s + 20)
    assert run.returncode == 0, run.stderr
    return run.stdout.strip()
