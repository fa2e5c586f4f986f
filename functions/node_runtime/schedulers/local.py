"""No scheduler (the engine's LocalProvider): the servers on this host stand for the jobs."""

from __future__ import annotations

from .base import Scheduler

# Nothing to ask: the job listing reads this host's server states instead (see jobs.py).
SCHEDULER = Scheduler(name="local", states={}, list_jobs=None)
