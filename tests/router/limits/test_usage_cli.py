"""`bundle usage`: the store's daily totals as a table or JSON, by user, group, model or day."""

from __future__ import annotations

import calendar
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner, Result

from inference_bundle.config.settings import load_settings
from inference_bundle.ops.cli import main
from inference_bundle.router.limits.ledger import Ledger, Settlement
from inference_bundle.router.store import open_database
from inference_bundle.router.store.state_folder import state_folder


def at(day: str, hour: int = 12) -> float:
    """A moment of a UTC day (YYYY-MM-DD)."""
    year, month, mday = map(int, day.split("-"))
    return float(calendar.timegm((year, month, mday, hour, 0, 0)))


def settlement(
    request_id: str,
    moment: float,
    user: str,
    group: str = "",
    model: str = "local/tiny-llama",
    prompt: int = 10,
    completion: int = 5,
) -> Settlement:
    return Settlement(
        request_id=request_id,
        at=moment,
        user=user,
        group=group,
        model=model,
        cluster="local",
        operation="chat",
        prompt_tokens=prompt,
        completion_tokens=completion,
        latency_ms=12.5,
        status=200,
        via="connection",
    )


# Three days of March 2025 (UTC): alice twice on the 1st, bob on the 2nd, alice on the 5th.
RECORDS = [
    settlement("r1", at("2025-03-01", 1), "alice", "physics", prompt=100, completion=20),
    settlement("r2", at("2025-03-01", 23), "alice", "physics", "local/other", 7, 3),
    settlement("r3", at("2025-03-02"), "bob", "chemistry", prompt=1000, completion=2000),
    settlement("r4", at("2025-03-05"), "alice", "physics", prompt=1, completion=1),
]
MARCH = ["--since", "2025-03-01", "--until", "2025-03-31"]


def write_settings(root: Path, store: dict[str, Any] | None = None) -> Path:
    path = root / "router.yaml"
    data: dict[str, Any] = {
        "clusters": ["local"],
        "executor": "engine",
        "state_dir": "router-state",  # relative: taken from --root, as the router does
        "data_plane": {"enabled": False},
        "auth": {"mode": "keys", "keys_file": "router-state/api-keys.json"},
    }
    if store is not None:
        data["store"] = store
    path.write_text(yaml.safe_dump(data))
    return path


def record(root: Path, settlements: list[Settlement]) -> None:
    """Write usage as the router does: through the ledger, into its store."""
    settings = load_settings(root / "router.yaml", root)
    db = open_database(settings, state_folder(settings, root))
    try:
        assert Ledger(db).settle(settlements) == len(settlements)
    finally:
        db.close()


@pytest.fixture
def root(tmp_path: Path) -> Iterator[Path]:
    write_settings(tmp_path)
    record(tmp_path, RECORDS)
    yield tmp_path


def bundle(root: Path, *args: str) -> Result:
    return CliRunner().invoke(
        main, ["--root", str(root), "usage", "--config", "router.yaml", *args]
    )


def as_json(root: Path, *args: str) -> dict[str, Any]:
    result = bundle(root, *args, "--json")
    assert result.exit_code == 0, result.output
    answer: dict[str, Any] = json.loads(result.output)
    return answer


def test_the_table_sums_each_user_with_a_total_line(root: Path) -> None:
    result = bundle(root, *MARCH)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == "Usage of every user from 2025-03-01 to 2025-03-31 (UTC days), by user:"
    assert lines[1].split() == ["USER", "REQUESTS", "PROMPT", "COMPLETION", "TOTAL"]
    assert lines[2].split() == ["alice", "3", "108", "24", "132"]
    assert lines[3].split() == ["bob", "1", "1,000", "2,000", "3,000"]
    assert set(lines[4].replace(" ", "")) == {"-"}
    assert lines[5].split() == ["TOTAL", "4", "1,108", "2,024", "3,132"]
    assert len(lines) == 6
    # Numbers are right-aligned under their header.
    assert lines[2].index("132") + 3 == lines[1].index("TOTAL") + len("TOTAL")


def test_json_gives_the_rows_and_the_total(root: Path) -> None:
    answer = as_json(root, *MARCH)
    assert answer == {
        "since": "2025-03-01",
        "until": "2025-03-31",
        "by": ["user"],
        "user": None,
        "data": [
            {
                "user": "alice",
                "requests": 3,
                "prompt_tokens": 108,
                "completion_tokens": 24,
                "total_tokens": 132,
            },
            {
                "user": "bob",
                "requests": 1,
                "prompt_tokens": 1000,
                "completion_tokens": 2000,
                "total_tokens": 3000,
            },
        ],
        "total": {
            "requests": 4,
            "prompt_tokens": 1108,
            "completion_tokens": 2024,
            "total_tokens": 3132,
        },
    }


def test_by_group_and_by_model(root: Path) -> None:
    groups = as_json(root, *MARCH, "--by", "group")["data"]
    assert [(row["group"], row["requests"], row["total_tokens"]) for row in groups] == [
        ("chemistry", 1, 3000),
        ("physics", 3, 132),
    ]
    models = as_json(root, *MARCH, "--by", "model")["data"]
    assert [(row["model"], row["requests"], row["total_tokens"]) for row in models] == [
        ("local/other", 1, 10),
        ("local/tiny-llama", 3, 3122),
    ]
    table = bundle(root, *MARCH, "--by", "model").output.splitlines()
    assert table[1].split() == ["MODEL", "REQUESTS", "PROMPT", "COMPLETION", "TOTAL"]
    assert table[2].split() == ["local/other", "1", "7", "3", "10"]


