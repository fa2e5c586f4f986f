"""Batch and file records in the router's store: they outlive the router, each has one owner."""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from inference_bundle.router.errors import APIError
from inference_bundle.router.store.database import Database

log = logging.getLogger("router.batches")
# Statuses after which a batch never changes again.
FINAL = ("completed", "failed", "cancelled", "expired")


@dataclass(frozen=True)
class FileRecord:
    id: str
    owner: str
    filename: str
    purpose: str  # batch | batch_output
    path: str
    bytes: int
    created_at: int


@dataclass(frozen=True)
class BatchRecord:
    id: str
    owner: str
    cluster: str
    model: str
    endpoint: str  # the url every line uses, or "" when lines mix urls (guide API)
    input_file_id: str
    input_path: str
    output_path: str
    error_path: str
    status: str
    total: int
    completed: int = 0
    failed: int = 0
    created_at: int = 0
    in_progress_at: int | None = None
    cancelling_at: int | None = None
    finished_at: int | None = None  # when it reached a final status
    output_file_id: str | None = None
    error_file_id: str | None = None
    errors: list[dict[str, Any]] | None = None
    metadata: dict[str, str] | None = None
    # The path the user named (guide API), shown back to them; never opened again.
    submitted_input: str | None = None
    group: str = ""  # the group whose budgets its lines draw on ("" for none)
    # Why it waits, while a budget it draws on is spent: {"reason", "limit", "since"}.
    paused: dict[str, Any] | None = None

    def with_(self, **changes: Any) -> BatchRecord:
        return replace(self, **changes)


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


class UnstorableRecord(APIError):
    """A record with text that is not valid Unicode: stored, it could never be answered."""

    def __init__(self, where: str) -> None:
        super().__init__(
            400,
            f"{where} has a lone UTF-16 surrogate (an unpaired \\ud800-\\udfff escape); "
            "send valid Unicode text.",
            code="invalid_text",
        )


