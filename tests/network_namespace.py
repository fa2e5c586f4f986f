"""A network and UTS namespace on this machine that plays a remote node, and what a test
checks about the processes in it.

``network_namespace`` makes a namespace joined to the root one by a veth pair on a private
/30; commands run inside through ``command_prefix`` under the namespace's own hostname.
Needs root: ``ip netns``, ``ip link``, ``unshare`` and ``nsenter``. The local cluster
deployed into one is tests/remote_node.py.

As a site's node does, the namespace resolves its own hostname (to its address) without a
name server: ``ip netns exec`` mounts /etc/netns/<name>/hosts and resolv.conf over /etc's
for what runs inside. Without them a lookup of the hostname (Gloo's, as vLLM starts) waits
on the host's name server, which a namespace with a default route reaches but gets no answer
from: 10 s a lookup, minutes a vLLM start.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

# Interface names are at most IFNAMSIZ - 1 = 15 bytes: "bn-" + tag + "-r".
_TAG = re.compile(r"^[a-z0-9]{1,10}$")
_SUBNETS = 256  # 10.231.<n>.0/30, n picked from the tag
_NETNS_ETC = Path("/etc/netns")  # per-namespace /etc files, as `ip netns exec` mounts them


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
    shutil.rmtree(_NETNS_ETC / namespace.name, ignore_errors=True)
    with contextlib.suppress(OSError):  # another namespace's files may still be there
        _NETNS_ETC.rmdir()


def _write_etc(namespace: NetworkNamespace) -> None:
    """The namespace's own /etc/hosts (its hostname at its address) and resolv.conf (a name
    server on its own loopback, where none listens: a lookup fails at once)."""
    etc = _NETNS_ETC / namespace.name
    etc.mkdir(parents=True, exist_ok=True)
    (etc / "hosts").write_text(
        f"127.0.0.1 localhost\n::1 localhost\n{namespace.node_ip} {namespace.hostname}\n"
    )
    (etc / "resolv.conf").write_text("nameserver 127.0.0.1\n")


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
        _write_etc(namespace)
        yield namespace
    finally:
        _remove(namespace)


def namespace_exists(name: str) -> bool:
    """Whether `ip netns list` shows a namespace of this name."""
    listed = _ip("netns", "list").stdout
    return name in [line.split()[0] for line in listed.splitlines() if line.strip()]


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
