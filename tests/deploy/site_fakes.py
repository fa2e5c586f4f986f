"""Stand-ins for a site deploy's boundaries: the SDK client, the endpoint environment.

The SDK client is a recording stand-in; the endpoint environment's `python` and
`globus-compute-endpoint` are fake executables that record their argv and write what the
real ones would (the runtime's version, endpoint.json with an id, daemon.pid).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from inference_bundle.ops.registration import source_sha256
from inference_bundle.ops.site import deploy_site

ROOT = Path(__file__).resolve().parents[2]
BUNDLE = Path(sys.executable).with_name("bundle")
KEPT = ("meta-llama-3-1-8b-instruct.yaml", "nv-embed-v2.yaml")  # one with a batch twin
ENDPOINTS = [
    "sophia-meta-llama-3-1-8b-instruct",
    "sophia-meta-llama-3-1-8b-instruct-batch",
    "sophia-nv-embed-v2",
    "sophia-jobs",
]

FAKE_PYTHON = """\
import json, os, re, sys
from pathlib import Path
state = Path(__file__).with_name("runtime-version")
with open(os.environ["FAKE_LOG"], "a") as log:
    log.write(json.dumps({"argv": ["python", *sys.argv[1:]]}) + "\\n")
args = sys.argv[1:]
if args[:1] == ["-c"]:
    if not state.is_file():
        sys.exit("ModuleNotFoundError: No module named 'node_runtime'")
    print(state.read_text())
elif args[:3] == ["-m", "pip", "install"]:
    source = Path(args[-1], "node_runtime", "version.py").read_text()
    state.write_text(re.search(r'__version__ = "([^"]+)"', source).group(1))
else:
    sys.exit(2)
"""

FAKE_GCE = """\
import json, os, sys, uuid
from pathlib import Path
args = sys.argv[1:]
with open(os.environ["FAKE_LOG"], "a") as log:
    entry = {"argv": ["globus-compute-endpoint", *args],
             "path0": os.environ["PATH"].split(os.pathsep)[0]}
    log.write(json.dumps(entry) + "\\n")
config_dir = Path.home() / ".globus_compute"
if args[:1] == ["-c"]:
    config_dir, args = Path(args[1]), args[2:]
command, name = args[0], args[1]
folder = config_dir / name
if command in ("start", "restart"):
    if not (folder / "config.yaml").is_file():
        sys.exit(f"Error: no endpoint configuration in {folder}")
    if name in os.environ.get("FAKE_GCE_FAIL", "").split(","):
        sys.exit("Endpoint registration blocked.  [quota exceeded]")
    ids = folder / "endpoint.json"
    if not ids.exists():  # kept across restarts, as the real one does
        ids.write_text(json.dumps({"endpoint_id": str(uuid.uuid4())}))
    (folder / "daemon.pid").write_text(str(os.getppid()))
else:
    sys.exit(2)
"""


class RecordingClient:
    """Stands in for globus_compute_sdk.Client: records what would be registered."""

    def __init__(self) -> None:
        self.registered: list[tuple[str, str, str]] = []

    def register_function(self, function: Callable[..., Any]) -> str:
        function_id = str(uuid.uuid4())
        self.registered.append((function.__name__, source_sha256(function), function_id))
        return function_id


class Fakes:
    """The scratch repository, the fake endpoint environment and what was called."""

    def __init__(self, root: Path, env_bin: Path, endpoints_dir: Path, log: Path) -> None:
        self.root = root
        self.env_bin = env_bin
        self.endpoints_dir = endpoints_dir
        self.log = log
        self.client = RecordingClient()

    def calls(self, program: str | None = None) -> list[list[str]]:
        if not self.log.exists():
            return []
        entries = [json.loads(line) for line in self.log.read_text().splitlines()]
        return [e["argv"] for e in entries if program is None or e["argv"][0] == program]

    def endpoint_calls(self) -> list[tuple[str, str]]:
        """(command, endpoint) of each globus-compute-endpoint call."""
        return [(argv[3], argv[4]) for argv in self.calls("globus-compute-endpoint")]

    def reset_log(self) -> None:
        self.log.unlink(missing_ok=True)
        self.client.registered.clear()

    def deploy(self, **kwargs: Any) -> list[str]:
        said: list[str] = []
        deploy_site(
            self.root,
            "sophia",
            endpoints_dir=self.endpoints_dir,
            say=said.append,
            client_factory=lambda _folder: self.client,
            credentials=lambda _folder: None,
            id_wait_s=5,
            **kwargs,
        )
        return said

    def edit(self, relative: str, old: str, new: str) -> None:
        path = self.root / relative
        text = path.read_text()
        assert old in text, f"{old!r} not in {relative}"
        path.write_text(text.replace(old, new, 1))


def executable(path: Path, body: str) -> None:
    path.write_text(f"#!{sys.executable}\n{body}")
    path.chmod(0o755)


def scratch_repo(tmp_path: Path, trim: bool) -> Path:
    root = tmp_path / "repo"
    for folder in ("endpoints", "config", "templates"):
        shutil.copytree(ROOT / folder, root / folder)
    shutil.copytree(
        ROOT / "functions",
        root / "functions",
        ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "build"),
    )
    shutil.rmtree(root / "config" / "registry", ignore_errors=True)
    if trim:
        for path in (root / "endpoints" / "sophia").iterdir():
            if path.name not in KEPT:
                path.unlink()
    return root


def make_fakes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, trim: bool = True) -> Fakes:
    """A scratch repository whose Sophia profile points at a fake endpoint environment."""
    root = scratch_repo(tmp_path, trim)
    env_bin = tmp_path / "envs" / "endpoint" / "bin"
    env_bin.mkdir(parents=True)
    executable(env_bin / "python", FAKE_PYTHON)
    executable(env_bin / "globus-compute-endpoint", FAKE_GCE)
    profile = root / "config" / "clusters" / "sophia.yaml"
    text = profile.read_text()
    old = "endpoint_python: /eagle/argonne_tpc/inference-service/envs/endpoint/bin/python"
    assert old in text
    profile.write_text(text.replace(old, f"endpoint_python: {env_bin / 'python'}"))
    log = tmp_path / "calls.jsonl"
    monkeypatch.setenv("FAKE_LOG", str(log))
    monkeypatch.delenv("FAKE_GCE_FAIL", raising=False)
    return Fakes(root, env_bin, tmp_path / "globus_compute", log)


def tree(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` with its content hash."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def allowed(fakes: Fakes, endpoint: str) -> list[str]:
    """The functions an endpoint's written config.yaml allows."""
    config = yaml.safe_load((fakes.endpoints_dir / endpoint / "config.yaml").read_text())
    allowed: list[str] = config.get("allowed_functions", [])
    return allowed


def ids(fakes: Fakes) -> dict[str, str]:
    """Each endpoint's id, as its endpoint.json records it."""
    return {
        name: json.loads((fakes.endpoints_dir / name / "endpoint.json").read_text())["endpoint_id"]
        for name in ENDPOINTS
    }


def bundle(fakes: Fakes, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """`bundle deploy --cluster sophia` as a process, without Globus Compute client variables."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("GLOBUS_COMPUTE_")}
    return subprocess.run(
        [str(BUNDLE), "--root", str(fakes.root), "deploy", "--cluster", "sophia", *args],
        capture_output=True,
        text=True,
        env={**clean, "ENDPOINTS_DIR": str(fakes.endpoints_dir), **env},
        timeout=120,
        check=False,
    )
