"""The benchmark's processes: this router over a scratch root, and the peers in front of vLLM.

Each process runs in its own session (process group) with its output in a log file under
the run's work folder; `Processes.stop_all` stops every group it started, also on Ctrl-C.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
VENVS = ROOT / ".venvs"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http_ok(port: int, path: str, timeout_s: float = 2) -> bool:
    """True if GET path on 127.0.0.1:port answers 2xx."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout_s)
    try:
        conn.request("GET", path)
        return 200 <= conn.getresponse().status < 300
    except OSError:
        return False
    finally:
        conn.close()


def chat_once(port: int, prefix: str, model: str, headers: dict[str, str], timeout_s: float) -> str:
    """One max_tokens 1 chat request; the raw answer, raising if it is not a 200."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout_s)
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
    try:
        conn.request(
            "POST",
            prefix.rstrip("/") + "/v1/chat/completions",
            json.dumps(body),
            {"Content-Type": "application/json", **headers},
        )
        response = conn.getresponse()
        raw = response.read().decode(errors="replace")
    finally:
        conn.close()
    if response.status != 200:
        raise RuntimeError(f"127.0.0.1:{port}{prefix}: HTTP {response.status}: {raw[:300]}")
    return raw


@dataclass
class Processes:
    """Every process the benchmark started, each the leader of its own process group."""

    logs: Path
    started: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    leader_only: set[str] = field(default_factory=set)

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> None:
        log = (self.logs / f"{name}.log").open("wb")
        self.started[name] = subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
            cwd=self.logs,
            start_new_session=True,
        )
        log.close()

    def wait_until(self, name: str, ready: Callable[[], bool], timeout_s: float) -> None:
        """Poll ready() until it holds; fail with the log's tail if the process dies first."""
        process = self.started[name]
        deadline = time.monotonic() + timeout_s
        while not ready():
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited ({process.returncode}):\n{self.tail(name)}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} not ready in {timeout_s:.0f} s:\n{self.tail(name)}")
            time.sleep(0.2)

    def tail(self, name: str, lines: int = 30) -> str:
        text = (self.logs / f"{name}.log").read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, name: str, grace_s: float = 30) -> None:
        """SIGTERM the leader (or the whole group), SIGKILL the group after the grace period.

        The router gets SIGTERM alone: its shutdown stops its engine, which cancels the
        provider's block; a signal to the whole group would kill the engine's children
        first and leave the block's workers behind.
        """
        process = self.started.pop(name)
        with contextlib.suppress(ProcessLookupError):
            if name in self.leader_only:
                process.send_signal(signal.SIGTERM)
            else:
                os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
        # The leader may exit before the rest of its group.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)

    def stop_all(self) -> None:
        """Stop every group, last started first; one failure does not skip the rest."""
        failures = []
        for name in reversed(list(self.started)):
            try:
                self.stop(name)
            except (OSError, subprocess.SubprocessError) as err:
                failures.append(f"{name}: {err}")
        if failures:
            raise RuntimeError("could not stop " + "; ".join(failures))


# --- this router ---------------------------------------------------------------------------


def scratch_root(work: Path) -> Path:
    """A bundle root of its own (catalog, config, templates copied; venvs and models linked).

    The router's runtime state, engine run dirs and vLLM server then belong to this run.
    """
    root = work / "root"
    for folder in ("endpoints", "config", "templates"):
        shutil.copytree(ROOT / folder, root / folder)
    (root / ".state").mkdir()
    os.symlink(VENVS, root / ".venvs")
    os.symlink(ROOT / ".state" / "models", root / ".state" / "models")
    return root


def create_key(root: Path) -> tuple[Path, str]:
    """An API key for the router's keys auth, made by the router's own code."""
    keys = root / ".state" / "keys.json"
    script = "import sys; from inference_bundle.router.auth import create_api_key; "
    script += "print(create_api_key(__import__('pathlib').Path(sys.argv[1]), 'bench@anl.gov'))"
    key = subprocess.run(
        [str(ROOT / ".venv/bin/python"), "-c", script, str(keys)],
        check=True,
        capture_output=True,
        text=True,
        cwd=ROOT,
    ).stdout.strip()
    return keys, key


