"""Cluster profiles (config/clusters/<name>.yaml): where and how a cluster runs models."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Annotated, ClassVar, Literal, Self
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from inference_bundle.config.kinds import Framework
from inference_bundle.config.problems import (
    CatalogError,
    Problem,
    display_path,
    problems_from_validation,
)
from inference_bundle.config.yamlfile import load_mapping

Walltime = Annotated[str, Field(pattern=r"^\d{1,3}:[0-5]\d:[0-5]\d$", examples=["24:00:00"])]
Scheduler = Literal["pbspro", "slurm", "local"]


class _Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _ProviderSettings(_Settings):
    """What every Parsl provider is told: how long a block runs and how workers start."""

    parsl_type: ClassVar[str]
    walltime: Walltime = "24:00:00"
    launcher: Literal[
        "SimpleLauncher", "SingleNodeLauncher", "MpiExecLauncher", "SrunLauncher", "WrappedLauncher"
    ] = "SimpleLauncher"
    launcher_prepend: str | None = Field(
        default=None,
        validate_default=True,  # so that a WrappedLauncher without one is named
        description="WrappedLauncher only: the shell words put before the worker pool's command, "
        "which then runs inside what they start (a container, a network namespace)",
        examples=["apptainer exec /soft/images/endpoint.sif"],
    )

    @field_validator("launcher_prepend")
    @classmethod
    def _prepend_goes_with_wrapped(cls, value: str | None, info: ValidationInfo) -> str | None:
        launcher = info.data.get("launcher")  # absent when the launcher itself is wrong
        if launcher == "WrappedLauncher" and not (value or "").strip():
            raise ValueError(
                "is required with launcher WrappedLauncher; set it to the command that the "
                "worker pool's command is appended to"
            )
        if launcher not in (None, "WrappedLauncher") and value is not None:
            raise ValueError(
                f"is only used by launcher WrappedLauncher (launcher is {launcher}); "
                "remove it or set launcher: WrappedLauncher"
            )
        return value

    def free_text(self) -> dict[str, str]:
        """Text the rendered files carry as it is, by field name (must hold no Jinja)."""
        return {"launcher_prepend": self.launcher_prepend or ""}


class _BatchProviderSettings(_ProviderSettings):
    """A batch scheduler's provider: job script lines and the cores of a node."""

    scheduler_options: str = Field(default="", description="extra #PBS or #SBATCH lines")
    cpus_per_node: int | None = Field(default=None, ge=1)

    def free_text(self) -> dict[str, str]:
        """Text the rendered files carry as it is, by field name (must hold no Jinja)."""
        return super().free_text() | {"scheduler_options": self.scheduler_options}


class PbsProProviderSettings(_BatchProviderSettings):
    """PBS Pro (PBSProProvider): the allocation and queue are required."""

    parsl_type: ClassVar[str] = "PBSProProvider"
    # What an operator reads for a required field left out, empty or null.
    missing_sentence: ClassVar[str] = "is required for a PBS Pro cluster; set it"
    account: str = Field(min_length=1)
    queue: str = Field(min_length=1, description="PBS queue")
    select_options: str = Field(default="", description="appended to -l select")

    def free_text(self) -> dict[str, str]:
        """Text the rendered files carry as it is, by field name (must hold no Jinja)."""
        return super().free_text() | {"select_options": self.select_options}


class SlurmProviderSettings(_BatchProviderSettings):
    """Slurm (SlurmProvider): account and partition when the site needs them."""

    parsl_type: ClassVar[str] = "SlurmProvider"
    account: str | None = None
    partition: str | None = Field(default=None, description="Slurm partition")
    exclusive: bool = Field(default=True, description="whole nodes")


class LocalProviderSettings(_ProviderSettings):
    """This machine (LocalProvider): no scheduler, nothing to ask one for."""

    parsl_type: ClassVar[str] = "LocalProvider"


ProviderSettings = PbsProProviderSettings | SlurmProviderSettings | LocalProviderSettings


class EngineSettings(_Settings):
    """GlobusComputeEngine sizing. Workers only wait on HTTP, so they need few cores."""

    max_workers_per_node: int = Field(default=32, ge=1)
    cores_per_worker: float = Field(default=0.1, gt=0)
    strategy_period_s: float = Field(default=5.0, gt=0)
    heartbeat_period_s: int = Field(default=30, ge=5)


class RuntimeSettings(_Settings):
    """How a node reaches a backend: the interpreter that has vllm or infinity_emb.

    ``${BUNDLE_ROOT}`` in an ``env`` value stands for the repository root.
    """

    python: str
    env: dict[str, str] = Field(default_factory=dict)


class PathSettings(_Settings):
    """Filesystem locations; relative paths are taken from the repository root."""

    weights_root: str
    staging_dir: str | None = Field(
        default=None, description="node-local copy of the weights; null loads in place"
    )
    state_dir: str = Field(description="per-node server state, locks and logs")
    batch_input_roots: list[str] = Field(min_length=1)
    batch_output_root: str
    endpoints_dir: str = "~/.globus_compute"


class MultiNodeSettings(_Settings):
    """Shell snippets for jobs that span several nodes (Ray across the block)."""

    hostnames: str = Field(description="prints the job's hosts, one a line")
    run_on_each_node: str = Field(description="prefix that runs a command once per node")


