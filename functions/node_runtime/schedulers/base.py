"""What every scheduler module is made of: the ``Scheduler`` record."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from ..state_names import SchedulerState
from .common import SchedulerJob


@dataclass(frozen=True, kw_only=True)
class Scheduler:
    """One scheduler: its name, its state table, and how to list this user's Parsl blocks."""

    name: str  # as cluster profiles name it
    states: Mapping[str, SchedulerState]  # its own state codes, each mapped once
    # the live Parsl blocks it lists now; None where there is no scheduler to ask
    list_jobs: Callable[[], list[SchedulerJob]] | None
