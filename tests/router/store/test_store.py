"""The store on both databases: migrations, batch leases, reservations that hold under
concurrency, and a PostgreSQL that goes away and comes back. Real SQLite files and a real
PostgreSQL server (tests/postgres.py)."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from inference_bundle.config.settings import LimitsSettings
from inference_bundle.router.batches.store import BatchRecord, BatchStore
from inference_bundle.router.limits.ledger import Ledger, Settlement
from inference_bundle.router.limits.rules import Cost, Rules
from inference_bundle.router.store import (
    Database,
    SchemaTooNew,
    StoreUnavailable,
    open_sqlite,
)
from inference_bundle.router.store.database import PostgresDatabase
from inference_bundle.router.store.migrations import LATEST, migrate
from tests.postgres import PostgresServer

TINY = "local/tiny-llama"


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    if request.param == "sqlite":
        database = open_sqlite(tmp_path / "store.db")
    else:
        server: PostgresServer = request.getfixturevalue("postgres")
        if not server.running:
            server.start()
        url = server.fresh_database("store")
        database = PostgresDatabase(url, pool_size=8, connect_timeout_s=3)
        migrate(database)
    yield database
    database.close()


def batch(batch_id: str, status: str = "in_progress") -> BatchRecord:
    return BatchRecord(
        id=batch_id,
        owner="alice@anl.gov",
        cluster="local",
        model=TINY,
        endpoint="/v1/chat/completions",
        input_file_id="file_1",
        input_path=f"/nowhere/{batch_id}/input.jsonl",
        output_path=f"/nowhere/{batch_id}/output.jsonl",
        error_path=f"/nowhere/{batch_id}/errors.jsonl",
        status=status,
        total=3,
        created_at=int(time.time()),
    )


def counters(**user: int) -> tuple:  # type: ignore[type-arg]
    rules = Rules(LimitsSettings.model_validate({"clusters": {"local": {"user": user}}}))
    return rules.counters("local", "alice@anl.gov", "", TINY)


def test_migrations_run_once_and_a_newer_schema_is_refused(db: Database) -> None:
    assert migrate(db) == []  # already at the latest
    with db.transaction() as tx:
        tx.execute(
            "INSERT INTO schema_migrations VALUES (?, ?, ?)", (LATEST + 1, "from the future", 0)
        )
    with pytest.raises(SchemaTooNew, match=f"version {LATEST + 1}"):
        migrate(db)


def test_a_database_from_before_migrations_is_taken_up(tmp_path: Path) -> None:
    """The first batch service's SQLite file (no schema_migrations) keeps its records."""
    path = tmp_path / "batches.db"
    old = sqlite3.connect(path)
    old.executescript(
        "CREATE TABLE batches (id TEXT PRIMARY KEY, owner TEXT NOT NULL, record TEXT NOT NULL,"
        " status TEXT NOT NULL, created_at INTEGER NOT NULL);"
        "CREATE TABLE files (id TEXT PRIMARY KEY, owner TEXT NOT NULL, filename TEXT NOT NULL,"
        " purpose TEXT NOT NULL, path TEXT NOT NULL, bytes INTEGER NOT NULL,"
        " created_at INTEGER NOT NULL);"
    )
    old.close()
    store = BatchStore(open_sqlite(path))
    store.save(batch("batch_old"))
    store.close()
    again = BatchStore(open_sqlite(path))
    found = again.batch("batch_old", "alice@anl.gov")
    assert found is not None and found.status == "in_progress"
    again.close()


def test_a_lease_keeps_a_batch_with_one_router_until_it_lapses_or_is_let_go(
    db: Database,
) -> None:
    store = BatchStore(db)
    store.save(batch("batch_a"))
    assert store.unclaimed() == ["batch_a"]
    assert store.claim("batch_a", "router-1", lease_s=30)
    assert not store.claim("batch_a", "router-2", lease_s=30)
    assert store.unclaimed() == []
    store.release("router-1")
    assert store.unclaimed() == ["batch_a"]
    assert store.claim("batch_a", "router-2", lease_s=0.2)
    time.sleep(0.3)  # fixed: the lease lapses with the clock (no event to wait for)
    assert store.claim("batch_a", "router-1", lease_s=30)  # router-2's lease lapsed
    store.save(batch("batch_a", status="completed"))
    assert store.unclaimed() == []


