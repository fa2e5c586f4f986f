"""A real router as its own process over a scratch root: its config written, started, waited
for until /health answers, restarted from the same config (same port and state folder).

Used by the end-to-end tests whose router must listen on a given address (a remote node's
veth, https), where tests/e2e_router.py's shared router does not fit.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import httpx
import yaml

from inference_bundle.router.auth import create_api_key
from tests.e2e_router import RunningRouter, merge_settings, stop_router

CLUSTER = "local"


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
    config.write_text(yaml.safe_dump(merge_settings(dict(settings), dict(extra or {}))))
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
