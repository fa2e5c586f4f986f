"""One SQL interface over SQLite (one router, embedded) and PostgreSQL (several routers).

Queries are written once, with ``?`` placeholders and the SQL both dialects share
(``INSERT ... ON CONFLICT``, ``RETURNING``); the PostgreSQL side turns the placeholders into
psycopg's. A transaction on SQLite is ``BEGIN IMMEDIATE`` (writers take turns, so a
read-then-write is atomic); on PostgreSQL ``lock`` takes transaction-scoped advisory locks
on the keys a transaction reads and then writes, so that routers sharing the database take
turns on them too.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

from inference_bundle.router.errors import APIError

log = logging.getLogger("router.store")

Params = Sequence[Any]


class StoreUnavailable(APIError):
    """The database did not answer: a 503, and nothing was recorded or charged."""

    def __init__(self, detail: str) -> None:
        super().__init__(
            503,
            "The router's database is not answering, so the request was not sent (nothing "
            "was charged); try again in a minute.",
            type="server_error",
            code="store_unavailable",
            headers={"Retry-After": "10"},
        )
        self.detail = detail


class Transaction(Protocol):
    def execute(self, sql: str, params: Params = ()) -> Any:
        """Run one statement; the cursor (fetchone, fetchall, rowcount)."""
        ...

    def lock(self, keys: Sequence[str]) -> None:
        """Hold these keys until the transaction ends (no-op where writers take turns)."""
        ...


class Database(Protocol):
    dialect: str  # "sqlite" | "postgresql"
    #: Whether a call may block for long (a network round trip): callers on the event
    #: loop then run it in a worker thread.
    remote: bool

    def transaction(self) -> contextlib.AbstractContextManager[Transaction]:
        """A transaction, committed when the block ends and rolled back on an exception."""
        ...

    def close(self) -> None: ...


class SQLiteDatabase:
    """One connection, shared by the router's threads under a lock."""

    dialect = "sqlite"
    remote = False

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        # A row of bytes that are not UTF-8 (written by another tool) reads as text with
        # U+FFFD instead of failing the whole query it is in.
        self._db.text_factory = lambda raw: raw.decode("utf-8", "replace")
        self._db.execute("PRAGMA journal_mode=WAL")
        # WAL with NORMAL: a commit is not flushed to disk each time (a power cut may lose
        # the last moments of usage, never corrupt the file).
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._lock = threading.RLock()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Transaction]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield _SQLiteTransaction(self._db)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            self._db.close()


class _SQLiteTransaction:
    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def execute(self, sql: str, params: Params = ()) -> Any:
        return self._db.execute(sql, tuple(params))

    def lock(self, keys: Sequence[str]) -> None:
        """BEGIN IMMEDIATE already made this the only writer."""


class PostgresDatabase:
    """A pool of psycopg connections; any failure to reach the server is StoreUnavailable."""

    dialect = "postgresql"
    remote = True

    def __init__(self, url: str, pool_size: int, connect_timeout_s: float) -> None:
        import psycopg_pool

        self._errors = _postgres_errors()
        self.timeout = connect_timeout_s
        self._pool = psycopg_pool.ConnectionPool(
            url,
            min_size=1,
            max_size=pool_size,
            timeout=connect_timeout_s,
            open=False,
            kwargs={"connect_timeout": max(1, round(connect_timeout_s))},
            # A connection the server dropped (a restart) is found and replaced before use.
            check=psycopg_pool.ConnectionPool.check_connection,
            name="router-store",
        )
        try:
            self._pool.open(wait=True, timeout=connect_timeout_s)
        except self._errors as err:
            self._pool.close()
            raise StoreUnavailable(str(err)) from None

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Transaction]:
        try:
            with self._pool.connection() as conn, conn.transaction():
                yield _PostgresTransaction(conn.cursor())
        except self._errors as err:
            log.warning("store: PostgreSQL is not answering: %s", err)
            raise StoreUnavailable(str(err)) from None

    def close(self) -> None:
        self._pool.close()


class _PostgresTransaction:
    def __init__(self, cursor: Any) -> None:
        self._cursor = cursor

    def execute(self, sql: str, params: Params = ()) -> Any:
        self._cursor.execute(sql.replace("?", "%s"), tuple(params))
        return self._cursor

    def lock(self, keys: Sequence[str]) -> None:
        # In one order, so that two transactions never wait on each other's keys.
        for key in sorted(set(keys)):
            self._cursor.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (key,))


def _postgres_errors() -> tuple[type[BaseException], ...]:
    import psycopg
    import psycopg_pool

    return (psycopg.OperationalError, psycopg.InterfaceError, psycopg_pool.PoolTimeout)
