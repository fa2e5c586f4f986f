"""The states the runtime and the router speak of, written once.

Each is a StrEnum: a member equals, hashes and serializes as its plain string value, so a
listing or progress record reads the same as JSON whether it holds members or strings.
"""

from __future__ import annotations

from enum import StrEnum


class ModelState(StrEnum):
    """A model's lifecycle as users see it: cold, queued, starting, ready, idle, stopped."""

    COLD = "cold"  # never started since the router started
    QUEUED = "queued"  # a request waits for the scheduler to give the endpoint a node
    STARTING = "starting"  # a node is held and the server is loading the model
    READY = "ready"  # the server answered recently
    IDLE = "idle"  # the server is up but nobody used it for a while
    STOPPED = "stopped"  # torn down after its idle timeout, or failed to start


class SchedulerState(StrEnum):
    """A job as its scheduler reports it; each scheduler maps its own codes to these once."""

    QUEUED = "queued"
    HELD = "held"  # held or suspended: it will not start without someone's action
    RUNNING = "running"
    EXITING = "exiting"  # ending: the scheduler is cleaning up after it
    FINISHED = "finished"
    UNKNOWN = "unknown"  # a code no table knows


class JobState(StrEnum):
    """A listed job's lifecycle state: the model lifecycle, seen through the scheduler.

    QUEUED to STOPPED are the ModelState of the same name; RUNNING, STOPPING and UNKNOWN
    exist only here, where the scheduler says more than the servers' state files can.
    """

    QUEUED = "queued"  # waiting in the scheduler (held jobs too: the reason says why)
    STARTING = "starting"  # node held, server not yet ready
    READY = "ready"
    IDLE = "idle"  # no request for a while, or the server already retired
    RUNNING = "running"  # running, but no server state readable from here
    STOPPING = "stopping"
    STOPPED = "stopped"
    UNKNOWN = "unknown"


class FeedState(StrEnum):
    """A batch job's feed, as its progress file and result record it."""

    RUNNING = "running"
    COMPLETED = "completed"
    CANCELLED = "cancelled"  # a cancel marker stopped it; lines in flight finished
    # A pause marker stopped it; lines in flight finished. Not final: submitted again (the
    # marker gone), the job resumes after the lines already answered.
    PAUSED = "paused"
    FAILED = "failed"
