"""`make deploy` for clusters served from this machine: the router in the background with
the engine executor (the embedded local cluster, or a Slurm site without the Globus cloud).

Everything it starts is recorded under .state/deploy/<cluster>/ (pid, log, the effective
router settings, a fingerprint of what was deployed), so that a second deploy with the same
input changes nothing and `make stop` finds everything again.
"""

from __future__ import annotations

import contextlib
import getpass
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import node_runtime
import yaml

from inference_bundle.config.catalog import Catalog, CatalogEntry, load_catalog
from inference_bundle.config.settings import RouterSettings, load_settings
from inference_bundle.rendering.specs import server_spec
from inference_bundle.router.auth import create_api_key

Say = Callable[[str], None]
# Source folders whose change means the router must be restarted to serve the new code.
_FINGERPRINTED = ("inference_bundle", "functions/node_runtime", "templates")


class DeployError(RuntimeError):
    """A deploy step that cannot go on; the message says what to do."""


@dataclass(frozen=True)
class LocalDeployment:
    """Where one cluster's local deployment keeps its run files."""

    root: Path
    cluster: str

    @property
    def folder(self) -> Path:
        return self.root / ".state" / "deploy" / self.cluster

    @property
    def pid_file(self) -> Path:
        return self.folder / "router.pid"

    @property
    def log_file(self) -> Path:
        return self.folder / "router.log"

    @property
    def settings_file(self) -> Path:
        return self.folder / "router.yaml"

    @property
    def fingerprint_file(self) -> Path:
        return self.folder / "fingerprint"

    @property
    def key_file(self) -> Path:
        """The API key this deployment created, readable by its owner only."""
        return self.root / ".state" / "router" / f"{self.cluster}-api-key"

    def router_state_dir(self) -> Path:
        """The router's own state folder (engines' run dirs), from the deployed settings."""
        try:
            folder = Path(yaml.safe_load(self.settings_file.read_text())["state_dir"])
        except (OSError, KeyError, TypeError):
            folder = Path(".state") / "router"
        return folder if folder.is_absolute() else self.root / folder

    def router_pid(self) -> int | None:
        """The router's pid if it runs, else None."""
        try:
            pid = int(self.pid_file.read_text())
            os.kill(pid, 0)
        except (OSError, ValueError):
            return None
        return pid


def deploy(root: Path, cluster: str, port: int | None, say: Say = print) -> None:
    """Validate, start the router if needed, wait for real answers, and say how to call it."""
    run = LocalDeployment(root, cluster)
    catalog = load_catalog(root, cluster)
    settings = _router_settings(root, cluster, port)
    _check_local_inputs(catalog)
    key = _api_key(run, settings)
    fingerprint = _fingerprint(root, cluster, settings)
    url = f"http://{settings.listen.host}:{settings.listen.port}"
    pid = run.router_pid()
    if pid is not None and _read(run.fingerprint_file) == fingerprint and _healthy(url):
        say(
            f"{cluster}: already deployed and serving at {url} (router pid {pid}); nothing changed."
        )
        _print_usage(say, url, cluster, catalog, key, run)
        return
    if pid is not None:
        say(f"{cluster}: the deployed input changed; restarting the router (pid {pid})")
        _stop_router(run, say)
    run.folder.mkdir(parents=True, exist_ok=True)
    run.settings_file.write_text(yaml.safe_dump(settings.model_dump(mode="json"), sort_keys=True))
    _start_router(run, catalog, url, say)
    for entry in catalog.enabled():
        _first_answer(url, cluster, entry, key, say)
    run.fingerprint_file.write_text(fingerprint)
    say(f"{cluster}: deployed; every model answered.")
    _print_usage(say, url, cluster, catalog, key, run)


def stop(root: Path, say: Say = print) -> None:
    """Stop every local deployment's router and the model servers they started."""
    folders = sorted((root / ".state" / "deploy").glob("*/router.pid"))
    if not folders:
        say("nothing deployed here; nothing to stop.")
    for pid_file in folders:
        run = LocalDeployment(root, pid_file.parent.name)
        _stop_router(run, say)
        with contextlib.suppress(Exception):
            catalog = load_catalog(root, run.cluster)
            for entry in catalog.entries:
                spec = node_runtime.ServerSpec.from_dict(server_spec(entry, catalog.profile))
                if node_runtime.stop_server(spec, reason="make stop"):
                    say(f"{run.cluster}: stopped the {entry.endpoint.name} server")
        pid_file.unlink(missing_ok=True)
        run.fingerprint_file.unlink(missing_ok=True)


