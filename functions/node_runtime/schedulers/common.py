"""What every scheduler module shares: the job record, Parsl's job names, the client call."""

from __future__ import annotations

import re
import socket
import subprocess
import time
from dataclasses import dataclass

from ..state_names import SchedulerState

COMMAND_TIMEOUT_S = 30.0

_PARSL_NAME = re.compile(
    r"^parsl\.(?P<label>.+?)(?:-[A-Za-z]*Executor)?\.block-(?P<block>\d+)\.\d+(?:\.\d+)?$"
)


class JobListingError(RuntimeError):
    """The scheduler could not be asked, or answered something unreadable."""


@dataclass(frozen=True, kw_only=True)
class SchedulerJob:
    """One job as the scheduler reports it, with the endpoint its name gives."""

    job_id: str
    name: str
    endpoint: str
    block: int
    scheduler_state: SchedulerState
    scheduler_code: str  # the scheduler's own word: Q, R, PENDING, ...
    reason: str | None  # why a queued or held job waits, in the scheduler's words
    queue: str | None
    nodes: tuple[str, ...]
    node_count: int | None
    walltime_used_s: int | None
    walltime_s: int | None
    started_at: float | None  # epoch seconds; None until it runs
    exit_status: int | None = None
    # A waiting job's start as the scheduler plans it now (epoch seconds); None if unknown.
    estimated_start: float | None = None
    # 1 for the next job the scheduler plans to start in its queue; None where it cannot say.
    queue_position: int | None = None


def parse_job_name(name: str) -> tuple[str, int] | None:
    """The endpoint name and block number in a Parsl block's job name, or None."""
    match = _PARSL_NAME.match(name)
    if match is None:
        return None
    return match["label"], int(match["block"])


def waits(state: SchedulerState) -> bool:
    """True for a job the scheduler keeps waiting: its reason is worth showing."""
    return state in (SchedulerState.QUEUED, SchedulerState.HELD)


def run(argv: list[str]) -> str:
    """Run a scheduler client command; its stdout, or a JobListingError that says why."""
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S, check=False
        )
    except FileNotFoundError:
        raise JobListingError(
            f"`{argv[0]}` is not on PATH on {socket.gethostname()}: run the job listing "
            "where the scheduler's client commands are (the login node's endpoint)"
        ) from None
    except subprocess.TimeoutExpired:
        raise JobListingError(
            f"`{' '.join(argv)}` did not answer within {COMMAND_TIMEOUT_S:g} s"
        ) from None
    if done.returncode != 0:
        raise JobListingError(
            f"`{' '.join(argv)}` failed with exit status {done.returncode}: "
            f"{done.stderr.strip()[-2000:]}"
        )
    return done.stdout


def seconds(value: object) -> int | None:
    """Seconds in ``[D-]HH:MM:SS``, ``MM:SS`` or a number; None for UNLIMITED, N/A, ..."""
    if isinstance(value, int | float):
        return int(value)
    if not isinstance(value, str) or not re.fullmatch(r"(\d+-)?\d+(:\d+){0,2}", value):
        return None
    days, _, rest = value.rpartition("-")
    total = 0
    for part in rest.split(":"):
        total = total * 60 + int(part)
    return total + int(days or 0) * 86400


def epoch(value: object, fmt: str) -> float | None:
    """Epoch seconds of a local time written in fmt; None if it is not one."""
    if not isinstance(value, str):
        return None
    try:
        return time.mktime(time.strptime(value, fmt))
    except ValueError:
        return None
