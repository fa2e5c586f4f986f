"""Render a cluster's catalog into Globus Compute endpoint directories."""

from __future__ import annotations

import json
import math
import shlex
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2

from inference_bundle.config.catalog import Catalog, CatalogEntry
from inference_bundle.config.naming import IDLE_MARGIN_S, batch_twin_name, jobs_endpoint_name
from inference_bundle.config.problems import CatalogError, Problem
from inference_bundle.config.profiles import ClusterProfile

# The endpoint renders its user config template again with Jinja's default delimiters,
# so the bundle's own templates use other ones and leave {{ }} and {% %} untouched.
_DELIMITERS = {
    "variable_start_string": "<<",
    "variable_end_string": ">>",
    "block_start_string": "<%",
    "block_end_string": "%>",
    "comment_start_string": "<#",
    "comment_end_string": "#>",
}
_JINJA_MARKERS = ("{{", "{%", "{#")
ENDPOINT_FILES = {
    "config.yaml": "endpoint/config.yaml.j2",
    "user_config_template.yaml.j2": "endpoint/user_config_template.yaml.j2",
    "user_config_schema.json": "endpoint/user_config_schema.json.j2",
}
# The cluster's job-listing endpoint (`<cluster>-jobs`): a LocalProvider on the login node,
# where the scheduler's client commands work; it runs list_bundle_jobs for the router.
JOBS_ENDPOINT_FILES = {
    "config.yaml": "endpoint/config.yaml.j2",
    "user_config_template.yaml.j2": "jobs_endpoint/user_config_template.yaml.j2",
    "user_config_schema.json": "endpoint/user_config_schema.json.j2",
}
JOBS_MAX_IDLETIME_S = 3600
JOBS_WORKERS = 4
IDLE_HEARTBEATS_HARD = 5760


@dataclass(frozen=True)
class RenderedEndpoint:
    """The files of one Globus Compute endpoint directory."""

    name: str
    files: dict[str, str]


def template_environment(templates: Path) -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(templates),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
        **_DELIMITERS,  # type: ignore[arg-type]
    )
    env.filters["yaml"] = lambda value: json.dumps(value, ensure_ascii=False)
    env.filters["jinja_string"] = lambda value: repr(json.dumps(value))
    env.filters["shell"] = shlex.quote
    return env


def weights_locations(entry: CatalogEntry, profile: ClusterProfile) -> tuple[str, str | None]:
    """Where the weights live, and where a node keeps its local copy (None: load in place)."""
    weights = Path(entry.endpoint.weights)
    source = weights if weights.is_absolute() else Path(profile.paths.weights_root) / weights
    if profile.paths.staging_dir is None:
        return str(source), None
    return str(source), str(Path(profile.paths.staging_dir) / source.name)


def _jinja_free(profile: ClusterProfile, source: str) -> list[Problem]:
    fields = {"worker_init": profile.worker_init}
    fields |= {f"provider.{name}": text for name, text in profile.provider.free_text().items()}
    if profile.multi_node:
        fields["multi_node.hostnames"] = profile.multi_node.hostnames
        fields["multi_node.run_on_each_node"] = profile.multi_node.run_on_each_node
    return [
        Problem(source, field, "contains {{, {% or {#, which Globus Compute would read as Jinja")
        for field, value in fields.items()
        if any(marker in value for marker in _JINJA_MARKERS)
    ]


def _context(
    entry: CatalogEntry,
    profile: ClusterProfile,
    env: jinja2.Environment,
    batch: bool,
    allowed_functions: Sequence[str],
) -> dict[str, Any]:
    ep = entry.endpoint
    name = batch_twin_name(entry.endpoint_name) if batch else entry.endpoint_name
    idle_timeout = ep.idle_timeout_s or profile.idle_timeout_s
    max_idletime = profile.batch_idle_timeout_s if batch else idle_timeout + IDLE_MARGIN_S
    weights, staged = weights_locations(entry, profile)
    # A model spanning nodes starts Ray with the ray of its own runtime's environment.
    runtime = profile.runtimes.get(ep.framework)
    worker_init = env.get_template("worker_init.sh.j2").render(
        endpoint_name=name,
        site_init=profile.worker_init.strip(),
        state_dir=profile.paths.state_dir,
        weights=weights,
        staged_weights=staged,
        nodes=ep.nodes,
        run_on_each_node=profile.multi_node.run_on_each_node if profile.multi_node else "",
        ray_python=runtime.python if runtime else "",
    )
    return {
        "source": entry.file,
        "profile_source": f"config/clusters/{profile.name}.yaml",
        "endpoint_name": name,
        "display_name": f"{profile.name}: {ep.name}" + (" (batch)" if batch else ""),
        "heartbeat_period": profile.engine.heartbeat_period_s,
        "allowed_functions": list(allowed_functions),
        # The endpoint must outlive the engine's idle time, or it stops and kills the job.
        "idle_heartbeats_soft": math.ceil(max_idletime / profile.engine.heartbeat_period_s) + 2,
        "idle_heartbeats_hard": IDLE_HEARTBEATS_HARD,
        "max_workers_per_node": 1 if batch else profile.engine.max_workers_per_node,
        "cores_per_worker": profile.engine.cores_per_worker,
        "network_interface": profile.network_interface,
        "idle_timeout_s": idle_timeout,
        "max_idletime": max_idletime,
        "strategy_period": profile.engine.strategy_period_s,
        "scheduler": profile.scheduler,
        "provider": profile.provider,
        "walltime": ep.walltime or profile.provider.walltime,
        "nodes": ep.nodes,
        "gpus": ep.gpus,
        "max_replicas": 1 if batch else ep.replicas.max,
        # One worker pool on the first node: a multi-node model is one server spanning
        # the block through Ray, not one server per node. WrappedLauncher starts one already.
        "launcher": profile.provider.launcher
        if ep.nodes == 1 or profile.provider.launcher == "WrappedLauncher"
        else "SimpleLauncher",
        "worker_init": worker_init.strip(),
    }


