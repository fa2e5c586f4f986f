"""The router's records in one store: SQLite by default, PostgreSQL when routers share one.

``open_store`` picks the database from the settings, applies the schema's migrations, and
gives the parts that keep records their view of it: batches and files
(``router.batches.store``), limit counters and usage (``router.limits.ledger``).
"""

from __future__ import annotations

import os
from pathlib import Path

from inference_bundle.config.settings import RouterSettings
from inference_bundle.router.store.database import (
    Database,
    PostgresDatabase,
    SQLiteDatabase,
    StoreUnavailable,
    Transaction,
)
from inference_bundle.router.store.migrations import SchemaTooNew, migrate
from inference_bundle.router.store.private_files import (
    OWNER_ONLY,
    FileAccess,
    file_access,
    open_private,
    private_folder,
    tighten,
)

__all__ = [
    "Database",
    "SchemaTooNew",
    "StoreUnavailable",
    "Transaction",
    "open_database",
    "open_sqlite",
    "sqlite_path",
]


def sqlite_path(settings: RouterSettings, state_dir: Path) -> Path:
    """The SQLite file (``batches.db``), relative to the state folder unless absolute."""
    return state_dir / (settings.batches.db or "batches.db")


def open_database(settings: RouterSettings, state_dir: Path) -> Database:
    """The router's database, migrated to this version's schema.

    Raises StoreUnavailable when PostgreSQL does not answer, SchemaTooNew when a newer router
    migrated it.
    """
    store = settings.store
    db: Database
    if store.url is not None:
        db = PostgresDatabase(store.url, store.pool_size, store.connect_timeout_s)
    else:
        access = file_access(settings.file_group, "router settings")
        return open_sqlite(sqlite_path(settings, state_dir), access)
    return _migrated(db)


def open_sqlite(path: Path, access: FileAccess = OWNER_ONLY) -> Database:
    """A private SQLite file (created 0600 in a 0700 folder, or its file_group's), migrated."""
    _make_private(path, access)
    return _migrated(SQLiteDatabase(path))


def _migrated(db: Database) -> Database:
    try:
        migrate(db)
    except BaseException:
        db.close()
        raise
    return db


def _make_private(path: Path, access: FileAccess) -> None:
    """The database and its folder readable by the service's account (and file_group) only."""
    private_folder(path.parent, access)
    # SQLite gives its -wal and -shm files the database file's mode, so that is set first.
    os.close(open_private(path, os.O_RDWR | os.O_CREAT, access))
    for kept in ("-wal", "-shm", "-journal"):  # as an older router may have left them
        tighten(path.with_name(path.name + kept), access)
