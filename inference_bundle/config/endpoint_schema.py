"""What one endpoint file (endpoints/<cluster>/<slug>.yaml) may say, field by field.

pydantic checks each field; the rules that relate fields to each other and to the cluster's
profile are in ``config.endpoint_rules``, the loading in ``config.catalog``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from inference_bundle.config.kinds import Framework, Kind
from inference_bundle.config.profiles import Walltime
from inference_bundle.config.warm_windows import WarmWindow


class ServerArgs(BaseModel):
    """Backend server options the catalog may set; anything else goes in ``extra``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_model_len: int | None = Field(default=None, ge=16)
    dtype: Literal["auto", "float16", "bfloat16", "float32"] = "auto"
    trust_remote_code: bool = False
    tool_call_parser: str | None = None
    reasoning_parser: str | None = None
    gpu_memory_utilization: float | None = Field(default=None, gt=0, le=1)
    max_num_seqs: int | None = Field(
        default=None,
        ge=1,
        description="requests one vLLM server runs at once (its own queue holds the rest); "
        "the router keeps a full model's requests in its fair queue instead",
    )
    extra: list[str] = Field(default_factory=list, description="further flags, passed as is")


class Replicas(BaseModel):
    """How many servers, each on a node of its own, may serve the model at once."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    min: int = Field(default=0, ge=0, description="kept started; 0: started on demand")
    max: int = Field(default=1, ge=1, description="at most this many nodes at once")


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
    # The node runtime's timeouts (its ServerSpec); each defaults to the profile's.
    idle_timeout_s: int | None = Field(default=None, ge=1, description="default: the profile's")
    start_timeout_s: int | None = Field(default=None, ge=1, description="default: the profile's")
    request_timeout_s: int | None = Field(
        default=None, ge=1, description="bounds one request at its server; default: the profile's"
    )
    stop_grace_s: int | None = Field(default=None, ge=0, description="default: the profile's")
    walltime: Walltime | None = Field(default=None, description="default: the profile's")
    groups: list[str] = Field(default_factory=list, description="allowed groups; empty: all")
    cache_isolation: Literal["user", "group", "none"] = Field(
        default="user",
        description="whose requests may share the server's prefix cache: each user's own "
        "(default), each group's, or everyone's",
    )
    replicas: Replicas = Replicas()
    target_in_flight: int | None = Field(
        default=None,
        ge=1,
        description="requests one server runs at once before it counts as full (more are "
        "asked for past it); default: the framework's",
    )
    scale_in_idle_s: int = Field(
        default=300,
        ge=1,
        description="a replica above min is drained and stopped once the model's demand has "
        "fitted in one fewer replica for this long",
    )
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
