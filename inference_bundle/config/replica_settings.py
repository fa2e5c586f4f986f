"""The router's settings for growing and shrinking models' replicas (``replicas:``).

Per model, the catalog says how many replicas it may have and when one is full
(``replicas``, ``target_in_flight``, ``scale_in_idle_s``); these are the router's pace.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class ReplicaSettings(BaseModel):
    """How the router paces scale-out, scale-in, walltime rotation and lost nodes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    check_s: float = Field(default=1.0, gt=0, description="how often each model is looked at")
    scale_out_window_s: float = Field(
        default=10.0,
        ge=0,
        description="demand must stay above the replicas' targets this long before another "
        "replica is asked for",
    )
    rotation_margin_s: float = Field(
        default=300.0,
        ge=0,
        description="a replica gets a successor this long, plus the time a start takes, "
        "before its job's walltime",
    )
    stop_before_walltime_s: float = Field(
        default=60.0,
        ge=0,
        description="a replica still serving this close to its walltime is drained anyway",
    )
    lost_after_s: float = Field(
        default=30.0,
        gt=0,
        description="a ready replica with no connection this long is taken for lost",
    )
