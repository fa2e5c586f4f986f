"""The router's settings for a full model (``queue:``): who goes next, and how long anyone waits.

Each ready server of a model takes as many requests from this router at once as it runs
(its ``server_args.max_num_seqs``, or vLLM's default); past that, requests wait in the
router, per user, and the user served the fewest tokens lately goes next
(``router.dispatch.fair_queue``).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, PositiveFloat


class QueueClasses(BaseModel):
    """Priority classes: a higher class goes before a lower one; 0 unless named here."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    users: dict[str, int] = Field(
        default_factory=dict, description="user name (an API key's user) -> class"
    )
    groups: dict[str, int] = Field(
        default_factory=dict, description="group name -> class (a caller's highest counts)"
    )


class QueueSettings(BaseModel):
    """Admission by capacity and fair queues (README, "Fair queues")."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = Field(
        default=True,
        description="off: every request goes straight to the servers, whose own queue is "
        "first come, first served",
    )
    max_waiting: int = Field(
        default=1024, ge=1, description="requests waiting for one model (past it: a 429)"
    )
    max_waiting_per_user: int = Field(
        default=256, ge=1, description="one user's requests waiting for one model (a 429)"
    )
    max_queue_wait_s: float = Field(
        default=120.0, gt=0, description="a request that waits longer gets a 503"
    )
    prompt_weight: float = Field(
        default=1.0, ge=0, description="what a prompt token counts in a user's share"
    )
    completion_weight: float = Field(
        default=2.0, ge=0, description="what a generated token counts in a user's share"
    )
    classes: QueueClasses = QueueClasses()
    group_weights: dict[str, PositiveFloat] = Field(
        default_factory=dict,
        description="group name -> weight: a member's tokens count 1/weight (a caller's "
        "largest counts; 1 unless named)",
    )
