"""`make deploy CLUSTER=<site>`: each step at the SDK and CLI boundary, never the cloud.

The SDK client is a recording stand-in (or the real Client with its web client replaced);
the endpoint environment's `python` and `globus-compute-endpoint` are fake executables that
record their argv and write what the real ones would (the runtime's version, endpoint.json
with an id, daemon.pid).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from inference_bundle.config.naming import jobs_endpoint_name
from inference_bundle.config.registry import load_registry, registry_path
from inference_bundle.ops.registration import (
    ENTRY_POINTS,
    default_client,
    missing_credentials,
    plan_functions,
    register_functions,
    source_sha256,
)
from inference_bundle.ops.site import SiteDeployError, deploy_site, load_site, registry_text
from inference_bundle.rendering.render import render_jobs_endpoint
from inference_bundle.rendering.verify import load_rendered

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
    init = Path(args[-1], "node_runtime", "__init__.py").read_text()
    state.write_text(re.search(r'__version__ = "([^"]+)"', init).group(1))
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


def _executable(path: Path, body: str) -> None:
    path.write_text(f"#!{sys.executable}\n{body}")
    path.chmod(0o755)


def _scratch_repo(tmp_path: Path, trim: bool) -> Path:
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


def _make_fakes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, trim: bool = True) -> Fakes:
    root = _scratch_repo(tmp_path, trim)
    env_bin = tmp_path / "envs" / "endpoint" / "bin"
    env_bin.mkdir(parents=True)
    _executable(env_bin / "python", FAKE_PYTHON)
    _executable(env_bin / "globus-compute-endpoint", FAKE_GCE)
    profile = root / "config" / "clusters" / "sophia.yaml"
    text = profile.read_text()
    old = "endpoint_python: /eagle/argonne_tpc/inference-service/envs/endpoint/bin/python"
    assert old in text
    profile.write_text(text.replace(old, f"endpoint_python: {env_bin / 'python'}"))
    log = tmp_path / "calls.jsonl"
    monkeypatch.setenv("FAKE_LOG", str(log))
    monkeypatch.delenv("FAKE_GCE_FAIL", raising=False)
    return Fakes(root, env_bin, tmp_path / "globus_compute", log)


@pytest.fixture
def fakes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Fakes:
    return _make_fakes(tmp_path, monkeypatch)


def _tree(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` with its content hash."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _allowed(fakes: Fakes, endpoint: str) -> list[str]:
    config = yaml.safe_load((fakes.endpoints_dir / endpoint / "config.yaml").read_text())
    allowed: list[str] = config.get("allowed_functions", [])
    return allowed


def _ids(fakes: Fakes) -> dict[str, str]:
    return {
        name: json.loads((fakes.endpoints_dir / name / "endpoint.json").read_text())["endpoint_id"]
        for name in ENDPOINTS
    }


def test_first_deploy_installs_registers_writes_starts_and_records(fakes: Fakes) -> None:
    said = fakes.deploy()

    assert fakes.calls("python") == [
        ["python", "-c", "import node_runtime; print(node_runtime.__version__)"],
        ["python", "-m", "pip", "install", "--quiet", str(fakes.root / "functions")],
        ["python", "-c", "import node_runtime; print(node_runtime.__version__)"],
    ]
    registered = {name: (sha, fid) for name, sha, fid in fakes.client.registered}
    assert sorted(registered) == ["list_bundle_jobs", "run_batch", "serve"]
    serve_id, jobs_id = registered["serve"][1], registered["list_bundle_jobs"][1]
    batch_id = registered["run_batch"][1]

    # Each endpoint is allowed only its own function: model endpoints serve, batch twins
    # run batches, the jobs endpoint lists jobs.
    for name in ENDPOINTS[:-1]:
        expected = batch_id if name.endswith("-batch") else serve_id
        assert _allowed(fakes, name) == [expected]
    assert _allowed(fakes, "sophia-jobs") == [jobs_id]
    assert sorted(p.name for p in fakes.endpoints_dir.iterdir()) == sorted(ENDPOINTS)

    assert sorted(fakes.endpoint_calls()) == sorted(("start", name) for name in ENDPOINTS)
    for argv in fakes.calls("globus-compute-endpoint"):
        assert argv[1:3] == ["-c", str(fakes.endpoints_dir)] and argv[-1] == "--detach"
    first = json.loads(fakes.log.read_text().splitlines()[-1])
    assert first["path0"] == str(fakes.env_bin), "the endpoint env's bin must lead PATH"

    registry = load_registry(fakes.root, "sophia")
    assert registry.runtime_version == "0.1.0"
    assert registry.function_id("serve") == serve_id
    assert registry.functions["serve"].source_sha256 == registered["serve"][0]
    assert registry.functions["list_bundle_jobs"].id == jobs_id
    assert registry.endpoints == _ids(fakes)
    text = registry_path(fakes.root, "sophia").read_text()
    assert text == registry_text(registry), "the registry is written deterministically"
    assert "updated; commit it" in said[-1]


def test_second_deploy_with_unchanged_input_changes_nothing(fakes: Fakes) -> None:
    fakes.deploy()
    registry_before = registry_path(fakes.root, "sophia").read_text()
    tree_before = _tree(fakes.endpoints_dir)
    fakes.reset_log()

    said = fakes.deploy()

    assert fakes.client.registered == []
    assert fakes.endpoint_calls() == []
    assert [argv[1] for argv in fakes.calls("python")] == ["-c"], "version probe only"
    assert _tree(fakes.endpoints_dir) == tree_before
    assert registry_path(fakes.root, "sophia").read_text() == registry_before
    assert "0 written, 0 started, 0 restarted" in "\n".join(said)
    assert said[-1].endswith("unchanged")


def test_a_changed_endpoint_file_restarts_only_that_endpoint(fakes: Fakes) -> None:
    fakes.deploy()
    ids_before = _ids(fakes)
    fakes.reset_log()
    fakes.edit(
        "endpoints/sophia/nv-embed-v2.yaml", "batch: false", "batch: false\nwalltime: 06:00:00"
    )

    fakes.deploy()

    assert fakes.endpoint_calls() == [("restart", "sophia-nv-embed-v2")]
    assert fakes.client.registered == []
    assert _ids(fakes) == ids_before, "a restart keeps the endpoint's id"


def test_stopped_endpoint_is_started_again(fakes: Fakes) -> None:
    fakes.deploy()
    (fakes.endpoints_dir / "sophia-jobs" / "daemon.pid").unlink()
    fakes.reset_log()

    fakes.deploy()

    assert fakes.endpoint_calls() == [("start", "sophia-jobs")]


def test_changed_function_source_is_registered_again_and_its_endpoints_restart(
    fakes: Fakes,
) -> None:
    fakes.deploy()
    path = registry_path(fakes.root, "sophia")
    data = yaml.safe_load(path.read_text())
    old_serve = data["functions"]["serve"]["id"]
    data["functions"]["serve"]["source_sha256"] = "0" * 64  # as if serve's source changed
    path.write_text(yaml.safe_dump(data))
    fakes.reset_log()

    fakes.deploy()

    assert [name for name, _, _ in fakes.client.registered] == ["serve"]
    new_serve = fakes.client.registered[0][2]
    assert new_serve != old_serve
    model_endpoints = [n for n in ENDPOINTS[:-1] if not n.endswith("-batch")]
    assert sorted(fakes.endpoint_calls()) == [("restart", name) for name in model_endpoints]
    assert _allowed(fakes, "sophia-nv-embed-v2") == [new_serve]
    assert load_registry(fakes.root, "sophia").function_id("serve") == new_serve


def test_runtime_installed_only_when_its_version_differs(fakes: Fakes) -> None:
    (fakes.env_bin / "runtime-version").write_text("0.1.0")
    fakes.deploy()
    assert not [argv for argv in fakes.calls("python") if "pip" in argv]

    (fakes.env_bin / "runtime-version").write_text("0.0.9")
    fakes.reset_log()
    said = fakes.deploy()
    assert len([argv for argv in fakes.calls("python") if "pip" in argv]) == 1
    assert any("(installed: 0.0.9)" in line for line in said)


def test_an_endpoint_that_fails_to_start_is_named_and_the_others_recorded(
    fakes: Fakes, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_GCE_FAIL", "sophia-nv-embed-v2")
    with pytest.raises(SiteDeployError, match="1 endpoint") as failed:
        fakes.deploy()
    assert "sophia-nv-embed-v2" in str(failed.value)
    assert "quota exceeded" in str(failed.value)
    assert "sophia-nv-embed-v2" not in load_registry(fakes.root, "sophia").endpoints
    assert len(load_registry(fakes.root, "sophia").endpoints) == 3

    monkeypatch.delenv("FAKE_GCE_FAIL")
    fakes.reset_log()
    fakes.deploy()
    assert fakes.endpoint_calls() == [("start", "sophia-nv-embed-v2")]
    assert len(load_registry(fakes.root, "sophia").endpoints) == 4


def _bundle(fakes: Fakes, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("GLOBUS_COMPUTE_")}
    return subprocess.run(
        [str(BUNDLE), "--root", str(fakes.root), "deploy", "--cluster", "sophia", *args],
        capture_output=True,
        text=True,
        env={**clean, "ENDPOINTS_DIR": str(fakes.endpoints_dir), **env},
        timeout=120,
        check=False,
    )


def test_dry_run_end_to_end_prints_the_plan_and_touches_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fakes = _make_fakes(tmp_path, monkeypatch, trim=False)  # the whole Sophia catalog
    repo_before = _tree(fakes.root)

    done = _bundle(fakes, DRY_RUN="1")

    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "plan (dry run: nothing is changed)" in out
    assert "functions to register: serve, run_batch, list_bundle_jobs" in out
    assert "node runtime: install 0.1.0" in out
    assert "files change in 36" in out
    assert "    sophia-meta-llama-3-1-405b-instruct: new" in out
    assert "sophia-jobs (start)" in out
    assert f"log in with `{fakes.env_bin / 'globus-compute-endpoint'} -c " in out
    assert not fakes.endpoints_dir.exists()
    assert _tree(fakes.root) == repo_before
    assert fakes.calls("globus-compute-endpoint") == []
    assert [argv[1] for argv in fakes.calls("python")] == ["-c"], "version probe only"


def test_dry_run_after_a_deploy_lists_only_what_changed(fakes: Fakes) -> None:
    fakes.deploy()
    fakes.edit(
        "endpoints/sophia/nv-embed-v2.yaml", "batch: false", "batch: false\nwalltime: 06:00:00"
    )
    (fakes.endpoints_dir / "sophia-old-model").mkdir()
    (fakes.endpoints_dir / "sophia-old-model" / "config.yaml").write_text(
        "# Rendered by `bundle render` from endpoints/sophia/old-model.yaml\n"
    )
    tree_before = _tree(fakes.endpoints_dir)
    fakes.reset_log()

    said = "\n".join(fakes.deploy(dry_run=True))

    assert "functions to register: none (source unchanged)" in said
    assert "files change in 1\n    sophia-nv-embed-v2: user_config_template.yaml.j2" in said
    assert "endpoints to start or restart: sophia-nv-embed-v2 (restart)" in said
    assert "sophia-old-model: no longer in the catalog" in said
    assert _tree(fakes.endpoints_dir) == tree_before
    assert fakes.endpoint_calls() == []


def test_missing_credentials_stop_before_any_change_with_the_login_command(
    fakes: Fakes,
) -> None:
    repo_before = _tree(fakes.root)

    done = _bundle(fakes)

    assert done.returncode == 1
    login = f"`{fakes.env_bin / 'globus-compute-endpoint'} -c {fakes.endpoints_dir} login`"
    assert login in done.stderr
    assert "nothing was changed" in done.stderr
    assert not fakes.endpoints_dir.exists(), "not even the token storage was created"
    assert _tree(fakes.root) == repo_before
    assert fakes.calls("globus-compute-endpoint") == []
    assert not [argv for argv in fakes.calls("python") if "pip" in argv]


def _store_login(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What `globus-compute-endpoint login` leaves in <folder>/storage.db (fake tokens)."""
    from globus_compute_endpoint.auth import get_globus_app_with_scopes
    from globus_sdk.token_storage import TokenStorageData

    with monkeypatch.context() as patch:
        patch.setenv("GLOBUS_COMPUTE_USER_DIR", str(folder))
        app = get_globus_app_with_scopes()
        identity = str(uuid.uuid4())
        tokens = {
            server: TokenStorageData(
                resource_server=server,
                identity_id=identity,
                scope=" ".join(str(scope) for scope in scopes),
                access_token="access",
                refresh_token="refresh",
                expires_at_seconds=int(time.time()) + 3600,
                token_type="Bearer",
            )
            for server, scopes in app.scope_requirements.items()
        }
        app.token_storage.token_storage.store_token_data_by_resource_server(tokens)


