"""Reading the usage the ledger recorded: daily totals, per-request records, the last hour.

These are the reports (``GET /v1/usage``, ``bundle usage``, the status page); nothing here
writes or decides admission. ``Ledger`` (``limits.ledger``) offers them on its own store.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from inference_bundle.router.store.database import Database

_BY = {"day": "day", "user": "user_name", "group": "grp", "model": "model", "cluster": "cluster"}
BY_CHOICES = tuple(_BY)


class UsageReports:
    """Queries over ``usage_daily`` and ``usage_records`` in one store."""

    db: Database

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
