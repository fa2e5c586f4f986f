"""Admission by capacity: a model's servers take so many requests from this router at once,
and the rest wait here, in fair per-user queues, not in a server's first-come queue.

Each ready server of a model (not draining) takes ``Route.places`` of this router's requests
(its ``max_num_seqs``: what vLLM runs at once before its own first-come queue holds the
rest); with all of them full, a request waits in the model's ``FairQueue``
(``router.dispatch.fair_queue``: priority classes, then the user served the fewest weighted
tokens lately). A request that finishes, and a server that joins, let the next ones go.
Past ``queue.max_waiting`` (the model's) or ``queue.max_waiting_per_user`` a request gets a
429 ``model_saturated`` with a Retry-After from the measured drain; one that waits longer
than ``queue.max_queue_wait_s`` a 503. A client that leaves leaves the queue at once.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from inference_bundle.config.queue_settings import QueueSettings
from inference_bundle.router import tracing
from inference_bundle.router.dispatch.errors import model_saturated, queue_timeout
from inference_bundle.router.dispatch.fair_queue import FairQueue, Waiter
from inference_bundle.router.errors import APIError
from inference_bundle.router.routes import Route

# Tells a waiting client where it stands (a stream's SSE comment).
OnNote = Callable[[str], Awaitable[None]]
# How often a waiting request looks again (a server may have joined) and tells its client.
TICK_S = 1.0
# The drain rate is measured over this window; shares are shown over SHARE_WINDOW_S.
RATE_WINDOW_S = 60.0
SHARE_WINDOW_S = 300.0
# Retry-After when nothing has drained yet to measure.
UNMEASURED_RETRY_S = 10
# Requests whose tokens are still to be charged (their usage comes after their slot ends).
_PENDING_KEPT = 10_000


@dataclass(frozen=True)
class Asker:
    """Who a request is for, as the queue weighs it."""

    user: str
    groups: tuple[str, ...] = ()
    session: str | None = None  # kept on one replica (router.dataplane.connection_hub)
    request_id: str = ""
    prompt_tokens: int = 0  # estimated (router.limits)


class Slot:
    """A place on a model's servers, held until the request's answer ends."""

    def __init__(self, gate: Gate | None, waited_s: float = 0.0) -> None:
        self._gate = gate
        self.waited_s = waited_s

    def release(self) -> None:
        """Give the place back (once; later calls do nothing)."""
        gate, self._gate = self._gate, None
        if gate is not None:
            gate.release()


# A slot that holds nothing: the queue is off, or the request went another way.
FREE = Slot(None)


@dataclass
class Gate:
    """One model's places and queue."""

    model: str
    capacity: Callable[[], int]
    queue: FairQueue = field(default_factory=FairQueue)
    in_use: int = 0
    drained: deque[float] = field(default_factory=deque)  # when places were given back
    refused: deque[float] = field(default_factory=deque)  # when a 429 was answered
    served: deque[tuple[float, str, float]] = field(default_factory=deque)  # (when, who, tokens)

    def release(self) -> None:
        self.in_use -= 1
        now = time.monotonic()
        self.drained.append(now)
        _trim(self.drained, now - RATE_WINDOW_S)
        self.pump()

    def pump(self) -> None:
        """Let waiting requests go while there is room (all, with no server to hold them:
        they go the way a cold model's do)."""
        capacity = self.capacity()
        while self.queue.waiting and (self.in_use < capacity or capacity == 0):
            waiter = self.queue.pop()
            assert waiter is not None
            self.in_use += 1
            self.note_served(waiter.user, waiter.cost / waiter.weight)
            future: asyncio.Future[None] = waiter.handle
            if not future.done():
                future.set_result(None)

    def note_served(self, user: str, tokens: float) -> None:
        now = time.monotonic()
        self.served.append((now, user, tokens))
        while self.served and self.served[0][0] < now - SHARE_WINDOW_S:
            self.served.popleft()

    def retry_after_s(self, ahead: int) -> int:
        """When a request behind ``ahead`` others should get a place, at the drain rate."""
        now = time.monotonic()
        _trim(self.drained, now - RATE_WINDOW_S)
        if not self.drained:
            return UNMEASURED_RETRY_S
        span = max(1.0, now - self.drained[0]) if len(self.drained) > 1 else RATE_WINDOW_S
        rate = len(self.drained) / span
        return max(1, math.ceil((ahead + 1) / rate))