def render_entry(
    entry: CatalogEntry,
    profile: ClusterProfile,
    env: jinja2.Environment,
    batch: bool = False,
    allowed_functions: Sequence[str] = (),
) -> RenderedEndpoint:
    """Render one endpoint directory (or its batch twin) in memory."""
    context = _context(entry, profile, env, batch, allowed_functions)
    files = {
        out: env.get_template(template).render(**context)
        for out, template in ENDPOINT_FILES.items()
    }
    return RenderedEndpoint(name=context["endpoint_name"], files=files)


def render_catalog(
    catalog: Catalog,
    templates: Path,
    allowed_functions: Sequence[str] = (),
    batch_functions: Sequence[str] = (),
) -> list[RenderedEndpoint]:
    """Every enabled endpoint of a cluster, plus a batch endpoint for batch-capable ones.

    ``allowed_functions`` (registered function ids) go into each model endpoint's
    config.yaml and ``batch_functions`` into each batch endpoint's; empty: any function.
    """
    problems = _jinja_free(catalog.profile, f"config/clusters/{catalog.cluster}.yaml")
    if problems:
        raise CatalogError(problems)
    env = template_environment(templates)
    rendered = []
    for entry in catalog.enabled():
        rendered.append(render_entry(entry, catalog.profile, env, False, allowed_functions))
        if entry.endpoint.batch:
            rendered.append(render_entry(entry, catalog.profile, env, True, batch_functions))
    return rendered


def render_jobs_endpoint(
    profile: ClusterProfile, templates: Path, allowed_functions: Sequence[str] = ()
) -> RenderedEndpoint:
    """The cluster's job-listing endpoint: one small LocalProvider block on the login node."""
    source = f"config/clusters/{profile.name}.yaml"
    problems = _jinja_free(profile, source)
    if problems:
        raise CatalogError(problems)
    env = template_environment(templates)
    name = jobs_endpoint_name(profile.name)
    heartbeat = profile.engine.heartbeat_period_s
    context = {
        "source": source,
        "profile_source": source,
        "endpoint_name": name,
        "display_name": f"{profile.name}: job listing",
        "heartbeat_period": heartbeat,
        "allowed_functions": list(allowed_functions),
        "idle_heartbeats_soft": math.ceil(JOBS_MAX_IDLETIME_S / heartbeat) + 2,
        "idle_heartbeats_hard": IDLE_HEARTBEATS_HARD,
        "max_workers_per_node": JOBS_WORKERS,
        "cores_per_worker": profile.engine.cores_per_worker,
        "max_idletime": JOBS_MAX_IDLETIME_S,
        "strategy_period": profile.engine.strategy_period_s,
        "scheduler": "local",  # no user options: the schema then allows none
        "max_replicas": 0,
        "worker_init": profile.worker_init.strip(),
    }
    files = {
        out: env.get_template(template).render(**context)
        for out, template in JOBS_ENDPOINT_FILES.items()
    }
    return RenderedEndpoint(name=name, files=files)


def write_rendered(rendered: list[RenderedEndpoint], out: Path) -> None:
    """Replace ``out`` with exactly these endpoint directories."""
    if out.exists():
        shutil.rmtree(out)
    for endpoint in rendered:
        folder = out / endpoint.name
        folder.mkdir(parents=True)
        for name, text in endpoint.files.items():
            (folder / name).write_text(text, encoding="utf-8")