class MaintenanceWindow(_Settings):
    """A time the cluster is down: no model starts that it would cut, a message until it ends."""

    start: datetime = Field(examples=["2026-12-15T08:00:00-06:00"])
    end: datetime
    reason: str = Field(min_length=1, description="what users read, e.g. quarterly maintenance")

    @field_validator("start", "end")
    @classmethod
    def _has_offset(cls, value: datetime) -> datetime:
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(
                f"{value.isoformat()} has no UTC offset; write it with one, e.g. "
                f"{value.strftime('%Y-%m-%dT%H:%M:%S')}-06:00 or ...Z for UTC"
            )
        return value

    @field_validator("end")
    @classmethod
    def _after_start(cls, value: datetime, info: ValidationInfo) -> datetime:
        start = info.data.get("start")  # absent when start itself is wrong
        if start is not None and value <= start:
            raise ValueError(f"must be after start ({start.isoformat()}); got {value.isoformat()}")
        return value


class _ClusterProfile(_Settings):
    """One cluster: its scheduler, resources, runtimes and paths."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]*$")
    description: str
    scheduler: Scheduler
    gpus_per_node: int = Field(ge=0)
    provider: ProviderSettings
    engine: EngineSettings = EngineSettings()
    network_interface: str | None = None
    worker_init: str = ""
    endpoint_python: str | None = Field(
        default=None,
        description="python of the environment that runs the endpoints and their workers "
        "(the one worker_init activates; has globus-compute-endpoint); make deploy installs "
        "the node runtime into it",
    )
    runtimes: dict[Framework, RuntimeSettings]
    paths: PathSettings
    multi_node: MultiNodeSettings | None = None
    max_replicas: int = Field(
        default=1,
        ge=1,
        description="nodes one model may hold at once (each replica is a job of its own); "
        "a cluster whose jobs share one machine keeps 1",
    )
    # The node runtime's timeouts (its ServerSpec), for every endpoint that sets none itself.
    idle_timeout_s: int = Field(default=7200, ge=1, description="stop a server unused this long")
    batch_idle_timeout_s: int = Field(default=300, ge=1)
    start_timeout_s: int = Field(
        default=1800, ge=1, description="a server not ready this long after its start fails"
    )
    request_timeout_s: int = Field(
        default=600, ge=1, description="one request's bound at its server; past it, a 504"
    )
    stop_grace_s: int = Field(
        default=10, ge=0, description="from SIGTERM to SIGKILL when a server is stopped"
    )
    timezone: str = Field(
        default="UTC",
        description="IANA time zone of the site: endpoints' keep_warm times are read in it",
        examples=["America/Chicago"],
    )
    maintenance: list[MaintenanceWindow] = Field(
        default_factory=list, description="scheduled downtimes; past ones may stay"
    )

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"{value!r} is not a time zone this system knows; use an IANA name such as "
                "America/Chicago, or UTC"
            ) from None
        return value

    @property
    def zone(self) -> ZoneInfo:
        """The site's time zone."""
        return ZoneInfo(self.timezone)

    @property
    def provider_type(self) -> str:
        """The Parsl provider class the rendered endpoints name."""
        return self.provider.parsl_type

    def resolve_paths(self, root: Path) -> Self:
        """The same profile with relative paths made absolute against ``root``."""

        def absolute(value: str) -> str:
            path = Path(value)
            if value.startswith("~") or path.is_absolute():
                return value
            return str(root / path)

        paths = self.paths.model_copy(
            update={
                "weights_root": absolute(self.paths.weights_root),
                "staging_dir": absolute(self.paths.staging_dir) if self.paths.staging_dir else None,
                "state_dir": absolute(self.paths.state_dir),
                "batch_input_roots": [absolute(p) for p in self.paths.batch_input_roots],
                "batch_output_root": absolute(self.paths.batch_output_root),
            }
        )
        runtimes = {
            name: rt.model_copy(
                update={
                    "python": absolute(rt.python),
                    "env": {k: v.replace("${BUNDLE_ROOT}", str(root)) for k, v in rt.env.items()},
                }
            )
            for name, rt in self.runtimes.items()
        }
        endpoint_python = absolute(self.endpoint_python) if self.endpoint_python else None
        return self.model_copy(
            update={"paths": paths, "runtimes": runtimes, "endpoint_python": endpoint_python}
        )


class PbsProProfile(_ClusterProfile):
    """A PBS Pro cluster."""

    scheduler: Literal["pbspro"]
    provider: PbsProProviderSettings


class SlurmProfile(_ClusterProfile):
    """A Slurm cluster."""

    scheduler: Literal["slurm"]
    provider: SlurmProviderSettings


class LocalProfile(_ClusterProfile):
    """This machine, without a scheduler."""

    scheduler: Literal["local"]
    provider: LocalProviderSettings


# The scheduler tag picks the profile's shape, so pydantic names a missing or foreign
# provider field itself (a Slurm partition under a PBS Pro profile, say).
ClusterProfile = Annotated[
    PbsProProfile | SlurmProfile | LocalProfile, Field(discriminator="scheduler")
]
_PROFILE: TypeAdapter[ClusterProfile] = TypeAdapter(ClusterProfile)


def load_profile(path: Path, root: Path) -> ClusterProfile:
    """Load and validate one cluster profile; relative paths resolve against ``root``."""
    shown = display_path(path, root)
    data = load_mapping(path, shown)
    try:
        profile = _PROFILE.validate_python(data)
    except ValidationError as err:
        raise CatalogError(problems_from_validation(err, shown, ClusterProfile)) from None
    if profile.name != path.stem:
        raise CatalogError(
            [Problem(shown, "name", f"is {profile.name!r} but the file is {path.name}; match them")]
        )
    return profile.resolve_paths(root)
