"""The registry (config/registry/<cluster>.yaml): Globus Compute ids of endpoints and functions.

`make deploy CLUSTER=<name>` writes it after registering the entry points and configuring
the endpoints; operators commit it. The router reads it to address each endpoint.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from inference_bundle.config.problems import (
    Problem,
    RegistryError,
    display_path,
    problems_from_validation,
)
from inference_bundle.config.yamlfile import load_mapping

UUID_PATTERN = r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"


class RegisteredFunction(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=UUID_PATTERN)
    source_sha256: str = Field(
        pattern=r"^[0-9a-f]{64}$", description="unchanged: not re-registered"
    )


class Registry(BaseModel):
    """One cluster's ids, as the last deploy left them."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cluster: str
    runtime_version: str
    functions: dict[str, RegisteredFunction] = Field(default_factory=dict)
    endpoints: dict[str, str] = Field(default_factory=dict, description="endpoint name -> id")

    def function_id(self, name: str) -> str:
        if name not in self.functions:
            raise KeyError(
                f"function {name!r} is not registered for {self.cluster}; "
                f"run `make deploy CLUSTER={self.cluster}`"
            )
        return self.functions[name].id

    def endpoint_id(self, endpoint: str) -> str:
        if endpoint not in self.endpoints:
            raise KeyError(
                f"endpoint {endpoint!r} has no Globus Compute id in config/registry/"
                f"{self.cluster}.yaml; run `make deploy CLUSTER={self.cluster}`"
            )
        return self.endpoints[endpoint]


def registry_path(root: Path, cluster: str) -> Path:
    return root / "config" / "registry" / f"{cluster}.yaml"


def load_registry(root: Path, cluster: str) -> Registry:
    """Load a cluster's registry; problems name the file and the field."""
    path = registry_path(root, cluster)
    shown = display_path(path, root)
    if not path.exists():
        raise RegistryError(
            [Problem(shown, "(file)", f"missing; run `make deploy CLUSTER={cluster}` to create it")]
        )
    try:
        registry = Registry.model_validate(load_mapping(path, shown, RegistryError))
    except ValidationError as err:
        raise RegistryError(problems_from_validation(err, shown, Registry)) from None
    if registry.cluster != cluster:
        raise RegistryError(
            [Problem(shown, "cluster", f"is {registry.cluster!r}, not {cluster!r}")]
        )
    return registry
