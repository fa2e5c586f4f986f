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

import calendar
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from inference_bundle.router.limits.rules import RATE_FIELDS, TOKEN_FIELDS, Cost, Counter, Limit
from inference_bundle.router.store.database import Database, Transaction

_WINDOWS = {"requests_per_second": 1.0, "requests_per_minute": 60.0}
_HOLDING = ("concurrent", *TOKEN_FIELDS)


@dataclass(frozen=True)
class Refusal:
    """Why a request was not admitted: the counter and limit it would pass, and when to retry."""

    counter: Counter
    limit: Limit
    used: int  # requests or tokens counted now (held ones included)
    asked: int  # what this request would add
    retry_after_s: float | None  # None: it can never pass (it alone exceeds the limit)


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


class Ledger:
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
                refusal = _check(tx, counter, cost, now)
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
                state = _state(tx, counter.scope, now)
                for limit in counter.limits:
                    if limit.field in TOKEN_FIELDS:
                        used = state[limit.field] + state["held"]
                    elif limit.field == "concurrent":
                        used = state["in_flight"]
                    else:
                        used = state[limit.field]
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
                state = _state(tx, counter.scope, now)
                for limit in counter.limits:
                    if limit.field in ("tokens_per_day", "tokens_per_month"):
                        used = int(state[limit.field] + state["held"])
                        if used >= limit.value:
                            retry = _retry_after(limit.field, now, state)
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

    def usage(
        self,
        since: str,
        until: str,
        by: Sequence[str],
        user: str | None = None,
    ) -> list[dict[str, Any]]:
        """Daily totals between two days (YYYY-MM-DD, both included), summed by ``by``
        (day, user, group, model, cluster), of one user or of everyone."""
        columns = [_BY[name] for name in by]
        query = (
            f"SELECT {', '.join(columns + [''])}COUNT(*), SUM(requests), SUM(prompt_tokens), "
            "SUM(completion_tokens) FROM usage_daily WHERE day >= ? AND day <= ?"
        )
        args: list[Any] = [since, until]
        if user is not None:
            query += " AND user_name = ?"
            args.append(user)
        if columns:
            query += f" GROUP BY {', '.join(columns)} ORDER BY {', '.join(columns)}"
        with self.db.transaction() as tx:
            rows = tx.execute(query, args).fetchall()
        out = []
        for row in rows:
            keys = dict(zip(by, row[: len(by)], strict=True))
            rows_count, requests, prompt, completion = row[len(by) :]
            if not rows_count:
                continue
            prompt, completion = int(prompt or 0), int(completion or 0)
            out.append(
                {
                    **keys,
                    "requests": int(requests or 0),
                    "prompt_tokens": prompt,
                    "completion_tokens": completion,
                    "total_tokens": prompt + completion,
                }
            )
        return out

    def records(self, request_ids: Sequence[str]) -> list[dict[str, Any]]:
        """Per-request records by id (tests and operators' checks)."""
        if not request_ids:
            return []
        marks = ", ".join("?" * len(request_ids))
        with self.db.transaction() as tx:
            cursor = tx.execute(
                f"SELECT * FROM usage_records WHERE request_id IN ({marks})", tuple(request_ids)
            )
            names = [column[0] for column in cursor.description]
            return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]

    def recent_by_model(self, since: float) -> list[dict[str, Any]]:
        """Requests (and of them errors: 5xx, 429) and tokens per cluster and model since a
        moment (the status page's last hour), everyone's: how busy each model is, not who
        used it."""
        with self.db.transaction() as tx:
            rows = tx.execute(
                "SELECT cluster, model, COUNT(*), "
                "SUM(CASE WHEN status >= 500 OR status = 429 THEN 1 ELSE 0 END), "
                "SUM(prompt_tokens), SUM(completion_tokens) "
                "FROM usage_records WHERE at >= ? GROUP BY cluster, model "
                "ORDER BY cluster, model",
                (since,),
            ).fetchall()
        out = []
        for cluster, model, requests, errors, prompt, completion in rows:
            prompt, completion = int(prompt or 0), int(completion or 0)
            out.append(
                {
                    "cluster": cluster,
                    "model": model,
                    "requests": int(requests),
                    "errors": int(errors or 0),
                    "prompt_tokens": prompt,
                    "completion_tokens": completion,
                    "total_tokens": prompt + completion,
                }
            )
        return out

    def recent_errors(self, since: float, limit: int = 20) -> list[dict[str, Any]]:
        """The newest requests since a moment that failed on the service's side (5xx) or
        were refused for a limit (429), newest first; who, what and when, never a prompt."""
        with self.db.transaction() as tx:
            rows = tx.execute(
                "SELECT at, request_id, user_name, grp, cluster, model, operation, status, "
                "via, latency_ms FROM usage_records "
                "WHERE at >= ? AND (status >= 500 OR status = 429) "
                "ORDER BY at DESC, request_id LIMIT ?",
                (since, limit),
            ).fetchall()
        names = ("at", "request_id", "user", "group", "cluster", "model", "operation", "status",
                 "via", "latency_ms")  # fmt: skip
        return [dict(zip(names, row, strict=True)) for row in rows]


_BY = {"day": "day", "user": "user_name", "group": "grp", "model": "model", "cluster": "cluster"}
BY_CHOICES = tuple(_BY)


def day_of(at: float) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(at))


def _month(at: float) -> int:
    moment = time.gmtime(at)
    return moment.tm_year * 12 + moment.tm_mon - 1


def _state(tx: Transaction, scope: str, now: float) -> dict[str, float]:
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
            scope, int(now // 86400), scope, _month(now),
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


def _check(tx: Transaction, counter: Counter, cost: Cost, now: float) -> Refusal | None:
    state = _state(tx, counter.scope, now)
    for limit in counter.limits:
        if limit.field in RATE_FIELDS:
            used, asked = int(state[limit.field]), 1
        elif limit.field == "concurrent":
            used, asked = int(state["in_flight"]), 1
        else:
            used, asked = int(state[limit.field] + state["held"]), cost.total
            if asked > limit.value:
                return Refusal(counter, limit, used, asked, None)
        if used + asked > limit.value:
            return Refusal(counter, limit, used, asked, _retry_after(limit.field, now, state))
    return None


def _retry_after(limit: str, now: float, state: dict[str, float]) -> float:
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
            buckets = (("s", int(s.at)), ("d", int(s.at // 86400)), ("m", _month(s.at)))
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