def test_several_keys_at_once_and_one_user(root: Path) -> None:
    answer = as_json(root, *MARCH, "--by", "day,user", "--user", "alice")
    assert answer["user"] == "alice"
    assert [(row["day"], row["user"], row["requests"]) for row in answer["data"]] == [
        ("2025-03-01", "alice", 2),
        ("2025-03-05", "alice", 1),
    ]
    table = bundle(root, *MARCH, "--by", "day", "--by", "user", "--user", "bob").output
    assert table.splitlines()[0].startswith("Usage of bob from 2025-03-01")
    assert table.splitlines()[2].split() == ["2025-03-02", "bob", "1", "1,000", "2,000", "3,000"]


def test_since_and_until_take_whole_utc_days(root: Path) -> None:
    # The 1st's two requests (01:00 and 23:00 UTC) are in; the 5th is out.
    answer = as_json(root, "--since", "2025-03-01", "--until", "2025-03-02", "--by", "day")
    assert [(row["day"], row["requests"]) for row in answer["data"]] == [
        ("2025-03-01", 2),
        ("2025-03-02", 1),
    ]
    later = as_json(root, "--since", "2025-03-02", "--until", "2025-03-31")
    assert [(row["user"], row["requests"]) for row in later["data"]] == [("alice", 1), ("bob", 1)]


def test_defaults_are_this_month_until_today_by_user(tmp_path: Path) -> None:
    write_settings(tmp_path)
    now = time.time()
    record(
        tmp_path,
        [
            settlement("today", now, "carol", prompt=3, completion=4),
            # 40 days ago is always before the first of this month.
            settlement("last-month", now - 40 * 86400, "dave"),
        ],
    )
    answer = as_json(tmp_path)
    today = time.strftime("%Y-%m-%d", time.gmtime(now))
    assert (answer["since"], answer["until"], answer["by"]) == (today[:8] + "01", today, ["user"])
    assert [(row["user"], row["total_tokens"]) for row in answer["data"]] == [("carol", 7)]


def test_no_records_says_so(root: Path) -> None:
    result = bundle(root, "--since", "2024-01-01", "--until", "2024-01-31")
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[1] == "No requests recorded in these days."
    assert as_json(root, "--since", "2024-01-01", "--until", "2024-01-31")["data"] == []


def test_a_router_that_never_ran_has_no_usage_and_nothing_is_created(tmp_path: Path) -> None:
    write_settings(tmp_path)
    result = bundle(tmp_path, *MARCH)
    assert result.exit_code == 0, result.output
    assert "note: router-state/batches.db does not exist yet" in result.output
    assert not (tmp_path / "router-state").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--since", "March"],
            "Invalid value for '--since': a day as YYYY-MM-DD (UTC), not 'March'",
        ),
        (
            ["--since", "2025-03-05", "--until", "2025-03-01"],
            "2025-03-05 is after --until 2025-03-01",
        ),
        (["--by", "project"], "distinct names among day, user, group, model, cluster"),
        (["--by", "user,user"], "distinct names among day, user, group, model, cluster"),
    ],
)
def test_bad_options_are_named(root: Path, args: list[str], message: str) -> None:
    result = bundle(root, *args)
    assert result.exit_code == 2
    assert message in result.output


def test_bad_settings_name_the_file_and_field(tmp_path: Path) -> None:
    write_settings(tmp_path, store={"url": "mysql://db/usage"})
    result = bundle(tmp_path, *MARCH)
    assert result.exit_code == 1
    assert "router.yaml" in result.output and "store.url" in result.output


def test_a_postgres_that_does_not_answer_fails_in_one_line(tmp_path: Path) -> None:
    url = "postgresql://bundle@127.0.0.1:1/usage"
    write_settings(tmp_path, store={"url": url, "connect_timeout_s": 1})
    began = time.monotonic()
    result = bundle(tmp_path, *MARCH)
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert lines[0].startswith(
        f"Error: router.yaml: store.url ({url}): the database does not answer ("
    )
    # Why, as the driver said it, not only that the pool gave up.
    assert "Connection refused" in lines[0]
    assert lines[0].endswith("is it running, and is store.url right?")
    assert time.monotonic() - began < 20
    assert not (tmp_path / "router-state").exists()


def test_a_password_in_store_url_is_not_shown(tmp_path: Path) -> None:
    url = "postgresql://bundle:hunter2@127.0.0.1:1/usage"
    write_settings(tmp_path, store={"url": url, "connect_timeout_s": 1})
    result = bundle(tmp_path, *MARCH)
    assert result.exit_code == 1
    assert "hunter2" not in result.output
    assert "store.url (postgresql://bundle@127.0.0.1:1/usage)" in result.output


def test_usage_on_postgres(tmp_path: Path, postgres_url: str) -> None:
    write_settings(tmp_path, store={"url": postgres_url})
    record(tmp_path, RECORDS)
    answer = as_json(tmp_path, *MARCH, "--by", "group")
    assert [(row["group"], row["requests"], row["total_tokens"]) for row in answer["data"]] == [
        ("chemistry", 1, 3000),
        ("physics", 3, 132),
    ]
    assert not (tmp_path / "router-state").exists()  # nothing of SQLite's
