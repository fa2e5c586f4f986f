"""Cluster profiles (config/clusters/<name>.yaml): where and how a cluster runs models."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from inference_bundle.config.problems import (
    CatalogError,
    Problem,
    display_path,
    problems_from_validation,
)
from inference_bundle.config.yamlfile import load_mapping

Walltime = Annotated[str, Field(pattern=r"^\d{1,3}:[0-5]\d:[0-5]\d$", examples=["24:00:00"])]
Framework = Literal["vllm", "infinity"]
Scheduler = Literal["pbspro", "slurm", "local"]

PROVIDER_TYPES: dict[str, str] = {
    "pbspro": "PBSProProvider",
    "slurm": "SlurmProvider",
    "local": "LocalProvider",
}


class _Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ProviderSettings(_Settings):
    """What the Parsl provider is told: account, queue, resources per block."""

    account: str | None = None
    queue: str | None = Field(default=None, description="PBS queue")
    partition: str | None = Field(default=None, description="Slurm partition")
    select_options: str = Field(default="", description="PBS: appended to -l select")
    scheduler_options: str = Field(default="", description="extra #PBS or #SBATCH lines")
    walltime: Walltime = "24:00:00"
    cpus_per_node: int | None = Field(default=None, ge=1)
    exclusive: bool = Field(default=True, description="Slurm: whole nodes")
    launcher: Literal["SimpleLauncher", "SingleNodeLauncher", "MpiExecLauncher", "SrunLauncher"] = (
        "SimpleLauncher"
    )


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


class ClusterProfile(_Settings):
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
    idle_timeout_s: int = Field(default=7200, ge=1)
    batch_idle_timeout_s: int = Field(default=300, ge=1)
    start_timeout_s: int = Field(default=1800, ge=1)

    @property
    def provider_type(self) -> str:
        return PROVIDER_TYPES[self.scheduler]

    def resolve_paths(self, root: Path) -> ClusterProfile:
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


def valid_fields(model: type[BaseModel], prefix: str = "") -> dict[str, list[str]]:
    """Map each dotted section of ``model`` to the field names it accepts."""
    found = {prefix: sorted(model.model_fields)}
    for name, info in model.model_fields.items():
        annotation: Any = info.annotation
        for candidate in (annotation, *getattr(annotation, "__args__", ())):
            if isinstance(candidate, type) and issubclass(candidate, BaseModel):
                found |= valid_fields(candidate, f"{prefix}.{name}" if prefix else name)
    return found


def load_profile(path: Path, root: Path) -> ClusterProfile:
    """Load and validate one cluster profile; relative paths resolve against ``root``."""
    shown = display_path(path, root)
    data = load_mapping(path, shown)
    try:
        profile = ClusterProfile.model_validate(data)
    except ValidationError as err:
        raise CatalogError(
            problems_from_validation(err, shown, valid_fields(ClusterProfile))
        ) from None
    problems = []
    if profile.name != path.stem:
        problems.append(
            Problem(shown, "name", f"is {profile.name!r} but the file is {path.name}; match them")
        )
    if profile.scheduler == "pbspro":
        for field in ("account", "queue"):
            if not getattr(profile.provider, field):
                problems.append(
                    Problem(shown, f"provider.{field}", "is required for a PBS Pro cluster; set it")
                )
    if problems:
        raise CatalogError(problems)
    return profile.resolve_paths(root)
