"""A model's replicas: servers on nodes of their own, each one index of its endpoint.

A replica is an index of the model's endpoint (``executors.pool``): its own user endpoint,
engine, block and scheduler job, so its own node and server, which dials this router. This
module keeps what the router knows of each; ``fleet.autoscaler`` decides how many there are.

Phases:
    starting  asked for (its task is out: the job queued, or the server loading)
    ready     its server answered; it takes requests once its connection is up
    draining  takes no new requests; stopped once its requests in flight have ended
    stopping  its job is being released: still takes no requests, and is forgotten once its
              connection is gone (a scheduler's cancel takes a while, and until then the
              server is still connected, idle, and would draw every new request)

Indexes run from 0 to twice the catalog's ``replicas.max`` less one: a replica near its
walltime has a successor beside it for a while (the user config schema allows as much).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from enum import StrEnum


class Phase(StrEnum):
    STARTING = "starting"
    READY = "ready"
    DRAINING = "draining"
    STOPPING = "stopping"


_RETIRING = (Phase.DRAINING, Phase.STOPPING)


@dataclass
class Replica:
    """One replica of one model, as the router knows it."""

    index: int
    reason: str  # why it was asked for: request, demand, min, walltime, replacement
    asked_at: float
    phase: Phase = Phase.STARTING
    host: str | None = None
    server_id: str | None = None
    held_since: float | None = None  # about when its job began (its first answer less the start)
    ready_at: float | None = None
    last_task: float = 0.0  # its last task (a request or a keep-alive): its engine keeps the job
    unconnected_since: float | None = None  # ready, but no live connection since then
    successor: int | None = None  # the replica asked to take over before its walltime
    drain_reason: str | None = None

    def describe(self, now: float, walltime_s: float | None) -> dict[str, object]:
        """What /jobs and /list-endpoints show of it."""
        left = None
        if walltime_s is not None and self.held_since is not None:
            left = max(0, round(self.held_since + walltime_s - now))
        return {
            "replica": self.index,
            "state": self.phase.value,
            "host": self.host,
            "asked_for": self.reason,
            "asked_at": self.asked_at,
            "ready_at": self.ready_at,
            "walltime_left_s": left,
            "draining": self.phase == Phase.DRAINING,
            "drain_reason": self.drain_reason,
        }


class ReplicaSet:
    """One endpoint's replicas. Thread-safe: tasks end on the executors' threads."""

    def __init__(self, endpoint: str, max_replicas: int) -> None:
        self.endpoint = endpoint
        self.indexes = 2 * max_replicas  # room for a walltime successor of each
        self._lock = threading.Lock()
        self._replicas: dict[int, Replica] = {}

    def all(self) -> list[Replica]:
        with self._lock:
            return sorted(self._replicas.values(), key=lambda r: r.index)

    def get(self, index: int) -> Replica | None:
        with self._lock:
            return self._replicas.get(index)

    def claim(self, reason: str, now: float) -> Replica | None:
        """A new replica at the lowest free index; None when every index is taken."""
        with self._lock:
            for index in range(self.indexes):
                if index not in self._replicas:
                    replica = Replica(index, reason, now, last_task=now)
                    self._replicas[index] = replica
                    return replica
            return None

    def for_request(self, now: float) -> int:
        """The index a request's task goes to: a ready replica (its server is up), else one
        on its way (the request waits for it rather than asking for another), else a new
        one."""
        with self._lock:
            ordered = sorted(self._replicas.values(), key=lambda r: r.index)
            for phase in (Phase.READY, Phase.STARTING):
                for replica in ordered:
                    if replica.phase == phase:
                        replica.last_task = now
                        return replica.index
        claimed = self.claim("request", now)
        return 0 if claimed is None else claimed.index

    def placed(
        self, index: int, host: str, server_id: str, start_s: float, now: float
    ) -> Replica | None:
        """Its task answered from ``server_id`` on ``host``. Returns the replica that already
        holds that node, if another does (this one is then a duplicate to let go).

        A walltime successor may share its predecessor's node (a scheduler whose jobs share
        nodes), with a server of its own there (``ServerSpec.replica``): the old one drains
        once it is ready.
        """
        with self._lock:
            for other in self._replicas.values():
                if other.index == index or (other.host != host and other.server_id != server_id):
                    continue
                if other.phase == Phase.STOPPING:  # its node is being given back
                    continue
                if other.successor == index and other.server_id != server_id:
                    continue
                return other
            replica = self._replicas.get(index)
            if replica is None:  # a request's task to a replica let go meanwhile
                replica = self._replicas[index] = Replica(index, "request", now, last_task=now)
            if replica.server_id != server_id:
                replica.server_id, replica.host = server_id, host
                replica.unconnected_since = None
            if replica.held_since is None:  # its job's start: a server restarted keeps it
                replica.held_since = now - start_s
            if replica.phase == Phase.STARTING:
                replica.phase = Phase.READY
                replica.ready_at = now
            return None

    def abandon(self, index: int) -> None:
        """Its task ended with no server: a replica still starting is let go (a ready one,
        whose server answered before, stays until its connection is found lost)."""
        with self._lock:
            replica = self._replicas.get(index)
            if replica is not None and replica.phase == Phase.STARTING:
                del self._replicas[index]

    def remove(self, index: int) -> Replica | None:
        with self._lock:
            return self._replicas.pop(index, None)

    def by_server(self, server_id: str) -> Replica | None:
        with self._lock:
            for replica in self._replicas.values():
                if replica.server_id == server_id:
                    return replica
            return None

    def retiring(self) -> frozenset[str]:
        """The server ids that take no new requests: draining or stopping."""
        with self._lock:
            return frozenset(
                r.server_id
                for r in self._replicas.values()
                if r.phase in _RETIRING and r.server_id is not None
            )


class Replicas:
    """Every endpoint's replica set, made on first use."""

    def __init__(self, max_replicas: dict[str, int]) -> None:
        self._sets = {name: ReplicaSet(name, high) for name, high in max_replicas.items()}

    def of(self, endpoint: str) -> ReplicaSet:
        found = self._sets.get(endpoint)
        if found is None:  # an endpoint the router was not built with (tests' own routes)
            found = self._sets[endpoint] = ReplicaSet(endpoint, 1)
        return found
