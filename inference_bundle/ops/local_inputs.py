"""What a deploy from this machine starts from: router settings, local files, API key.

Each is checked before anything starts, and their fingerprint says whether a running
router already serves exactly this input.
"""

from __future__ import annotations

import getpass
import hashlib
import json
from pathlib import Path

from inference_bundle.config.catalog import Catalog
from inference_bundle.config.settings import RouterSettings, load_settings
from inference_bundle.ops.local_run import DeployError, LocalDeployment
from inference_bundle.rendering.specs import server_spec
from inference_bundle.router.auth.keys import create_api_key, holds_key
from inference_bundle.router.store.private_files import private_folder, tighten, write_private

# Source folders whose change means the router must be restarted to serve the new code.
_FINGERPRINTED = ("inference_bundle", "functions/node_runtime", "templates")


def router_settings(root: Path, cluster: str, port: int | None) -> RouterSettings:
    """The cluster's router settings, which must use the engine executor; port overrides."""
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


def check_local_inputs(catalog: Catalog) -> None:
    """The runtimes and weights of every enabled endpoint must be on this machine."""
    missing = []
    for entry in catalog.enabled():
        spec = server_spec(entry, catalog.profile)
        for what, path in (("runtime", spec.python), ("weights", spec.weights)):
            if not Path(path).exists():
                missing.append(f"{entry.file}: {what} {path} is missing")
    if missing:
        raise DeployError(
            "\n".join(missing) + "\nRun `make deploy` (it builds them: make backends local-models)."
        )


def api_key(run: LocalDeployment, settings: RouterSettings) -> str:
    """The deployment's own API key: created once, kept (0600) so it can be shown again."""
    configured = settings.auth.keys_file if settings.auth.mode == "keys" else None
    keys_file = Path(configured or ".state/router/api-keys.json")
    keys_file = keys_file if keys_file.is_absolute() else run.root / keys_file
    if run.key_file.exists():
        tighten(run.key_file)  # a secret: this account's only, however it was left
        saved = run.key_file.read_text().strip()
        if holds_key(keys_file, saved):  # not revoked (`bundle keys revoke`) since
            return saved
    key = create_api_key(keys_file, getpass.getuser())
    private_folder(run.key_file.parent)
    write_private(run.key_file, key + "\n")  # a secret: this account's only
    return key


def fingerprint(root: Path, cluster: str, settings: RouterSettings) -> str:
    """A digest of the settings, the cluster's catalog and the code the router runs."""
    digest = hashlib.sha256(json.dumps(settings.model_dump(mode="json"), sort_keys=True).encode())
    files = [root / "config" / "clusters" / f"{cluster}.yaml"]
    files += sorted((root / "endpoints" / cluster).glob("*.y*ml"))
    for folder in _FINGERPRINTED:
        files += sorted(p for p in (root / folder).rglob("*") if p.suffix in (".py", ".j2"))
    for path in files:
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()
