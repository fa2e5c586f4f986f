"""The store's schema, as numbered migrations applied in order when a router starts.

Each migration runs once, in one transaction with its number recorded in
``schema_migrations``; routers starting together take turns (``Transaction.lock``). A
database that a newer router already migrated past what this one knows is refused: an
older router would write records the newer one does not expect.

Version 1 is the SQLite schema of the first batch service (``CREATE ... IF NOT EXISTS``), so
a database written before migrations existed is taken up as it is.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from inference_bundle.router.store.database import Database, Transaction


@dataclass(frozen=True)
class Migration:
    version: int
    description: str
    sql: str


MIGRATIONS = (
    Migration(
        1,
        "batch and file records",
        """
        CREATE TABLE IF NOT EXISTS files (
            id TEXT PRIMARY KEY, owner TEXT NOT NULL, filename TEXT NOT NULL,
            purpose TEXT NOT NULL, path TEXT NOT NULL, bytes BIGINT NOT NULL,
            created_at BIGINT NOT NULL
        );
        CREATE TABLE IF NOT EXISTS batches (
            id TEXT PRIMARY KEY, owner TEXT NOT NULL, record TEXT NOT NULL,
            status TEXT NOT NULL, created_at BIGINT NOT NULL
        );
        CREATE INDEX IF NOT EXISTS batches_owner ON batches (owner, created_at);
        CREATE INDEX IF NOT EXISTS files_owner ON files (owner, created_at)
        """,
    ),
    Migration(
        2,
        "limits, usage, and which router runs each batch",
        """
        ALTER TABLE batches ADD COLUMN runner TEXT;
        ALTER TABLE batches ADD COLUMN lease_until DOUBLE PRECISION;
        ALTER TABLE batches ADD COLUMN charged_bytes BIGINT NOT NULL DEFAULT 0;
        CREATE TABLE hits (scope TEXT NOT NULL, at DOUBLE PRECISION NOT NULL);
        CREATE INDEX hits_scope ON hits (scope, at);
        CREATE TABLE holds (
            reservation TEXT NOT NULL, scope TEXT NOT NULL, tokens BIGINT NOT NULL,
            expires DOUBLE PRECISION NOT NULL, PRIMARY KEY (reservation, scope)
        );
        CREATE INDEX holds_scope ON holds (scope, expires);
        CREATE TABLE spent (
            scope TEXT NOT NULL, period TEXT NOT NULL, bucket BIGINT NOT NULL,
            tokens BIGINT NOT NULL, PRIMARY KEY (scope, period, bucket)
        );
        CREATE TABLE usage_records (
            request_id TEXT PRIMARY KEY, at DOUBLE PRECISION NOT NULL, day TEXT NOT NULL,
            user_name TEXT NOT NULL, grp TEXT NOT NULL, model TEXT NOT NULL,
            cluster TEXT NOT NULL, operation TEXT NOT NULL, prompt_tokens BIGINT NOT NULL,
            completion_tokens BIGINT NOT NULL, latency_ms DOUBLE PRECISION, status INTEGER NOT NULL,
            via TEXT NOT NULL, estimated INTEGER NOT NULL DEFAULT 0
        );
        CREATE INDEX usage_records_user ON usage_records (user_name, at);
        CREATE INDEX usage_records_at ON usage_records (at);
        CREATE TABLE usage_daily (
            day TEXT NOT NULL, user_name TEXT NOT NULL, grp TEXT NOT NULL, model TEXT NOT NULL,
            cluster TEXT NOT NULL, requests BIGINT NOT NULL, prompt_tokens BIGINT NOT NULL,
            completion_tokens BIGINT NOT NULL,
            PRIMARY KEY (day, user_name, grp, model, cluster)
        )
        """,
    ),
)

LATEST = MIGRATIONS[-1].version


class SchemaTooNew(Exception):
    """The database was migrated by a newer router than this one."""


def migrate(db: Database) -> list[int]:
    """Apply the migrations the database lacks; the versions applied."""
    with db.transaction() as tx:
        tx.lock(["bundle-store-schema"])
        tx.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, "
            "description TEXT NOT NULL, applied_at DOUBLE PRECISION NOT NULL)"
        )
        current = _version(tx)
        if current > LATEST:
            raise SchemaTooNew(
                f"the database is at schema version {current}, newer than this router's "
                f"{LATEST}: run the newer router, or give this one a database of its own"
            )
        applied = []
        for migration in MIGRATIONS:
            if migration.version <= current:
                continue
            for statement in migration.sql.split(";"):
                if statement.strip():
                    tx.execute(statement)
            tx.execute(
                "INSERT INTO schema_migrations VALUES (?, ?, ?)",
                (migration.version, migration.description, time.time()),
            )
            applied.append(migration.version)
    return applied


def _version(tx: Transaction) -> int:
    row = tx.execute("SELECT MAX(version) FROM schema_migrations").fetchone()
    return int(row[0]) if row and row[0] is not None else 0
