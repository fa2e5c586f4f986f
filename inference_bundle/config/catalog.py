"""The endpoint catalog (endpoints/<cluster>/<slug>.yaml): one model endpoint a file.

Loading: every file of a cluster is read and checked (``config.endpoint_schema`` field by
field, ``config.endpoint_rules`` across fields and against the cluster's profile), and all
the problems found are raised at once.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from inference_bundle.config.endpoint_rules import (
    SLUG,
    duplicate_name_problems,
    endpoint_problems,
)
from inference_bundle.config.endpoint_schema import CatalogEntry, Endpoint, ServerArgs
from inference_bundle.config.problems import (
    CatalogError,
    Problem,
    display_path,
    problems_from_validation,
)
from inference_bundle.config.profiles import ClusterProfile, load_profile
from inference_bundle.config.warm_windows import WEEKDAYS, WarmWindow, Weekday
from inference_bundle.config.yamlfile import load_mapping

# The names callers imported from here before the schema, rules and warm windows moved out.
__all__ = [
    "SLUG",
    "WEEKDAYS",
    "Catalog",
    "CatalogEntry",
    "Endpoint",
    "ServerArgs",
    "WarmWindow",
    "Weekday",
    "cluster_names",
    "duplicate_name_problems",
    "endpoint_problems",
    "load_all",
    "load_catalog",
    "load_endpoint",
]


@dataclass(frozen=True)
class Catalog:
    """One cluster's profile and endpoints, validated together."""

    profile: ClusterProfile
    entries: tuple[CatalogEntry, ...]

    @property
    def cluster(self) -> str:
        return self.profile.name

    def enabled(self) -> Iterator[CatalogEntry]:
        return (e for e in self.entries if e.endpoint.enabled)


def load_endpoint(
    path: Path, cluster: str, root: Path
) -> tuple[CatalogEntry, frozenset[str], list[Problem]]:
    """Load one endpoint file: the entry, the fields that failed, and their problems.

    When fields fail validation the entry is built from the rest, unvalidated, so that
    the cross-field rules can still run on the fields that are sound.
    """
    shown = display_path(path, root)
    data = load_mapping(path, shown)
    try:
        endpoint = Endpoint.model_validate(data)
    except ValidationError as err:
        broken = frozenset(str(e["loc"][0]) for e in err.errors() if e["loc"])
        problems = problems_from_validation(err, shown, Endpoint)
        sound = {k: v for k, v in data.items() if k not in broken and k in Endpoint.model_fields}
        if "server_args" in sound:
            sound["server_args"] = ServerArgs.model_validate(sound["server_args"])
        endpoint = Endpoint.model_construct(**sound)
        entry = CatalogEntry(cluster=cluster, slug=path.stem, file=shown, endpoint=endpoint)
        return entry, broken, problems
    return (
        CatalogEntry(cluster=cluster, slug=path.stem, file=shown, endpoint=endpoint),
        frozenset(),
        [],
    )


def load_catalog(root: Path, cluster: str) -> Catalog:
    """Load one cluster's profile and endpoints; raise every problem found at once."""
    profile_path = root / "config" / "clusters" / f"{cluster}.yaml"
    if not profile_path.exists():
        known = ", ".join(cluster_names(root)) or "none"
        raise CatalogError(
            [
                Problem(
                    display_path(profile_path, root), "(file)", f"no such cluster; known: {known}"
                )
            ]
        )
    problems: list[Problem] = []
    profile: ClusterProfile | None = None
    try:
        profile = load_profile(profile_path, root)
    except CatalogError as err:
        problems += err.problems
    entries: list[CatalogEntry] = []
    for path in sorted((root / "endpoints" / cluster).glob("*.y*ml")):
        try:
            entry, broken, found = load_endpoint(path, cluster, root)
        except CatalogError as err:
            problems += err.problems
            continue
        problems += found
        if profile is not None:
            problems += endpoint_problems(entry, profile, broken)
        if not broken & {"model", "served_name", "aliases"}:
            entries.append(entry)
    problems += duplicate_name_problems(entries)
    if problems or profile is None:
        raise CatalogError(problems)
    return Catalog(profile=profile, entries=tuple(entries))


def cluster_names(root: Path) -> list[str]:
    """Every cluster with a profile under config/clusters."""
    return sorted(p.stem for p in (root / "config" / "clusters").glob("*.yaml"))


def load_all(root: Path) -> list[Catalog]:
    """Every cluster's catalog; endpoint folders without a profile are problems too."""
    problems: list[Problem] = []
    catalogs = []
    names = cluster_names(root)
    for folder in sorted(p for p in (root / "endpoints").iterdir() if p.is_dir()):
        if folder.name not in names:
            shown = display_path(folder, root)
            problems.append(
                Problem(
                    shown, "(folder)", f"no profile config/clusters/{folder.name}.yaml; add one"
                )
            )
    for name in names:
        try:
            catalogs.append(load_catalog(root, name))
        except CatalogError as err:
            problems += err.problems
    if problems:
        raise CatalogError(problems)
    return catalogs
