"""Who goes next on a full model: per-user queues in priority classes, and within a class
the user served the fewest weighted tokens (a virtual token counter).

The virtual token counter is VTC (Sheng et al., "Fairness in Serving Large Language
Models", OSDI 2024): each user's counter grows by the tokens the user is served (prompt and
generated, weighted, divided by the user's weight), and the waiting user with the lowest
counter goes next. A user who starts waiting has their counter lifted to the lowest of those
already waiting in the class (or, with none, to the counter of the last user served from
the queue), so time spent idle is not banked as credit: "the fewest tokens lately". Equal
demand gets equal service, and a light user waits for one free slot, not for a heavy
user's backlog.

Pure data: the waiting itself (futures, time limits) is ``router.dispatch.admission``'s.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

# Past this many counters, those of users not waiting and below every waiting one are
# dropped (a returning user is lifted to at least that low anyway).
_PRUNE_AT = 4096


@dataclass(eq=False)
class Waiter:
    """One waiting request."""

    user: str
    priority: int  # a higher class goes first
    weight: float  # the user's share weight (their tokens count 1/weight)
    cost: float  # weighted tokens charged when it goes (its prompt, estimated)
    since: float
    handle: Any = None  # the admission's own (a future to resolve)


@dataclass
class FairQueue:
    """One model's waiting requests and its users' counters."""

    counters: dict[str, float] = field(default_factory=dict)
    _classes: dict[int, dict[str, deque[Waiter]]] = field(default_factory=dict)
    _floor: float = 0.0  # the counter of the last user served from the queue
    waiting: int = 0

    def push(self, waiter: Waiter) -> None:
        users = self._classes.setdefault(waiter.priority, {})
        own = users.get(waiter.user)
        if own is None:
            # Newly waiting: no credit for the time spent away.
            others = [self.counters.get(u, 0.0) for u in users]
            floor = min(others) if others else self._floor
            self.counters[waiter.user] = max(self.counters.get(waiter.user, 0.0), floor)
            own = users[waiter.user] = deque()
        own.append(waiter)
        self.waiting += 1
        if len(self.counters) > _PRUNE_AT:
            self._prune()

    def pop(self) -> Waiter | None:
        """The next to go: the highest class, then the lowest counter, the fewest waiting, the
        earliest."""
        if not self.waiting:
            return None
        priority = max(p for p, users in self._classes.items() if users)
        users = self._classes[priority]
        # Equal counters: the user with fewer waiting first (a light user's one request is
        # not put behind a backlog's head), then the earlier.
        user = min(
            users, key=lambda u: (self.counters.get(u, 0.0), len(users[u]), users[u][0].since)
        )
        waiter = users[user].popleft()
        if not users[user]:
            del users[user]
        self.waiting -= 1
        self.charge(user, waiter.cost / waiter.weight)
        self._floor = self.counters[user]
        return waiter

    def remove(self, waiter: Waiter) -> bool:
        """Take ``waiter`` out (its client left, or it waited too long)."""
        users = self._classes.get(waiter.priority, {})
        own = users.get(waiter.user)
        if own is None or waiter not in own:
            return False
        own.remove(waiter)
        if not own:
            del users[waiter.user]
        self.waiting -= 1
        return True

    def charge(self, user: str, tokens: float) -> None:
        """``user`` was served ``tokens`` more (weighted and divided by their weight)."""
        self.counters[user] = self.counters.get(user, 0.0) + tokens

    def place(self, waiter: Waiter) -> int:
        """About where ``waiter`` stands (1: next): the requests of higher classes, those of
        its class whose users have lower counters, and its user's own ahead of it."""
        ahead = sum(
            len(own) for p, users in self._classes.items() if p > waiter.priority
            for own in users.values()
        )  # fmt: skip
        users = self._classes.get(waiter.priority, {})
        mine = self.counters.get(waiter.user, 0.0)
        for user, own in users.items():
            if user == waiter.user:
                ahead += next((i for i, w in enumerate(own) if w is waiter), len(own))
            elif self.counters.get(user, 0.0) < mine:
                ahead += len(own)
        return ahead + 1

    def by_class(self) -> dict[int, int]:
        """Waiting requests by class."""
        counts = {p: sum(len(own) for own in users.values()) for p, users in self._classes.items()}
        return {p: n for p, n in counts.items() if n}

    def by_user(self, user: str) -> int:
        """``user``'s waiting requests, every class."""
        return sum(len(users.get(user, ())) for users in self._classes.values())

    def waiters(self) -> list[Waiter]:
        return [w for users in self._classes.values() for own in users.values() for w in own]

    def _prune(self) -> None:
        waiting = {u for users in self._classes.values() for u in users}
        low = min((self.counters[u] for u in waiting), default=self._floor)
        low = min(low, self._floor)
        for user in [u for u, c in self.counters.items() if u not in waiting and c <= low]:
            del self.counters[user]
