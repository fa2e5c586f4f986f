"""The Globus Compute side of a site deploy: entry points, their source hashes, credentials.

The entry points are registered with a source strategy (``PureSourceTextInspect``): what the
service stores is the function's own text, so its sha256 says whether it changed since the
registry's id was issued. Nothing here reaches the network except ``register_functions``.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

from inference_bundle.config.registry import RegisteredFunction, Registry

CLIENT_ID_VAR = "GLOBUS_COMPUTE_CLIENT_ID"
CLIENT_SECRET_VAR = "GLOBUS_COMPUTE_CLIENT_SECRET"
COMPUTE_DIR_VAR = "GLOBUS_COMPUTE_USER_DIR"


@dataclass(frozen=True)
class EntryPoint:
    """A registered function: where its source lives and which endpoints may run it."""

    name: str
    module: str
    runs_on: Literal["model", "batch", "jobs"]

    def load(self) -> Callable[..., Any]:
        function: Callable[..., Any] = getattr(importlib.import_module(self.module), self.name)
        return function


ENTRY_POINTS = (
    EntryPoint("serve", "node_runtime.entrypoints", "model"),
    EntryPoint("run_batch", "node_runtime.batch", "batch"),
    EntryPoint("list_bundle_jobs", "node_runtime.jobs", "jobs"),
)


class FunctionClient(Protocol):
    """The part of ``globus_compute_sdk.Client`` a deploy uses."""

    def register_function(self, function: Callable[..., Any]) -> str: ...


def serialized_source(function: Callable[..., Any]) -> str:
    """The function as the source strategy ships it (identifier, name, source text)."""
    from globus_compute_sdk.serialize import PureSourceTextInspect

    text: str = PureSourceTextInspect().serialize(function)
    return text


def source_sha256(function: Callable[..., Any]) -> str:
    return hashlib.sha256(serialized_source(function).encode()).hexdigest()


@dataclass(frozen=True)
class FunctionPlan:
    """One entry point: its current source hash and, when unchanged, its registered id."""

    entry: EntryPoint
    sha256: str
    registered_id: str | None

    @property
    def name(self) -> str:
        return self.entry.name

    @property
    def needs_registration(self) -> bool:
        return self.registered_id is None


def plan_functions(registry: Registry | None) -> list[FunctionPlan]:
    """Which entry points must be registered: new ones and those whose source changed."""
    plans = []
    for entry in ENTRY_POINTS:
        sha = source_sha256(entry.load())
        known = registry.functions.get(entry.name) if registry else None
        same = known is not None and known.source_sha256 == sha
        plans.append(FunctionPlan(entry, sha, known.id if same and known else None))
    return plans


def register_functions(
    plans: list[FunctionPlan], client: FunctionClient
) -> dict[str, RegisteredFunction]:
    """Register what changed; every entry point's id and source hash, old or new."""
    registered = {}
    for plan in plans:
        function_id = plan.registered_id or client.register_function(plan.entry.load())
        registered[plan.name] = RegisteredFunction(id=str(function_id), source_sha256=plan.sha256)
    return registered


def allowed_functions(ids: Mapping[str, str], runs_on: str) -> list[str]:
    """The function ids an endpoint of this kind may run, in entry-point order."""
    return [ids[e.name] for e in ENTRY_POINTS if e.runs_on == runs_on]


@contextlib.contextmanager
def compute_dir_env(compute_dir: Path) -> Iterator[None]:
    """Point the SDK's token storage (``<dir>/storage.db``) at ``compute_dir`` meanwhile."""
    before = os.environ.get(COMPUTE_DIR_VAR)
    os.environ[COMPUTE_DIR_VAR] = str(compute_dir)
    try:
        yield
    finally:
        if before is None:
            del os.environ[COMPUTE_DIR_VAR]
        else:
            os.environ[COMPUTE_DIR_VAR] = before


def missing_credentials(compute_dir: Path) -> str | None:
    """Why no Globus credentials are at hand, or None; no network call, no file written.

    A client identity (GLOBUS_COMPUTE_CLIENT_ID and _SECRET) fetches its tokens when first
    used, so both being set counts as credentials. Otherwise the login stored by
    ``globus-compute-endpoint login`` in ``<compute_dir>/storage.db`` must cover Globus
    Compute's scopes, as the endpoint itself checks.
    """
    client_id, secret = os.environ.get(CLIENT_ID_VAR), os.environ.get(CLIENT_SECRET_VAR)
    if client_id and secret:
        return None
    if secret:
        return f"{CLIENT_SECRET_VAR} is set without {CLIENT_ID_VAR}; set both or unset it"
    storage = compute_dir / "storage.db"
    if not storage.is_file():
        return f"no stored Globus login ({storage} does not exist)"
    from globus_compute_endpoint.auth import get_globus_app_with_scopes

    with compute_dir_env(compute_dir):
        try:
            app = get_globus_app_with_scopes()
            required = bool(app.login_required())
        except Exception as err:  # the SDK raises click, SQLite and token errors alike
            return f"the stored Globus login in {storage} cannot be read ({err})"
    if required:
        return f"the stored Globus login in {storage} lacks Globus Compute's scopes or expired"
    return None


def default_client(compute_dir: Path) -> FunctionClient:
    """The SDK client that registers functions as source text, with the stored login."""
    from globus_compute_sdk import Client
    from globus_compute_sdk.serialize import PureSourceTextInspect

    with compute_dir_env(compute_dir):
        client: FunctionClient = Client(
            code_serialization_strategy=PureSourceTextInspect(), do_version_check=False
        )
    return client