class BatchStore:
    """Batch and file records in the router's store; safe to use from several threads.

    Each unfinished batch is run by one router at a time: the one holding its lease
    (``claim``, ``renew``), which other routers sharing the store take over when it lapses.
    """

    def __init__(self, db: Database) -> None:
        self.db = db

    def add_file(
        self, owner: str, filename: str, purpose: str, path: Path, file_id: str | None = None
    ) -> FileRecord:
        record = FileRecord(
            id=file_id or new_id("file"),
            owner=owner,
            filename=filename,
            purpose=purpose,
            path=str(path),
            bytes=path.stat().st_size if path.exists() else 0,
            created_at=int(time.time()),
        )
        for name in ("owner", "filename", "purpose", "path"):
            if not _is_text(getattr(record, name)):
                raise UnstorableRecord(f"The file's {name}")
        with self.db.transaction() as tx:
            tx.execute(
                "INSERT INTO files (id, owner, filename, purpose, path, bytes, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                tuple(getattr(record, f.name) for f in fields(FileRecord)),
            )
        return record

    def file(self, file_id: str, owner: str) -> FileRecord | None:
        """The owner's file, or None (someone else's file is not there for them)."""
        with self.db.transaction() as tx:
            row = tx.execute(
                "SELECT id, owner, filename, purpose, path, bytes, created_at FROM files "
                "WHERE id = ? AND owner = ?",
                (file_id, owner),
            ).fetchone()
        return None if row is None else FileRecord(*row)

    def files_usage(self, owner: str, folder: Path) -> tuple[int, int]:
        """How many of the owner's files lie in ``folder``, and their bytes."""
        prefix = f"{folder}{os.sep}"
        with self.db.transaction() as tx:
            count, total = tx.execute(
                "SELECT COUNT(*), COALESCE(SUM(bytes), 0) FROM files "
                "WHERE owner = ? AND substr(path, 1, ?) = ?",
                (owner, len(prefix), prefix),
            ).fetchone()
        return int(count), int(total)

    def delete_file(self, file_id: str, owner: str) -> bool:
        """Forget the owner's file; False when they have none of that id."""
        with self.db.transaction() as tx:
            cursor = tx.execute("DELETE FROM files WHERE id = ? AND owner = ?", (file_id, owner))
            return bool(cursor.rowcount > 0)

    def save(self, batch: BatchRecord) -> None:
        """Store the batch; UnstorableRecord (a 400) if any of its text is not Unicode."""
        record = json.dumps(asdict(batch), ensure_ascii=False)
        if not _is_text(record):
            raise UnstorableRecord(f"The batch's {_bad_field(asdict(batch))}")
        with self.db.transaction() as tx:
            tx.execute(
                "INSERT INTO batches (id, owner, record, status, created_at) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET "
                "record = excluded.record, status = excluded.status",
                (batch.id, batch.owner, record, batch.status, batch.created_at),
            )

    def batch(self, batch_id: str, owner: str | None) -> BatchRecord | None:
        """The batch (the owner's only, unless owner is None)."""
        query = "SELECT record FROM batches WHERE id = ?"
        args: tuple[str, ...] = (batch_id,)
        if owner is not None:
            query, args = query + " AND owner = ?", (batch_id, owner)
        with self.db.transaction() as tx:
            row = tx.execute(query, args).fetchone()
        return None if row is None else _batch_from(batch_id, row[0])

    def batches(
        self,
        owner: str | None,
        status: str | None = None,
        unfinished: bool = False,
    ) -> list[BatchRecord]:
        """Batches newest first: an owner's (or all), of one status or unfinished ones."""
        query, args = "SELECT id, record FROM batches WHERE 1 = 1", []
        if owner is not None:
            query, args = query + " AND owner = ?", [owner]
        if status is not None:
            query += " AND status = ?"
            args.append(status)
        if unfinished:
            query += f" AND status NOT IN ({', '.join('?' * len(FINAL))})"
            args += FINAL
        with self.db.transaction() as tx:
            rows = tx.execute(query + " ORDER BY created_at DESC, id", args).fetchall()
        found = (_batch_from(batch_id, record) for batch_id, record in rows)
        return [batch for batch in found if batch is not None]

    def claim(self, batch_id: str, runner: str, lease_s: float) -> bool:
        """Make ``runner`` the batch's runner, unless another router's lease still holds."""
        now = time.time()
        with self.db.transaction() as tx:
            cursor = tx.execute(
                "UPDATE batches SET runner = ?, lease_until = ? WHERE id = ? AND "
                "(runner IS NULL OR runner = ? OR lease_until IS NULL OR lease_until < ?)",
                (runner, now + lease_s, batch_id, runner, now),
            )
            return bool(cursor.rowcount == 1)

    def renew(self, runner: str, batch_ids: list[str], lease_s: float) -> None:
        """Extend ``runner``'s leases on these batches."""
        if not batch_ids:
            return
        with self.db.transaction() as tx:
            for batch_id in batch_ids:
                tx.execute(
                    "UPDATE batches SET lease_until = ? WHERE id = ? AND runner = ?",
                    (time.time() + lease_s, batch_id, runner),
                )

    def release(self, runner: str) -> None:
        """Let other routers take ``runner``'s unfinished batches at once (it is stopping)."""
        with self.db.transaction() as tx:
            tx.execute("UPDATE batches SET lease_until = 0 WHERE runner = ?", (runner,))

    def unclaimed(self) -> list[str]:
        """Unfinished batches that no router's lease holds: to take over."""
        with self.db.transaction() as tx:
            rows = tx.execute(
                f"SELECT id FROM batches WHERE status NOT IN ({', '.join('?' * len(FINAL))}) "
                "AND (lease_until IS NULL OR lease_until < ?) ORDER BY created_at",
                (*FINAL, time.time()),
            ).fetchall()
        return [str(row[0]) for row in rows]

    def charged_bytes(self, batch_id: str) -> int:
        """How much of the batch's output its lines were already charged for."""
        with self.db.transaction() as tx:
            row = tx.execute(
                "SELECT charged_bytes FROM batches WHERE id = ?", (batch_id,)
            ).fetchone()
        return int(row[0]) if row else 0

    def close(self) -> None:
        self.db.close()


def _is_text(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _bad_field(data: dict[str, Any]) -> str:
    """The first field of a record whose text (a key or a value within) is not Unicode."""
    for name, value in data.items():
        if not _is_text(json.dumps(value, ensure_ascii=False)):
            return name
    return "record"


_TYPES: dict[str, tuple[type, ...]] = {
    "str": (str,),
    "int": (int,),
    "str | None": (str, type(None)),
    "int | None": (int, type(None)),
}


def _batch_from(batch_id: str, text: str) -> BatchRecord | None:
    """A stored batch, or None (logged) for a row this version cannot read.

    Rows written before text was checked may hold lone surrogates (as JSON escapes): those
    are replaced with U+FFFD, so that the batch is still listed and can be answered.
    """
    try:
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("the record is not a JSON object")
        if ("\\ud" in text or "\\uD" in text) and not _is_text(
            json.dumps(data, ensure_ascii=False)
        ):
            data = _replace_surrogates(data)
        known = {f.name: f for f in fields(BatchRecord)}
        kept = {name: value for name, value in data.items() if name in known}
        for name, value in kept.items():
            allowed = _TYPES.get(str(known[name].type))
            if allowed is not None and not isinstance(value, allowed):
                raise ValueError(f"{name} is {value!r}")
        return BatchRecord(**kept)
    except (ValueError, TypeError, RecursionError) as err:
        log.warning("batches.db: batch %s is unreadable and left out: %s", batch_id, err)
        return None


def _replace_surrogates(value: Any) -> Any:
    if isinstance(value, str):
        return "".join("\ufffd" if "\ud800" <= c <= "\udfff" else c for c in value)
    if isinstance(value, dict):
        return {_replace_surrogates(k): _replace_surrogates(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_replace_surrogates(v) for v in value]
    return value