def test_threads_reserving_at_once_never_pass_a_limit(db: Database) -> None:
    """40 threads (each a connection of its own on PostgreSQL) against concurrent = 7 and a
    minute's 300 tokens: exactly 7 admitted, then the tokens bind."""
    ledger = Ledger(db)
    limited = counters(concurrent=7)
    admitted: list[int] = []
    lock = threading.Lock()

    def reserve(i: int) -> None:
        if ledger.reserve(f"r{i}", limited, Cost(1, 1), 60) is None:
            with lock:
                admitted.append(i)

    threads = [threading.Thread(target=reserve, args=(i,)) for i in range(40)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(admitted) == 7
    tokens = counters(tokens_per_minute=300)
    results = []

    def reserve_tokens(i: int) -> None:
        refusal = ledger.reserve(f"t{i}", tokens, Cost(20, 20), 60)
        with lock:
            results.append(refusal is None)

    threads = [threading.Thread(target=reserve_tokens, args=(i,)) for i in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results.count(True) == 7  # 7 x 40 = 280 <= 300 < 320


def test_settled_usage_is_recorded_once_and_rolled_up(db: Database) -> None:
    ledger = Ledger(db)
    limited = counters(tokens_per_day=1000)
    scopes = tuple(c.scope for c in limited)
    assert ledger.reserve("req-1", limited, Cost(50, 50), 60) is None
    settlement = Settlement(
        "req-1", time.time(), "alice@anl.gov", "", TINY, "local", "/v1/chat/completions",
        7, 3, 12.5, 200, "connection", scopes=scopes,
    )  # fmt: skip
    assert ledger.settle([settlement]) == 1
    assert ledger.settle([settlement]) == 0
    [row] = ledger.usage("2000-01-01", "2999-12-31", ["user", "model"])
    assert row == {
        "user": "alice@anl.gov",
        "model": TINY,
        "requests": 1,
        "prompt_tokens": 7,
        "completion_tokens": 3,
        "total_tokens": 10,
    }
    [standing] = ledger.standing(limited)
    assert (standing["used"], standing["remaining"]) == (10, 990)  # the hold became 10
    [record] = ledger.records(["req-1"])
    assert record["via"] == "connection" and record["status"] == 200


def test_a_postgresql_that_goes_away_is_unavailable_and_then_answers_again(
    postgres: PostgresServer,
) -> None:
    if not postgres.running:
        postgres.start()
    url = postgres.fresh_database("outage")
    db = PostgresDatabase(url, pool_size=2, connect_timeout_s=2)
    migrate(db)
    ledger = Ledger(db)
    postgres.stop()
    try:
        began = time.monotonic()
        with pytest.raises(StoreUnavailable) as raised:
            ledger.reserve("r-1", counters(concurrent=5), Cost(1, 1), 60)
        assert raised.value.status == 503
        assert raised.value.code == "store_unavailable"
        assert time.monotonic() - began < 10
    finally:
        postgres.start()
    deadline = time.monotonic() + 20
    while True:
        try:
            assert ledger.reserve("r-2", counters(concurrent=5), Cost(1, 1), 60) is None
            break
        except StoreUnavailable:
            assert time.monotonic() < deadline, "PostgreSQL did not answer again"
            time.sleep(0.5)
    db.close()


def test_a_postgresql_that_does_not_answer_at_start_is_named(postgres: PostgresServer) -> None:
    with pytest.raises(StoreUnavailable):
        PostgresDatabase("postgresql://bundle@127.0.0.1:1/none", pool_size=1, connect_timeout_s=1)
