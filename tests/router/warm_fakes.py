"""A route with a warm schedule, its cluster's maintenance, and a clock the test moves."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from inference_bundle.config.catalog import WarmWindow, load_catalog
from inference_bundle.config.profiles import MaintenanceWindow
from inference_bundle.rendering.specs import server_spec
from inference_bundle.router.fleet.maintenance import Maintenance
from inference_bundle.router.fleet.states import ModelState, ModelStatus
from inference_bundle.router.routes import Route

ROOT = Path(__file__).resolve().parents[2]
TINY = "local/tiny-llama"


@dataclass
class Clock:
    """Epoch seconds that only move when the test says."""

    now: float

    def __call__(self) -> float:
        return self.now

    def at(self, iso: str) -> float:
        self.now = datetime.fromisoformat(iso).timestamp()
        return self.now


def utc(iso: str) -> datetime:
    return datetime.fromisoformat(iso).astimezone(UTC)


def scheduled(
    keep_warm: list[dict[str, Any]],
    clock: Clock,
    maintenance: list[dict[str, str]] | None = None,
    timezone: str = "America/Chicago",
    idle_timeout_s: int = 600,
    start_timeout_s: int = 300,
) -> tuple[Route, Maintenance]:
    """The local tiny model with ``keep_warm``, on a local cluster in ``timezone``."""
    catalog = load_catalog(ROOT, "local")
    [entry] = [e for e in catalog.entries if e.endpoint.name == TINY]
    endpoint = entry.endpoint.model_copy(
        update={
            "keep_warm": [WarmWindow.model_validate(w) for w in keep_warm],
            "idle_timeout_s": idle_timeout_s,
        }
    )
    entry = replace(entry, endpoint=endpoint)
    profile = catalog.profile.model_copy(
        update={
            "timezone": timezone,
            "start_timeout_s": start_timeout_s,
            "maintenance": [MaintenanceWindow.model_validate(w) for w in maintenance or []],
        }
    )
    route = Route("local", entry, server_spec(entry, profile))
    return route, Maintenance({"local": profile}, clock=clock)


def status(state: ModelState, last_start_s: float | None = None) -> ModelStatus:
    return ModelStatus(state, 0.0, None, 0, 0, last_start_s=last_start_s)
