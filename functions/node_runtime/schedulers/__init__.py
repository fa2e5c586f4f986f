"""The schedulers the job listing asks: one module each, found by name.

A scheduler module knows its client command, how to read its answer, and the table that
maps its own job states to ``SchedulerState`` once. A new scheduler is a new module here
(built on ``base.Scheduler``) and one line in ``_load``.
"""

from __future__ import annotations

from .base import Scheduler
from .common import JobListingError, SchedulerJob, parse_job_name


def _load() -> dict[str, Scheduler]:
    from . import local, pbspro, slurm

    return {s.name: s for s in (pbspro.SCHEDULER, slurm.SCHEDULER, local.SCHEDULER)}


_SCHEDULERS = _load()


def names() -> tuple[str, ...]:
    """The known scheduler names, in the order messages list them."""
    return tuple(_SCHEDULERS)


def scheduler(name: str) -> Scheduler:
    """The scheduler of this name; a JobListingError lists the known ones."""
    try:
        return _SCHEDULERS[name]
    except KeyError:
        raise JobListingError(
            f"unknown scheduler {name!r}: use one of {', '.join(_SCHEDULERS)}"
        ) from None


__all__ = [
    "JobListingError",
    "Scheduler",
    "SchedulerJob",
    "names",
    "parse_job_name",
    "scheduler",
]
