"""Counters, reservations and usage records in the store: reserve, then settle.

- ``hits``: one row per admitted request on a counter with a request-rate limit; counted
  over the last 1 s or 60 s (a sliding window, so no burst slips through at a boundary).
- ``holds``: what a request in flight has reserved on each counter (its estimated tokens);
  counted for ``concurrent`` and added to the tokens spent while it runs. A hold lapses on
  its own (``expires``) if its router dies before settling it.
- ``spent``: tokens really used, per counter, in per-second, per-day and per-month buckets.
- ``usage_records``: one row per request (refused ones too, with no tokens);
  ``usage_daily``: the requests that were sent, summed per day.

``reserve`` reads a counter's state in one statement and inserts in the same transaction,
under the counters' locks (``Transaction.lock``), so concurrent requests on one or several
routers cannot all pass a limit that only some of them fit in. ``settle`` is idempotent: a
request's usage is recorded once (its id is the record's key), whatever the retries.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from inference_bundle.router.limits.counter_state import (
    Refusal,
    check,
    month_of,
    retry_after,
    state,
)
from inference_bundle.router.limits.rules import RATE_FIELDS, TOKEN_FIELDS, Cost, Counter
from inference_bundle.router.limits.usage_reports import BY_CHOICES, UsageReports
from inference_bundle.router.store.database import Database, Transaction

# The names callers imported from here before the counter state and reports moved out.
__all__ = ["BY_CHOICES", "Ledger", "Refusal", "Settlement", "day_of"]

_HOLDING = ("concurrent", *TOKEN_FIELDS)


@dataclass(frozen=True)
class Settlement:
    """A request's usage, to record and charge once."""

    request_id: str
    at: float
    user: str
    group: str
    model: str
    cluster: str
    operation: str
    prompt_tokens: int
    completion_tokens: int
    latency_ms: float | None
    status: int
    via: str  # connection, task, none, batch
    estimated: bool = False  # the backend did not count (the client left): the reservation
    scopes: tuple[str, ...] = field(default=())  # counters with token limits it is charged to


