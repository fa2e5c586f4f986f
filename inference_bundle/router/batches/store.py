"""Batch and file records in SQLite: they outlive the router, and each has one owner."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import uuid
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

# Statuses after which a batch never changes again.
FINAL = ("completed", "failed", "cancelled", "expired")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    id TEXT PRIMARY KEY, owner TEXT NOT NULL, filename TEXT NOT NULL, purpose TEXT NOT NULL,
    path TEXT NOT NULL, bytes INTEGER NOT NULL, created_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS batches (
    id TEXT PRIMARY KEY, owner TEXT NOT NULL, record TEXT NOT NULL,
    status TEXT NOT NULL, created_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS batches_owner ON batches (owner, created_at);
CREATE INDEX IF NOT EXISTS files_owner ON files (owner, created_at);
"""


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

    def with_(self, **changes: Any) -> BatchRecord:
        return replace(self, **changes)


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


class BatchStore:
    """Records in one SQLite file; safe to use from several threads."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(_SCHEMA)
        self._lock = threading.Lock()

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
        with self._lock:
            self._db.execute(
                "INSERT INTO files VALUES (?, ?, ?, ?, ?, ?, ?)",
                tuple(getattr(record, f.name) for f in fields(FileRecord)),
            )
        return record

    def file(self, file_id: str, owner: str) -> FileRecord | None:
        """The owner's file, or None (someone else's file is not there for them)."""
        with self._lock:
            row = self._db.execute(
                "SELECT * FROM files WHERE id = ? AND owner = ?", (file_id, owner)
            ).fetchone()
        return None if row is None else FileRecord(*row)

    def save(self, batch: BatchRecord) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO batches VALUES (?, ?, ?, ?, ?)",
                (batch.id, batch.owner, json.dumps(asdict(batch)), batch.status, batch.created_at),
            )

    def batch(self, batch_id: str, owner: str | None) -> BatchRecord | None:
        """The batch (the owner's only, unless owner is None)."""
        query = "SELECT record FROM batches WHERE id = ?"
        args: tuple[str, ...] = (batch_id,)
        if owner is not None:
            query, args = query + " AND owner = ?", (batch_id, owner)
        with self._lock:
            row = self._db.execute(query, args).fetchone()
        return None if row is None else BatchRecord(**json.loads(row[0]))

    def batches(
        self,
        owner: str | None,
        status: str | None = None,
        unfinished: bool = False,
    ) -> list[BatchRecord]:
        """Batches newest first: an owner's (or all), of one status or unfinished ones."""
        query, args = "SELECT record FROM batches WHERE 1 = 1", []
        if owner is not None:
            query, args = query + " AND owner = ?", [owner]
        if status is not None:
            query += " AND status = ?"
            args.append(status)
        if unfinished:
            query += f" AND status NOT IN ({', '.join('?' * len(FINAL))})"
            args += FINAL
        with self._lock:
            rows = self._db.execute(query + " ORDER BY created_at DESC, id", args).fetchall()
        return [BatchRecord(**json.loads(row[0])) for row in rows]

    def close(self) -> None:
        with self._lock:
            self._db.close()