class Admission:
    """Every model's gate. ``servers(endpoint)`` is how many of its servers are ready (not
    draining): each takes the route's ``places`` of this router's requests."""

    def __init__(self, settings: QueueSettings, servers: Callable[[str], int]) -> None:
        self.settings = settings
        self._servers = servers
        self._gates: dict[str, Gate] = {}
        # Told of each wait that ended with a place, and of each 429 (router metrics).
        self.on_waited: Callable[[str, float], None] = lambda model, seconds: None
        self.on_refused: Callable[[str, str], None] = lambda model, bound: None
        # request id -> (gate, user, weight, the prompt tokens charged when it went)
        self._pending: OrderedDict[str, tuple[Gate, str, float, int]] = OrderedDict()

    def gate(self, route: Route) -> Gate:
        endpoint = route.endpoint_name
        gate = self._gates.get(endpoint)
        if gate is None:
            places = route.places
            gate = self._gates[endpoint] = Gate(
                route.model, lambda: places * self._servers(endpoint)
            )
        return gate

    def gates(self) -> dict[str, Gate]:
        return dict(self._gates)

    async def enter(self, route: Route, asker: Asker, tell: OnNote | None = None) -> Slot:
        """A place on the model's servers: at once while there is room, else after the
        requests the fair queue puts first. Raises the 429 past a bound and the 503 past
        ``max_queue_wait_s``; a cancelled wait (the client left) leaves the queue."""
        settings = self.settings
        if not settings.enabled:
            return FREE
        gate = self.gate(route)
        weight = self._weight(asker.groups)
        # Every request counts for at least one token, its prompt unknown or not weighed.
        cost = max(1.0, settings.prompt_weight * asker.prompt_tokens)
        queue = gate.queue
        if not queue.waiting and gate.in_use < gate.capacity():
            gate.in_use += 1
            queue.charge(asker.user, cost / weight)
            gate.note_served(asker.user, cost / weight)
            self._remember(gate, asker, weight)
            return Slot(gate)
        self._check_bounds(gate, asker.user)
        self._remember(gate, asker, weight)
        began = time.monotonic()
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiter = Waiter(asker.user, self._priority(asker), weight, cost, began, future)
        queue.push(waiter)
        gate.pump()
        try:
            with tracing.span("queue", tracing.current(), model=gate.model):
                await self._wait(gate, waiter, tell)
        except BaseException:
            if not queue.remove(waiter) and future.done() and not future.cancelled():
                gate.release()  # it had been let go as it was cancelled: give it back
            raise
        waited = time.monotonic() - began
        self.on_waited(gate.model, waited)
        return Slot(gate, waited)

    async def _wait(self, gate: Gate, waiter: Waiter, tell: OnNote | None) -> None:
        future: asyncio.Future[None] = waiter.handle
        deadline = waiter.since + self.settings.max_queue_wait_s
        while not future.done():
            if tell is not None:
                place = gate.queue.place(waiter)
                await tell(
                    f"{gate.model} is full; place {place} of {gate.queue.waiting} waiting, "
                    f"waited {time.monotonic() - waiter.since:.0f} s"
                )
            left = deadline - time.monotonic()
            if left <= 0:
                raise self._timed_out(gate, time.monotonic() - waiter.since)
            try:
                await asyncio.wait_for(asyncio.shield(future), min(TICK_S, left))
            except TimeoutError:
                gate.pump()  # a server may have joined without a word

    def would_wait(self, endpoint: str) -> bool:
        """Whether a request for the endpoint would wait for a place now."""
        gate = self._gates.get(endpoint)
        if not self.settings.enabled or gate is None:
            return False
        return gate.queue.waiting > 0 or gate.in_use >= gate.capacity() > 0

    def wake(self, endpoint: str) -> None:
        """The endpoint's servers changed (one joined): let whoever fits go."""
        gate = self._gates.get(endpoint)
        if gate is not None:
            gate.pump()

    def charge(self, request_id: str, prompt: int, completion: int) -> None:
        """A request's tokens, as its server counted them: its user's counter grows by
        them, less the prompt estimate charged when it went."""
        pending = self._pending.pop(request_id, None)
        if pending is None:
            return
        gate, user, weight, estimated = pending
        settings = self.settings
        tokens = settings.prompt_weight * (prompt - estimated)
        tokens += settings.completion_weight * completion
        gate.queue.charge(user, tokens / weight)
        gate.note_served(user, tokens / weight)

    def waiting(self, endpoint: str) -> int:
        gate = self._gates.get(endpoint)
        return 0 if gate is None else gate.queue.waiting

    def describe(self, endpoint: str, show_users: Callable[[str], bool]) -> dict[str, Any]:
        """The model's queue for the listings: waiting (by class), places in use and in
        all, 429s of the last hour, and each user's share of the tokens served in the last
        five minutes (named where ``show_users`` allows, else "others")."""
        gate = self._gates.get(endpoint)
        if gate is None:
            return {
                "waiting": 0, "by_class": {}, "in_use": 0, "capacity": None, "refused": 0,
                "shares": {},
            }  # fmt: skip
        now = time.monotonic()
        _trim(gate.refused, now - 3600)
        totals: dict[str, float] = {}
        for when, user, tokens in gate.served:
            if when >= now - SHARE_WINDOW_S:
                shown = user if show_users(user) else "others"
                totals[shown] = totals.get(shown, 0.0) + tokens
        whole = sum(totals.values()) or 1.0
        return {
            "waiting": gate.queue.waiting,
            "by_class": {str(p): n for p, n in sorted(gate.queue.by_class().items())},
            "in_use": gate.in_use,
            "capacity": gate.capacity(),
            "refused": len(gate.refused),
            "shares": {u: round(t / whole, 3) for u, t in sorted(totals.items())},
        }

    def _check_bounds(self, gate: Gate, user: str) -> None:
        settings = self.settings
        queue = gate.queue
        bound, value = "", 0
        if queue.waiting >= settings.max_waiting:
            bound, value = "queue.max_waiting", settings.max_waiting
        elif queue.by_user(user) >= settings.max_waiting_per_user:
            bound, value = "queue.max_waiting_per_user", settings.max_waiting_per_user
        if not bound:
            return
        gate.refused.append(time.monotonic())
        self.on_refused(gate.model, bound)
        ahead = queue.waiting if bound == "queue.max_waiting" else queue.by_user(user)
        retry = gate.retry_after_s(ahead)
        raise model_saturated(gate.model, bound, value, ahead, retry)

    def _timed_out(self, gate: Gate, waited: float) -> APIError:
        retry = gate.retry_after_s(gate.queue.waiting)
        return queue_timeout(gate.model, waited, self.settings.max_queue_wait_s, retry)

    def _priority(self, asker: Asker) -> int:
        classes = self.settings.classes
        found = [classes.groups[g] for g in asker.groups if g in classes.groups]
        if asker.user in classes.users:
            found.append(classes.users[asker.user])
        return max(found, default=0)

    def _weight(self, groups: tuple[str, ...]) -> float:
        weights = self.settings.group_weights
        return max((weights[g] for g in groups if g in weights), default=1.0)

    def _remember(self, gate: Gate, asker: Asker, weight: float) -> None:
        if not asker.request_id:
            return
        self._pending[asker.request_id] = (gate, asker.user, weight, asker.prompt_tokens)
        while len(self._pending) > _PENDING_KEPT:
            self._pending.popitem(last=False)


def _trim(times: deque[float], before: float) -> None:
    while times and times[0] < before:
        times.popleft()