class Ledger(UsageReports):
    """Admission and charging on the store's counters; the usage reports come from
    ``UsageReports``."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def reserve(
        self, reservation: str, counters: Sequence[Counter], cost: Cost, hold_s: float
    ) -> Refusal | None:
        """Admit the request and hold its cost on each counter, or say which limit refuses."""
        now = time.time()
        with self.db.transaction() as tx:
            tx.lock([counter.scope for counter in counters])
            for counter in counters:
                refusal = check(tx, counter, cost, now)
                if refusal is not None:
                    return refusal
            for counter in counters:
                if counter.has(*RATE_FIELDS):
                    tx.execute("INSERT INTO hits (scope, at) VALUES (?, ?)", (counter.scope, now))
                if counter.has(*_HOLDING):
                    tx.execute(
                        "INSERT INTO holds (reservation, scope, tokens, expires) "
                        "VALUES (?, ?, ?, ?)",
                        (reservation, counter.scope, cost.total, now + hold_s),
                    )
        return None

    def settle(self, settlements: Iterable[Settlement]) -> int:
        """Record and charge each request once, and let go of its holds; how many were new."""
        with self.db.transaction() as tx:
            return _settle(tx, settlements)

    def charge_batch(
        self, batch_id: str, charged_from: int, charged_to: int, lines: Sequence[Settlement]
    ) -> bool:
        """Charge a batch's lines found between two offsets of its output; False (nothing
        done) if someone charged from ``charged_from`` already."""
        with self.db.transaction() as tx:
            tx.lock([f"batch:{batch_id}"])
            row = tx.execute(
                "SELECT charged_bytes FROM batches WHERE id = ?", (batch_id,)
            ).fetchone()
            if row is None or int(row[0]) != charged_from:
                return False
            _settle(tx, lines)
            tx.execute("UPDATE batches SET charged_bytes = ? WHERE id = ?", (charged_to, batch_id))
        return True

    def standing(self, counters: Sequence[Counter]) -> list[dict[str, Any]]:
        """Each token limit on these counters with what is used of it now (for /v1/usage)."""
        now = time.time()
        out = []
        with self.db.transaction() as tx:
            for counter in counters:
                state_now = state(tx, counter.scope, now)
                for limit in counter.limits:
                    if limit.field in TOKEN_FIELDS:
                        used = state_now[limit.field] + state_now["held"]
                    elif limit.field == "concurrent":
                        used = state_now["in_flight"]
                    else:
                        used = state_now[limit.field]
                    out.append(
                        {
                            "scope": counter.who,
                            "limit": limit.field,
                            "value": limit.value,
                            "used": int(used),
                            "remaining": max(0, limit.value - int(used)),
                            "set_in": limit.source,
                        }
                    )
        return out

    def exhausted(self, counters: Sequence[Counter]) -> Refusal | None:
        """The first token budget (day or month) already spent on these counters, if any."""
        now = time.time()
        with self.db.transaction() as tx:
            for counter in counters:
                state_now = state(tx, counter.scope, now)
                for limit in counter.limits:
                    if limit.field in ("tokens_per_day", "tokens_per_month"):
                        used = int(state_now[limit.field] + state_now["held"])
                        if used >= limit.value:
                            retry = retry_after(limit.field, now, state_now)
                            return Refusal(counter, limit, used, 0, retry)
        return None

    def prune(self, keep_days: int) -> None:
        """Drop what no limit looks at any more: old hits, lapsed holds, per-second buckets,
        usage records past ``keep_days`` (daily totals stay)."""
        now = time.time()
        with self.db.transaction() as tx:
            tx.execute("DELETE FROM hits WHERE at < ?", (now - 120,))
            tx.execute("DELETE FROM holds WHERE expires < ?", (now,))
            tx.execute("DELETE FROM spent WHERE period = 's' AND bucket < ?", (int(now) - 120,))
            tx.execute("DELETE FROM usage_records WHERE at < ?", (now - keep_days * 86400,))


def day_of(at: float) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(at))


def _settle(tx: Transaction, settlements: Iterable[Settlement]) -> int:
    new = 0
    for s in settlements:
        cursor = tx.execute(
            "INSERT INTO usage_records (request_id, at, day, user_name, grp, model, cluster, "
            "operation, prompt_tokens, completion_tokens, latency_ms, status, via, estimated) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (request_id) DO NOTHING",
            (
                s.request_id, s.at, day_of(s.at), s.user, s.group, s.model, s.cluster,
                s.operation, s.prompt_tokens, s.completion_tokens, s.latency_ms, s.status,
                s.via, int(s.estimated),
            ),
        )  # fmt: skip
        if cursor.rowcount == 1:
            new += 1
            if s.status == 429:
                continue  # refused by a limit: a record of it, but no request was sent
            tx.execute(
                "INSERT INTO usage_daily (day, user_name, grp, model, cluster, requests, "
                "prompt_tokens, completion_tokens) VALUES (?, ?, ?, ?, ?, 1, ?, ?) "
                "ON CONFLICT (day, user_name, grp, model, cluster) DO UPDATE SET "
                "requests = usage_daily.requests + 1, "
                "prompt_tokens = usage_daily.prompt_tokens + excluded.prompt_tokens, "
                "completion_tokens = usage_daily.completion_tokens + excluded.completion_tokens",
                (day_of(s.at), s.user, s.group, s.model, s.cluster, s.prompt_tokens,
                 s.completion_tokens),
            )  # fmt: skip
            tokens = s.prompt_tokens + s.completion_tokens
            buckets = (("s", int(s.at)), ("d", int(s.at // 86400)), ("m", month_of(s.at)))
            for scope in s.scopes if tokens else ():
                for period, bucket in buckets:
                    tx.execute(
                        "INSERT INTO spent (scope, period, bucket, tokens) VALUES (?, ?, ?, ?) "
                        "ON CONFLICT (scope, period, bucket) DO UPDATE SET "
                        "tokens = spent.tokens + excluded.tokens",
                        (scope, period, bucket, tokens),
                    )
        tx.execute("DELETE FROM holds WHERE reservation = ?", (s.request_id,))
    return new