def start_router(
    procs: Processes,
    root: Path,
    port: int,
    keys: Path,
    name: str = "router",
    more: dict[str, object] | None = None,
) -> None:
    """This router over ``root``; several may run at once (replicas), each with its own
    ``name`` (process, config file and state folder) and ``more`` settings."""
    config = root / "config" / "router" / ("bench.yaml" if name == "router" else f"{name}.yaml")
    settings = {
        "clusters": ["local"],
        "executor": "engine",
        "listen": {"host": "127.0.0.1", "port": port},
        "wait_s": 300,
        "state_dir": str(root / ".state" / name),
        "auth": {"mode": "keys", "keys_file": str(keys)},
        **(more or {}),
    }
    config.write_text(yaml.safe_dump(settings))
    python = ROOT / ".venv/bin/python"
    procs.leader_only.add(name)
    procs.start(
        name,
        [
            str(python),
            "-m",
            "inference_bundle.router",
            "--config",
            str(config),
            "--root",
            str(root),
        ],
        env={"PATH": f"{python.parent}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": str(ROOT)},
    )
    procs.wait_until(name, lambda: http_ok(port, "/health"), 90)


# --- peers ---------------------------------------------------------------------------------


NGINX_CONF = """\
worker_processes 1;
pid {work}/nginx.pid;
error_log {work}/nginx-error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {work}/nginx-body;
    proxy_temp_path {work}/nginx-proxy;
    upstream vllm {{
        server 127.0.0.1:{upstream};
        keepalive 64;
        keepalive_requests 100000;
    }}
    server {{
        listen 127.0.0.1:{port};
        keepalive_requests 100000;
        location / {{
            proxy_pass http://vllm;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
        }}
    }}
}}
"""


def start_nginx(procs: Processes, port: int, upstream: int) -> None:
    """nginx as a plain keep-alive reverse proxy: the floor of one HTTP hop."""
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    conf = procs.logs / "nginx.conf"
    conf.write_text(NGINX_CONF.format(work=procs.logs, port=port, upstream=upstream))
    procs.start("nginx", [nginx, "-c", str(conf), "-p", str(procs.logs), "-g", "daemon off;"])
    procs.wait_until("nginx", lambda: http_ok(port, "/health"), 30)


def start_vllm_router(
    procs: Processes, name: str, port: int, upstream: int, policy: str | None
) -> None:
    """vllm-router (Rust) with one worker; its Prometheus port moved off the default 29000."""
    argv = [
        str(VENVS / "vllm-router/bin/vllm-router"),
        "--host", "127.0.0.1",
        "--port", str(port),
        "--worker-urls", f"http://127.0.0.1:{upstream}",
        "--prometheus-port", str(free_port()),
    ]  # fmt: skip
    if policy:
        argv += ["--policy", policy]
    procs.start(name, argv)
    procs.wait_until(name, lambda: http_ok(port, "/health"), 60)


def start_litellm(procs: Processes, port: int, upstream: int, model: str) -> str:
    """The LiteLLM proxy with one hosted_vllm model, offline (local cost map); its key.

    LiteLLM 1.108 refuses to start without a master key; with one and no database, it
    checks each request's bearer token against it, as this router checks its API keys.
    """
    master_key = "sk-" + secrets.token_hex(16)
    config = procs.logs / "litellm.yaml"
    settings = {
        "model_list": [
            {
                "model_name": model,
                "litellm_params": {
                    "model": f"hosted_vllm/{model}",
                    "api_base": f"http://127.0.0.1:{upstream}/v1",
                    "api_key": "none",
                },
            }
        ],
    }
    config.write_text(yaml.safe_dump(settings))
    procs.start(
        "litellm",
        [
            str(VENVS / "litellm/bin/litellm"),
            "--config",
            str(config),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--num_workers",
            "1",
        ],  # fmt: skip
        env={
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",
            "LITELLM_MASTER_KEY": master_key,
            "NO_DOCS": "True",
            "DISABLE_SCHEMA_UPDATE": "True",
        },
    )
    procs.wait_until("litellm", lambda: http_ok(port, "/health/liveliness"), 180)
    return master_key


def write_result(result: Mapping[str, object], out: Path, work: Path, busiest_load: float) -> None:
    """Say if the machine was busy during the run, write the result, remove the scratch."""
    if busiest_load > (os.cpu_count() or 1):
        print(
            f"note: the machine was busy (1-min load up to {busiest_load:.1f} on "
            f"{os.cpu_count()} cores) during this run; compare paths within it, not with "
            "other runs"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written to {out}", file=sys.stderr)
    shutil.rmtree(work, ignore_errors=True)
