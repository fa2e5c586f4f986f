"""Each model's lifecycle as users see it: cold, queued, starting, ready, idle, stopped.

The states themselves are the node runtime's ``ModelState`` (one vocabulary for both sides),
re-exported here. The tracker also remembers how long each model's last start took, for the
estimates users get while they wait (``router.fleet.estimates``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from node_runtime.state_names import ModelState

__all__ = ["ModelState", "ModelStatus", "StateTracker"]


@dataclass(frozen=True)
class ModelStatus:
    state: ModelState
    since: float  # clock time of the last change
    last_used: float | None
    in_flight: int
    cold_starts: int
    last_error: str | None = None
    # Seconds the last start took, from a node held (or the request, if that was never
    # seen) to the first answer; None until this router has seen a model start.
    last_start_s: float | None = None


class StateTracker:
    """Thread-safe model states, from the router's own submissions and their answers.

    ``idle_after_s`` turns ready into idle; a model's own idle timeout (its spec's
    ``idle_timeout_s``) turns idle into stopped, because that is when its server goes away.
    """

    def __init__(self, idle_after_s: float = 300.0, clock: Callable[[], float] = time.time):
        self._idle_after_s = idle_after_s
        self._clock = clock
        self._lock = threading.Lock()
        self._status: dict[str, ModelStatus] = {}
        self._timeouts: dict[str, float] = {}

    def register(self, key: str, idle_timeout_s: float) -> None:
        with self._lock:
            self._timeouts[key] = idle_timeout_s
            self._status.setdefault(key, ModelStatus(ModelState.COLD, self._clock(), None, 0, 0))

    def status(self, key: str) -> ModelStatus:
        """The current status, with ready → idle → stopped derived from the last use."""
        with self._lock:
            return self._derived(key)

    def begin(self, key: str) -> bool:
        """A request was submitted; returns True when it starts a cold or stopped model."""
        with self._lock:
            current = self._derived(key)
            starts = current.state in (ModelState.COLD, ModelState.STOPPED)
            state = ModelState.QUEUED if starts else current.state
            self._status[key] = replace(
                current,
                state=state,
                since=self._clock() if starts else current.since,
                in_flight=current.in_flight + 1,
                cold_starts=current.cold_starts + (1 if starts else 0),
            )
            return starts

    def begin_warm(self, key: str) -> None:
        """A request went down a running server's connection (the data plane): in flight,
        no start.

        ``finish`` ends it like any other; if the connection turned out closed, the request
        goes on through a task and ``begin`` counts the start there, once.
        """
        with self._lock:
            current = self._derived(key)
            self._status[key] = replace(current, in_flight=current.in_flight + 1)

    def waiting(self, key: str, node_held: bool) -> ModelStatus:
        """A request is still waiting; the executor says whether a node is held yet."""
        with self._lock:
            current = self._derived(key)
            if current.state in (ModelState.QUEUED, ModelState.STARTING):
                state = ModelState.STARTING if node_held else ModelState.QUEUED
                if state != current.state:
                    current = replace(current, state=state, since=self._clock())
                    self._status[key] = current
            return current

    def finish(self, key: str, answered: bool, error: str | None = None) -> None:
        """A request ended: answered by the server (whatever its status), or not at all."""
        with self._lock:
            current = self._derived(key)
            now = self._clock()
            in_flight = max(0, current.in_flight - 1)
            if answered:
                last_start = current.last_start_s
                if current.state in (ModelState.QUEUED, ModelState.STARTING):
                    last_start = round(now - current.since, 1)  # a start just ended
                self._status[key] = ModelStatus(
                    ModelState.READY,
                    now,
                    now,
                    in_flight,
                    current.cold_starts,
                    last_start_s=last_start,
                )
            elif in_flight == 0 and current.state in (ModelState.QUEUED, ModelState.STARTING):
                self._status[key] = replace(
                    current, state=ModelState.STOPPED, since=now, in_flight=0, last_error=error
                )
            else:
                self._status[key] = replace(current, in_flight=in_flight, last_error=error)

    def _derived(self, key: str) -> ModelStatus:
        current = self._status[key]
        if current.state not in (ModelState.READY, ModelState.IDLE) or current.in_flight:
            return current
        last_used = current.last_used
        assert last_used is not None
        quiet = self._clock() - last_used
        if quiet >= self._timeouts[key]:
            stopped = last_used + self._timeouts[key]
            current = replace(current, state=ModelState.STOPPED, since=stopped)
            self._status[key] = current
        elif quiet >= self._idle_after_s and current.state == ModelState.READY:
            current = replace(current, state=ModelState.IDLE, since=last_used + self._idle_after_s)
            self._status[key] = current
        return current
