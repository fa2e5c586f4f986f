"""`make status` for a local deployment: every endpoint with its state, job and last use.

A waiting endpoint also shows when it should be ready (ETA: the scheduler's planned start
plus the last start's length, as /list-endpoints gives them) and how long it took to start
last time.
"""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path
from typing import Any

from inference_bundle.config.catalog import load_catalog
from inference_bundle.config.settings import load_settings
from inference_bundle.ops.local_run import LocalDeployment, Say, read_or_empty
from inference_bundle.ops.router_client import RouterClient


def print_status(root: Path, cluster: str, say: Say = print) -> None:
    """Every endpoint of a local deployment with its state, job and last use, as a table."""
    run = LocalDeployment(root, cluster)
    catalog = load_catalog(root, cluster)
    pid = run.router_pid()
    if pid is None or not run.settings_file.exists():
        say(f"{cluster}: the router is not running (make deploy CLUSTER={cluster} starts it).")
        models: dict[str, dict[str, Any]] = {}
        jobs: dict[str, Any] = {"running": [], "queued": [], "others": []}
    else:
        settings = load_settings(run.settings_file, root)
        url = f"http://{settings.listen.host}:{settings.listen.port}"
        router = RouterClient(url, read_or_empty(run.key_file))
        listing = router.get("/resource_server/list-endpoints")
        frameworks = listing["clusters"].get(cluster, {}).get("frameworks", {})
        models = {m["id"]: m for f in frameworks.values() for m in f["models"]}
        jobs = router.get(f"/resource_server/{cluster}/jobs")
        say(f"{cluster}: router pid {pid} at {url}")
    by_model = {j["model"]: j for group in jobs.values() if isinstance(group, list) for j in group}
    rows = [
        (
            "ENDPOINT",
            "MODEL",
            "FRAMEWORK",
            "STATE",
            "REPLICAS",
            "JOB",
            "ETA",
            "LAST START",
            "LAST USE",
        )
    ]
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
                replicas_cell(models.get(name, {})),
                str(job.get("job_id") or ("this host" if job else "-")),
                eta_cell(models.get(name, {})),
                last_start_cell(models.get(name, {})),
                _last_use(job),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        say("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    for name, model in models.items():
        for line in replica_lines(name, model):
            say(line)


def replicas_cell(model: dict[str, Any]) -> str:
    """How many replicas the model has in each phase: "2 ready, 1 starting"; "-" if none."""
    counts: dict[str, int] = {}
    for replica in model.get("replicas", []):
        counts[replica["state"]] = counts.get(replica["state"], 0) + 1
    return ", ".join(f"{count} {state}" for state, count in counts.items()) or "-"


def replica_lines(name: str, model: dict[str, Any]) -> list[str]:
    """One line a replica, for a model with more than one."""
    replicas = model.get("replicas", [])
    if len(replicas) < 2:
        return []
    lines = []
    for replica in replicas:
        left = replica.get("walltime_left_s")
        lines.append(
            f"  {name} replica {replica['replica']}: {replica['state']} on "
            f"{replica.get('host') or 'a node to come'}, {replica.get('in_flight', 0)} in "
            f"flight" + ("" if left is None else f", walltime left {_span(left)}")
        )
    return lines


def eta_cell(model: dict[str, Any]) -> str:
    """When a waiting model should answer, from its /list-endpoints entry: "-" if unknown.

    ``ready ~10:04 UTC (in 4 min)``, with the scheduler's planned start and queue place
    where the estimate rests on them: ``start 10:00 UTC #2, ready ~10:04 UTC (in 54 min)``.
    """
    ready = model.get("estimated_ready_at")
    start = model.get("estimated_start")
    parts = []
    if start:
        place = model.get("queue_position")
        parts.append(f"start {_clock(start)}" + (f" #{place}" if place else ""))
    if ready:
        wait = model.get("estimated_wait_s")
        parts.append(f"ready ~{_clock(ready)}" + (f" (in {_span(wait)})" if wait else ""))
    return ", ".join(parts) or "-"


def last_start_cell(model: dict[str, Any]) -> str:
    """How long the model's last start took, as this router saw it."""
    last = model.get("last_start_s")
    return "-" if last is None else _span(last)


def _clock(iso: str) -> str:
    return f"{datetime.fromisoformat(iso):%H:%M} UTC"


def _span(seconds: float) -> str:
    total = round(seconds)
    if total < 120:
        return f"{total} s"
    if total < 7200:
        return f"{total // 60} min"
    return f"{total / 3600:.1f} h"


def _last_use(job: dict[str, Any]) -> str:
    if not job.get("last_used"):
        return "-"
    used = datetime.fromisoformat(job["last_used"]).timestamp()
    return f"{time.time() - used:.0f} s ago"