def test_credential_detection_reads_only_the_environment_and_stored_tokens(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("GLOBUS_COMPUTE_CLIENT_ID", raising=False)
    monkeypatch.delenv("GLOBUS_COMPUTE_CLIENT_SECRET", raising=False)
    folder = tmp_path / "compute"
    assert "does not exist" in str(missing_credentials(folder))
    assert not folder.exists()

    _store_login(folder, monkeypatch)
    assert missing_credentials(folder) is None, "the stored login covers Globus Compute"

    monkeypatch.setenv("GLOBUS_COMPUTE_CLIENT_SECRET", "s3cret")
    assert "without GLOBUS_COMPUTE_CLIENT_ID" in str(missing_credentials(folder))
    monkeypatch.setenv("GLOBUS_COMPUTE_CLIENT_ID", str(uuid.uuid4()))
    assert missing_credentials(folder) is None, "a client identity gets its tokens on use"


def test_the_real_sdk_client_registers_the_source_text(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The SDK Client as deploy builds it, with its web client (the network) replaced."""
    from globus_compute_sdk.serialize import ComputeSerializer

    monkeypatch.delenv("GLOBUS_COMPUTE_CLIENT_ID", raising=False)
    monkeypatch.delenv("GLOBUS_COMPUTE_CLIENT_SECRET", raising=False)
    client: Any = default_client(tmp_path)
    sent: list[dict[str, Any]] = []

    class Response:
        def __init__(self, data: dict[str, str]) -> None:
            self.data = data

    def record(data: dict[str, Any]) -> Response:
        sent.append(data)
        return Response({"function_uuid": str(uuid.uuid4())})

    client._compute_web_client.v3.register_function = record
    registered = register_functions(plan_functions(None), client)

    assert [d["function_name"] for d in sent] == [e.name for e in ENTRY_POINTS]
    serializer = ComputeSerializer()
    for data in sent:
        (payload,) = serializer.unpack_buffers(data["function_code"])
        assert payload.startswith("st\n"), "PureSourceTextInspect, not pickled by reference"
        sha = hashlib.sha256(payload.encode()).hexdigest()
        assert registered[data["function_name"]].source_sha256 == sha
        function = serializer.deserialize(payload)  # exec'd in an empty namespace
        assert function.__name__ == data["function_name"]


def test_jobs_endpoint_loads_with_the_endpoints_own_loader(fakes: Fakes, tmp_path: Path) -> None:
    site = load_site(fakes.root, "sophia", fakes.endpoints_dir)
    endpoint = render_jobs_endpoint(
        site.catalog.profile, fakes.root / "templates", [str(uuid.uuid4())]
    )
    assert endpoint.name == jobs_endpoint_name("sophia")
    config = load_rendered(endpoint, tmp_path / "scratch")
    try:
        assert type(config.engine.executor.provider).__name__ == "LocalProvider"
        assert config.engine.executor.label == "sophia-jobs-HighThroughputExecutor"
    finally:
        config.engine.shutdown()


@pytest.mark.parametrize(
    ("cluster", "edit", "message"),
    [
        ("local", None, "runs on this machine"),
        ("sophia", "endpoint_python: ", "endpoint_python: not set"),
    ],
)
def test_sites_that_cannot_deploy_say_why(
    fakes: Fakes, cluster: str, edit: str | None, message: str
) -> None:
    if edit:
        path = fakes.root / "config" / "clusters" / f"{cluster}.yaml"
        text = "\n".join(
            line for line in path.read_text().splitlines() if not line.startswith(edit)
        )
        path.write_text(text + "\n")
    with pytest.raises(SiteDeployError, match=message):
        load_site(fakes.root, cluster)
