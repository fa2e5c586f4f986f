"""What a counter holds now, and whether one more request fits its limits.

``state`` reads everything the limits look at (hits in the last second and minute, holds
in flight, tokens spent this minute, day and month) in one statement, so that one snapshot
decides; ``check`` turns it into a ``Refusal`` naming the limit and when to retry. The
ledger (``limits.ledger``) calls these inside the transaction that holds the counters' locks.
"""

from __future__ import annotations

import calendar
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from inference_bundle.router.limits.rules import RATE_FIELDS, Cost, Counter, Limit
from inference_bundle.router.store.database import Transaction


@dataclass(frozen=True)
class Refusal:
    """Why a request was not admitted: the counter and limit it would pass, and when to retry."""

    counter: Counter
    limit: Limit
    used: int  # requests or tokens counted now (held ones included)
    asked: int  # what this request would add
    retry_after_s: float | None  # None: it can never pass (it alone exceeds the limit)


def month_of(at: float) -> int:
    """The month of a moment, counted from year 0 (a bucket of ``spent``)."""
    moment = time.gmtime(at)
    return moment.tm_year * 12 + moment.tm_mon - 1


def state(tx: Transaction, scope: str, now: float) -> dict[str, float]:
    """A counter's state now, read in one statement (one snapshot, one round trip)."""
    row = tx.execute(
        "SELECT "
        "(SELECT COUNT(*) FROM hits WHERE scope = ? AND at > ?), "
        "(SELECT MIN(at) FROM hits WHERE scope = ? AND at > ?), "
        "(SELECT COUNT(*) FROM hits WHERE scope = ? AND at > ?), "
        "(SELECT MIN(at) FROM hits WHERE scope = ? AND at > ?), "
        "(SELECT COUNT(*) FROM holds WHERE scope = ? AND expires > ?), "
        "(SELECT COALESCE(SUM(tokens), 0) FROM holds WHERE scope = ? AND expires > ?), "
        "(SELECT COALESCE(SUM(tokens), 0) FROM spent WHERE scope = ? AND period = 's' "
        "AND bucket > ?), "
        "(SELECT MIN(bucket) FROM spent WHERE scope = ? AND period = 's' AND bucket > ?), "
        "(SELECT COALESCE(SUM(tokens), 0) FROM spent WHERE scope = ? AND period = 'd' "
        "AND bucket = ?), "
        "(SELECT COALESCE(SUM(tokens), 0) FROM spent WHERE scope = ? AND period = 'm' "
        "AND bucket = ?)",
        (
            scope, now - 1, scope, now - 1,
            scope, now - 60, scope, now - 60,
            scope, now, scope, now,
            scope, int(now) - 60, scope, int(now) - 60,
            scope, int(now // 86400), scope, month_of(now),
        ),
    ).fetchone()  # fmt: skip
    return {
        "requests_per_second": row[0],
        "oldest_second_hit": row[1] or now,
        "requests_per_minute": row[2],
        "oldest_minute_hit": row[3] or now,
        "in_flight": row[4],
        "held": row[5],
        "tokens_per_minute": row[6],
        "oldest_minute_bucket": row[7] if row[7] is not None else int(now),
        "tokens_per_day": row[8],
        "tokens_per_month": row[9],
    }


def check(tx: Transaction, counter: Counter, cost: Cost, now: float) -> Refusal | None:
    """The first of a counter's limits this request would pass, or None if it fits."""
    now_state = state(tx, counter.scope, now)
    for limit in counter.limits:
        if limit.field in RATE_FIELDS:
            used, asked = int(now_state[limit.field]), 1
        elif limit.field == "concurrent":
            used, asked = int(now_state["in_flight"]), 1
        else:
            used, asked = int(now_state[limit.field] + now_state["held"]), cost.total
            if asked > limit.value:
                return Refusal(counter, limit, used, asked, None)
        if used + asked > limit.value:
            return Refusal(counter, limit, used, asked, retry_after(limit.field, now, now_state))
    return None


def retry_after(limit: str, now: float, state: dict[str, float]) -> float:
    """Seconds until a limit frees enough for one more request (its window's oldest use
    leaves, or the day or month turns)."""
    if limit == "requests_per_second":
        return state["oldest_second_hit"] + 1 - now
    if limit == "requests_per_minute":
        return state["oldest_minute_hit"] + 60 - now
    if limit == "tokens_per_minute":
        return state["oldest_minute_bucket"] + 61 - now
    if limit == "tokens_per_day":
        return (now // 86400 + 1) * 86400 - now
    if limit == "tokens_per_month":
        moment = datetime.fromtimestamp(now, UTC)
        months = moment.year * 12 + moment.month  # the next month, counted from year 0
        return calendar.timegm((months // 12, months % 12 + 1, 1, 0, 0, 0)) - now
    return 1.0  # concurrent: as soon as a request in flight ends
