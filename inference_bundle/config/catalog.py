"""The endpoint catalog (endpoints/<cluster>/<slug>.yaml): one model endpoint a file."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import time
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from inference_bundle.config.frameworks import FRAMEWORKS, Framework, Kind
from inference_bundle.config.problems import (
    CatalogError,
    Problem,
    display_path,
    problems_from_validation,
)
from inference_bundle.config.profiles import ClusterProfile, Walltime, load_profile
from inference_bundle.config.yamlfile import load_mapping

SLUG = re.compile(r"^[a-z0-9][a-z0-9-]*$")
Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
WEEKDAYS: tuple[Weekday, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_CLOCK_TIME = re.compile(r"^([01]?\d|2[0-3]):[0-5]\d$")


def _clock_time(value: object, end: bool) -> str:
    """A "HH:MM" time of day; "24:00" too where it ends a window (the end of the day)."""
    if isinstance(value, int) and not isinstance(value, bool):
        # YAML 1.1 reads an unquoted 18:00 as the base-60 number 1080.
        hours, minutes = divmod(value, 60)
        raise ValueError(
            f"is the number {value}: YAML reads an unquoted {hours}:{minutes:02d} as a "
            f'number; quote it, e.g. "{hours:02d}:{minutes:02d}"'
        )
    if not isinstance(value, str) or not (_CLOCK_TIME.match(value) or (end and value == "24:00")):
        last = "24:00" if end else "23:59"
        raise ValueError(f'must be a time of day "HH:MM" from "00:00" to "{last}" (got {value!r})')
    return value.zfill(5)  # "8:00" as "08:00"


class WarmWindow(BaseModel):
    """When an endpoint is kept warm: days of the week and a time of day, in the cluster's
    time zone (its profile's ``timezone``).

    A window whose ``to`` is earlier than its ``from`` runs past midnight into the next day;
    ``days`` are the days it opens.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    days: list[Weekday] = Field(default_factory=lambda: list(WEEKDAYS), min_length=1)
    from_: str = Field(alias="from", description='time of day it opens, "08:00"')
    to: str = Field(description='time of day it closes, "18:00"; "24:00" is midnight')

    @field_validator("from_", mode="before")
    @classmethod
    def _opens(cls, value: object) -> str:
        return _clock_time(value, end=False)

    @field_validator("to", mode="before")
    @classmethod
    def _closes(cls, value: object, info: ValidationInfo) -> str:
        closes = _clock_time(value, end=True)
        opens = info.data.get("from_")  # absent when from itself is wrong
        if closes == opens:
            raise ValueError(
                f'is the same as from ({opens}); for the whole day write from: "00:00", to: "24:00"'
            )
        return closes

    @property
    def opening(self) -> time:
        return time.fromisoformat(self.from_)

    @property
    def closing(self) -> time:
        """The time of day it closes ("24:00" is midnight, then on the next day)."""
        return time(0, 0) if self.to == "24:00" else time.fromisoformat(self.to)

    @property
    def closes_next_day(self) -> bool:
        """Whether it closes on the day after it opens (past midnight, or at "24:00")."""
        return self.closing <= self.opening


class ServerArgs(BaseModel):
    """Backend server options the catalog may set; anything else goes in ``extra``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_model_len: int | None = Field(default=None, ge=16)
    dtype: Literal["auto", "float16", "bfloat16", "float32"] = "auto"
    trust_remote_code: bool = False
    tool_call_parser: str | None = None
    reasoning_parser: str | None = None
    gpu_memory_utilization: float | None = Field(default=None, gt=0, le=1)
    extra: list[str] = Field(default_factory=list, description="further flags, passed as is")


class Endpoint(BaseModel):
    """One model endpoint as an operator writes it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = Field(pattern=r"^[\w.-]+/[\w.-]+$", description="Hugging Face name")
    served_name: str | None = Field(default=None, description="defaults to model")
    aliases: list[str] = Field(default_factory=list, description="older names still accepted")
    framework: Framework
    kind: Kind
    weights: str = Field(min_length=1, description="folder under weights_root, or absolute")
    gpus: int = Field(ge=0, description="GPUs used on each node")
    nodes: int = Field(default=1, ge=1)
    tensor_parallel: int = Field(default=1, ge=1)
    pipeline_parallel: int = Field(default=1, ge=1)
    server_args: ServerArgs = ServerArgs()
    batch: bool = Field(default=False, description="the guide's B: batch-capable")
    idle_timeout_s: int | None = Field(default=None, ge=1, description="default: the profile's")
    walltime: Walltime | None = Field(default=None, description="default: the profile's")
    groups: list[str] = Field(default_factory=list, description="allowed groups; empty: all")
    enabled: bool = True
    disabled_reason: str | None = None
    keep_warm: list[WarmWindow] = Field(
        default_factory=list,
        description="when the router keeps the model started (cluster time zone); empty: "
        "only on demand",
        examples=[[{"days": ["mon", "tue", "wed", "thu", "fri"], "from": "08:00", "to": "18:00"}]],
    )

    @property
    def name(self) -> str:
        """The name users ask for."""
        return self.served_name or self.model

    @property
    def names(self) -> list[str]:
        return [self.name, *self.aliases]


@dataclass(frozen=True)
class CatalogEntry:
    """An endpoint with where it came from."""

    cluster: str
    slug: str
    file: str
    endpoint: Endpoint

    @property
    def endpoint_name(self) -> str:
        """The Globus Compute endpoint's name (its directory under ~/.globus_compute)."""
        return f"{self.cluster}-{self.slug}"


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


def endpoint_problems(
    entry: CatalogEntry, profile: ClusterProfile, broken: frozenset[str] = frozenset()
) -> list[Problem]:
    """The cross-field rules that pydantic's per-field checks cannot see.

    ``broken`` names top-level fields that already failed validation: rules that read
    them are skipped, so a file's other mistakes are still reported in the same pass.
    """
    ep, file, cluster = entry.endpoint, entry.file, profile.name
    problems: list[Problem] = []

    def add(field: str, message: str) -> None:
        problems.append(Problem(file, field, message))

    def usable(*fields: str) -> bool:
        return broken.isdisjoint(fields)

    if not SLUG.match(entry.slug):
        add("(file name)", "use lower-case letters, digits and dashes, e.g. llama-3-1-8b.yaml")
    if usable("gpus", "nodes", "tensor_parallel", "pipeline_parallel"):
        problems += _gpu_problems(ep, file, profile)
    if usable("batch", "nodes") and ep.batch and ep.nodes > 1:
        add("batch", f"batches need a single-node model but nodes is {ep.nodes}; set batch: false")
    if usable("framework", "kind"):
        problems += _kind_problems(ep, file)
    if usable("framework") and ep.framework not in profile.runtimes:
        add(
            "framework",
            f"{cluster} has no {ep.framework} runtime; add it to the profile's runtimes",
        )
    if usable("framework", "server_args"):
        problems += _server_arg_problems(ep, file)
    if usable("nodes") and ep.nodes > 1 and profile.multi_node is None:
        add("nodes", f"is {ep.nodes} but {cluster} has no multi_node settings; use 1 node")
    if usable("enabled", "disabled_reason"):
        if not ep.enabled and not ep.disabled_reason:
            add("disabled_reason", "a disabled endpoint needs a reason users can read; add one")
        if ep.enabled and ep.disabled_reason:
            add("disabled_reason", "is set but enabled is true; remove it or set enabled: false")
    return problems


def _kind_problems(ep: Endpoint, file: str) -> list[Problem]:
    """A framework serves only the model kinds its entry lists."""
    served = FRAMEWORKS[ep.framework].kinds
    if ep.kind in served:
        return []
    others = [f.name for f in FRAMEWORKS.values() if ep.kind in f.kinds]
    message = f"{ep.framework} serves {' or '.join(served)} models only, but kind is {ep.kind}"
    return [
        Problem(file, "framework", message + (f"; use {' or '.join(others)}" if others else ""))
    ]


def _server_arg_problems(ep: Endpoint, file: str) -> list[Problem]:
    """Server options set in the catalog that the endpoint's framework does not take."""
    takes = FRAMEWORKS[ep.framework].server_args
    problems = []
    for arg in sorted(set(ServerArgs.model_fields) - takes):
        default = ServerArgs.model_fields[arg].get_default(call_default_factory=True)
        if getattr(ep.server_args, arg) != default:
            owners = [f.label for f in FRAMEWORKS.values() if arg in f.server_args]
            problems.append(
                Problem(
                    file,
                    f"server_args.{arg}",
                    f"is a {' or '.join(owners)} option; remove it for {ep.framework}",
                )
            )
    return problems


def _gpu_problems(ep: Endpoint, file: str, profile: ClusterProfile) -> list[Problem]:
    """TP × PP must fit the GPUs the endpoint asks for, and those must exist on a node."""
    cluster, world = profile.name, ep.tensor_parallel * ep.pipeline_parallel
    if profile.gpus_per_node == 0:
        problems = []
        if ep.gpus:
            problems.append(Problem(file, "gpus", f"is {ep.gpus} but {cluster} has no GPUs; set 0"))
        if world > 1:
            problems.append(
                Problem(
                    file, "tensor_parallel", f"TP × PP is {world} but {cluster} runs on CPUs; use 1"
                )
            )
        return problems
    if ep.gpus > profile.gpus_per_node:
        return [
            Problem(
                file,
                "gpus",
                f"is {ep.gpus} but {cluster} nodes have {profile.gpus_per_node} GPUs; "
                "lower gpus or add nodes",
            )
        ]
    if world > ep.gpus * ep.nodes:
        return [
            Problem(
                file,
                "tensor_parallel",
                f"TP {ep.tensor_parallel} × PP {ep.pipeline_parallel} = {world} GPUs but the "
                f"endpoint has {ep.gpus} GPUs × {ep.nodes} node(s) on {cluster}; lower "
                "tensor_parallel or pipeline_parallel, or raise gpus or nodes",
            )
        ]
    return []


def duplicate_name_problems(entries: list[CatalogEntry]) -> list[Problem]:
    """Served names and aliases must be unique within a cluster."""
    owners: dict[str, CatalogEntry] = {}
    problems = []
    for entry in entries:
        fields = ["served_name" if entry.endpoint.served_name else "model"]
        fields += [f"aliases[{i}]" for i in range(len(entry.endpoint.aliases))]
        for field, name in zip(fields, entry.endpoint.names, strict=True):
            first = owners.setdefault(name, entry)
            if first is not entry:
                problems.append(
                    Problem(entry.file, field, f"{name!r} is already served by {first.file}")
                )
    return problems


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