def status(root: Path, cluster: str, say: Say = print) -> None:
    """Every endpoint of a local deployment with its state, job and last use, as a table."""
    run = LocalDeployment(root, cluster)
    catalog = load_catalog(root, cluster)
    pid = run.router_pid()
    if pid is None or not run.settings_file.exists():
        say(f"{cluster}: the router is not running (make deploy CLUSTER={cluster} starts it).")
        models: dict[str, dict[str, Any]] = {}
        jobs: dict[str, Any] = {"running": [], "queued": [], "others": []}
    else:
        settings = RouterSettings.model_validate(yaml.safe_load(run.settings_file.read_text()))
        url = f"http://{settings.listen.host}:{settings.listen.port}"
        key = _read(run.key_file)
        listing = _get(url, "/resource_server/list-endpoints", key)
        frameworks = listing["clusters"].get(cluster, {}).get("frameworks", {})
        models = {m["id"]: m for f in frameworks.values() for m in f["models"]}
        jobs = _get(url, f"/resource_server/{cluster}/jobs", key)
        say(f"{cluster}: router pid {pid} at {url}")
    by_model = {j["model"]: j for group in jobs.values() if isinstance(group, list) for j in group}
    rows = [("ENDPOINT", "MODEL", "FRAMEWORK", "STATE", "JOB", "LAST USE")]
    for entry in catalog.entries:
        name = entry.endpoint.name
        state = models.get(name, {}).get("state", "disabled" if not entry.endpoint.enabled else "-")
        job = by_model.get(name, {})
        rows.append(
            (
                entry.endpoint_name,
                name,
                entry.endpoint.framework,
                job.get("model_status") or state,
                str(job.get("job_id") or ("this host" if job else "-")),
                _last_use(job),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        say("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


def _router_settings(root: Path, cluster: str, port: int | None) -> RouterSettings:
    path = root / "config" / "router" / f"{cluster}.yaml"
    if not path.exists():
        raise DeployError(f"{path.relative_to(root)} is missing: a router needs its settings file")
    settings = load_settings(path, root)
    if settings.executor != "engine":
        raise DeployError(
            f"{path.relative_to(root)} uses executor {settings.executor}; a deploy from this "
            "machine runs engines in-process (EXECUTOR=engine)"
        )
    if port is not None:
        settings = settings.model_copy(
            update={"listen": settings.listen.model_copy(update={"port": port})}
        )
    return settings


def _check_local_inputs(catalog: Catalog) -> None:
    """The runtimes and weights of every enabled endpoint must be on this machine."""
    missing = []
    for entry in catalog.enabled():
        spec = server_spec(entry, catalog.profile)
        for what, path in (("runtime", spec["python"]), ("weights", spec["weights"])):
            if not Path(path).exists():
                missing.append(f"{entry.file}: {what} {path} is missing")
    if missing:
        raise DeployError(
            "\n".join(missing) + "\nRun `make deploy` (it builds them: make backends local-models)."
        )


def _api_key(run: LocalDeployment, settings: RouterSettings) -> str:
    """The deployment's own API key: created once, kept (0600) so it can be shown again."""
    keys_file = Path(settings.auth.keys_file or ".state/router/api-keys.json")
    keys_file = keys_file if keys_file.is_absolute() else run.root / keys_file
    if run.key_file.exists() and keys_file.exists():
        return run.key_file.read_text().strip()
    key = create_api_key(keys_file, getpass.getuser())
    run.key_file.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(run.key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(key + "\n")
    return key


def _fingerprint(root: Path, cluster: str, settings: RouterSettings) -> str:
    digest = hashlib.sha256(json.dumps(settings.model_dump(mode="json"), sort_keys=True).encode())
    files = [root / "config" / "clusters" / f"{cluster}.yaml"]
    files += sorted((root / "endpoints" / cluster).glob("*.y*ml"))
    for folder in _FINGERPRINTED:
        files += sorted(p for p in (root / folder).rglob("*") if p.suffix in (".py", ".j2"))
    for path in files:
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def _start_router(run: LocalDeployment, catalog: Catalog, url: str, say: Say) -> None:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    if catalog.profile.scheduler == "slurm" and "SLURM_CONF" not in env:
        slurm_dir = Path(env.get("LOCAL_SLURM_DIR", run.root / ".state" / "slurm"))
        env["SLURM_CONF"] = str(slurm_dir / "slurm.conf")
    command = [sys.executable, "-m", "inference_bundle.router", "--config", str(run.settings_file)]
    command += ["--root", str(run.root)]
    with run.log_file.open("ab") as log:
        process = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=run.root,
            start_new_session=True,
        )
    run.pid_file.write_text(f"{process.pid}\n")
    say(f"{run.cluster}: router starting (pid {process.pid}, log {_shown(run.log_file, run)})")
    deadline = time.monotonic() + 60
    while not _healthy(url):
        if process.poll() is not None:
            tail = run.log_file.read_text(errors="replace").splitlines()[-15:]
            raise DeployError("the router exited at start; its log ends with:\n" + "\n".join(tail))
        if time.monotonic() > deadline:
            raise DeployError(f"the router did not answer on {url} within 60 s; see its log")
        time.sleep(0.2)
    say(f"{run.cluster}: router answering at {url}")


def _first_answer(url: str, cluster: str, entry: CatalogEntry, key: str, say: Say) -> None:
    """Send a real request and wait for its answer, saying the model's state meanwhile."""
    ep = entry.endpoint
    base = f"/resource_server/{cluster}/{ep.framework}/v1"
    body: dict[str, Any] = {"model": ep.name}
    if ep.kind == "embedding":
        path, body["input"] = f"{base}/embeddings", "ready?"
    else:
        path = f"{base}/chat/completions"
        body |= {"messages": [{"role": "user", "content": "ready?"}], "max_tokens": 1}
    say(f"{cluster}: waiting for a first answer from {ep.name} (a cold start takes a while)")
    outcome: dict[str, Any] = {}

    def ask() -> None:
        while True:
            try:
                outcome["answer"] = _post(url, path, body, key)
                return
            except urllib.error.HTTPError as err:
                if err.code != 503:
                    outcome["error"] = f"HTTP {err.code}: {err.read().decode(errors='replace')}"
                    return
            except OSError as err:
                outcome["error"] = f"the router did not answer: {err}"
                return

    worker = threading.Thread(target=ask, daemon=True)
    worker.start()
    began, last_state = time.monotonic(), ""
    while worker.is_alive():
        worker.join(timeout=3)
        state = _state_of(url, cluster, ep.framework, ep.name, key)
        if state and state != last_state:
            say(f"  {ep.name}: {state} ({time.monotonic() - began:.0f} s)")
            last_state = state
    if "error" in outcome:
        raise DeployError(f"{ep.name} did not answer: {outcome['error']}")
    say(f"  {ep.name}: answered after {time.monotonic() - began:.0f} s")


def _state_of(url: str, cluster: str, framework: str, model: str, key: str) -> str | None:
    try:
        listing = _get(url, "/resource_server/list-endpoints", key)
    except OSError:
        return None
    models = listing["clusters"].get(cluster, {}).get("frameworks", {}).get(framework, {})
    for entry in models.get("models", []):
        if entry["id"] == model:
            return str(entry["state"])
    return None


def _stop_router(run: LocalDeployment, say: Say) -> None:
    pid = run.router_pid()
    if pid is None:
        return
    # The router alone gets the signal: its shutdown stops its engines, which cancel their
    # blocks (scheduler jobs). Signalling its whole group would kill the engines'
    # interchanges first, and an engine in a bad state leaves its blocks running.
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 90
    while run.router_pid() is not None and time.monotonic() < deadline:
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)  # its own session: anything the router left behind
    leftovers = _processes_under(run.router_state_dir())
    for group in {g for g in map(_group_of, leftovers) if g is not None}:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGKILL)
    note = f"; cleaned up {len(leftovers)} leftover engine processes" if leftovers else ""
    say(f"{run.cluster}: router stopped (pid {pid}){note}")


def _processes_under(folder: Path) -> list[int]:
    """Processes whose command line names a path under ``folder`` (this deployment's)."""
    marker = str(folder).encode()
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if marker in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def _group_of(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except OSError:
        return None


def _print_usage(
    say: Say, url: str, cluster: str, catalog: Catalog, key: str, run: LocalDeployment
) -> None:
    chat = next((e for e in catalog.enabled() if e.endpoint.kind in ("chat", "base")), None)
    base = f"{url}/resource_server/{cluster}/vllm/v1"
    say("")
    say(f"API key: {key}")
    say(f"  (kept in {_shown(run.key_file, run)}; `make stop` stops everything)")
    if chat is None:
        return
    model = chat.endpoint.name
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": "Hello!"}]})
    say("")
    say("curl:")
    say(f"  curl {base}/chat/completions \\")
    say(f'    -H "Authorization: Bearer {key}" -H "Content-Type: application/json" \\')
    say(f"    -d '{body}'")
    say("")
    say("openai SDK:")
    say("  from openai import OpenAI")
    say(f'  client = OpenAI(api_key="{key}", base_url="{base}")')
    say(f'  reply = client.chat.completions.create(model="{model}",')
    say('      messages=[{"role": "user", "content": "Hello!"}], max_tokens=16)')
    say("  print(reply.choices[0].message.content)")


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/health", timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def _get(url: str, path: str, key: str) -> Any:
    request = urllib.request.Request(url + path, headers={"Authorization": f"Bearer {key}"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)


def _post(url: str, path: str, body: dict[str, Any], key: str) -> Any:
    request = urllib.request.Request(
        url + path,
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=600) as response:
        return json.load(response)


def _last_use(job: dict[str, Any]) -> str:
    if not job.get("last_used"):
        return "-"
    used = datetime.fromisoformat(job["last_used"]).timestamp()
    return f"{time.time() - used:.0f} s ago"


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def _shown(path: Path, run: LocalDeployment) -> str:
    try:
        return str(path.relative_to(run.root))
    except ValueError:
        return str(path)
