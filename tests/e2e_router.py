"""A router over real backends, for the slow tiers: a scratch root and `python -m router`.

The router runs over a scratch root (the repository's catalog, its backends and models
linked in), so its runtime state, servers and logs are the test's own. The session's shared
one is the ``e2e_root`` / ``e2e_router`` fixtures of tests/conftest.py; batch modules take
it through ``batch_router`` there.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import node_runtime
import openai
import yaml

from inference_bundle.config.catalog import load_catalog
from inference_bundle.rendering.specs import server_spec
from inference_bundle.router.auth import create_api_key
from inference_bundle.router.batches.store import FINAL

ROOT = Path(__file__).resolve().parents[1]
TINY = "local/tiny-llama"
MINILM = "sentence-transformers/all-MiniLM-L6-v2"
# The session's shared router: its state is under <root>/.state/<name>.
SHARED_ROUTER = "patient"
# Workers in an engine's pool on a scratch root (``scratch_root``).
WORKERS = 4


@dataclass
class RunningRouter:
    url: str
    key: str
    root: Path
    process: subprocess.Popen[bytes]
    config: Path | None = None  # its settings file (the router rereads its limits)
    log: Path | None = None  # its stdout and stderr: the access log among them

    def client(self, base: str = "/resource_server/local/vllm/v1") -> Any:
        return openai.OpenAI(api_key=self.key, base_url=self.url + base, max_retries=0)


def scratch_root(tmp: Path, workers: int | None = WORKERS) -> Path:
    """A copy of the catalog under ``tmp`` with this checkout's backends and models linked in.

    ``workers``: each engine's worker pool on this machine's clusters (None: the profiles'
    16). A pool starts them all at once, each an interpreter of its own (about 0.75 s of
    CPU): 16 hold this machine's 2 cores for seconds beside the model's cold start, and more
    on a loaded machine, while a task's worker only waits for the node runtime's answer;
    warm requests ride the server's connection, not a worker. (The node runtime's own
    concurrent first calls: tests/runtime/test_servers_e2e.py, 16 at once.)
    """
    root = tmp / "root"
    for folder in ("endpoints", "config", "templates"):
        shutil.copytree(ROOT / folder, root / folder)
    (root / ".state").mkdir()
    os.symlink(ROOT / ".venvs", root / ".venvs")
    os.symlink(ROOT / ".state" / "models", root / ".state" / "models")
    if workers is not None:
        for cluster in ("local", "local-slurm"):
            profile = root / "config" / "clusters" / f"{cluster}.yaml"
            text = profile.read_text()
            assert text.count("\n  max_workers_per_node: 16\n") == 1, profile
            profile.write_text(
                text.replace(
                    "\n  max_workers_per_node: 16\n", f"\n  max_workers_per_node: {workers}\n"
                )
            )
    return root


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_router(
    root: Path,
    name: str,
    wait_s: float,
    extra: dict[str, Any] | None = None,
    port: int | None = None,
) -> RunningRouter:
    """Start ``python -m inference_bundle.router`` over ``root`` as router ``name``.

    ``extra`` is merged into its settings (a section's keys into that section: ``store``,
    ``limits``, ``data_plane``, ``batches``...); its state is ``<root>/.state/<name>``, its
    log ``<root>/.state/<name>.log``.
    """
    port = port or free_port()
    keys = root / ".state" / "keys.json"
    key = create_api_key(keys, "alice@anl.gov")
    config = root / "config" / "router" / f"{name}.yaml"
    settings: dict[str, Any] = {
        "clusters": ["local"],
        "executor": "engine",
        "listen": {"host": "127.0.0.1", "port": port},
        "wait_s": wait_s,
        "state_dir": str(root / ".state" / name),
        "auth": {"mode": "keys", "keys_file": str(keys)},
    }
    config.write_text(yaml.safe_dump(merge_settings(settings, extra or {})))
    log_path = root / ".state" / f"{name}.log"
    log = log_path.open("wb")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "inference_bundle.router",
            "--config",
            str(config),
            "--root",
            str(root),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert process.poll() is None, log_path.read_text()
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return RunningRouter(url, key, root, process, config, log_path)
        except httpx.TransportError:
            time.sleep(0.2)
    raise AssertionError(f"router {name} did not come up")


def merge_settings(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``extra`` merged in, mapping into mapping; ``extra`` wins elsewhere."""
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge_settings(merged[key], value)
        else:
            merged[key] = value
    return merged


def stop_router(router: RunningRouter) -> None:
    router.process.send_signal(signal.SIGTERM)
    try:
        router.process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(router.process.pid, signal.SIGKILL)
        raise


def stop_servers(root: Path, roles: tuple[str, ...] = ("interactive", "batch")) -> None:
    """Stop every model server of these roles that routers over this root started."""
    catalog = load_catalog(root, "local")
    for entry in catalog.entries:
        spec = server_spec(entry, catalog.profile)
        for role in roles:
            node_runtime.stop_server(dataclasses.replace(spec, role=role))


def cancel_unfinished_batches(router: RunningRouter) -> list[str]:
    """Cancel the batches of the router's own user that still run; their ids.

    A batch module on the shared router ends this way, so that a failed test's batch does
    not keep the CPU busy under the modules after it.
    """
    auth = {"Authorization": f"Bearer {router.key}"}
    listed = httpx.get(router.url + "/v1/batches", headers=auth, timeout=60)
    listed.raise_for_status()
    running = [b["id"] for b in listed.json()["data"] if b["status"] not in FINAL]
    for batch_id in running:
        httpx.post(f"{router.url}/v1/batches/{batch_id}/cancel", headers=auth, timeout=60)
    return running
