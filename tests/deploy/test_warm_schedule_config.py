"""keep_warm in an endpoint, timezone and maintenance in a profile: their values, and a
broken one gives one line naming the file, the field and the fix."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, time
from pathlib import Path

import pytest

from inference_bundle.config.catalog import load_catalog
from inference_bundle.config.problems import CatalogError

Edit = Callable[[str, str, str], Path]
LLAMA8 = "endpoints/sophia/meta-llama-3-1-8b-instruct.yaml"
SOPHIA = "config/clusters/sophia.yaml"


def problems(repo: Path, cluster: str = "sophia") -> list[str]:
    with pytest.raises(CatalogError) as caught:
        load_catalog(repo, cluster)
    return [str(p) for p in caught.value.problems]


def add(repo: Path, relative: str, text: str) -> None:
    path = repo / relative
    path.write_text(path.read_text() + text)


def llama8_windows(repo: Path) -> list[tuple[list[str], time, time, bool]]:
    catalog = load_catalog(repo, "sophia")
    [entry] = [e for e in catalog.entries if e.file == LLAMA8]
    return [
        (list(w.days), w.opening, w.closing, w.closes_next_day) for w in entry.endpoint.keep_warm
    ]


def test_the_shipped_profiles_say_their_time_zone(repo: Path) -> None:
    sophia = load_catalog(repo, "sophia").profile
    assert sophia.timezone == "America/Chicago"
    assert sophia.maintenance == []
    assert load_catalog(repo, "local").profile.timezone == "UTC"  # the default


def test_keep_warm_windows_as_written(repo: Path) -> None:
    add(
        repo,
        LLAMA8,
        "keep_warm:\n"
        '  - {days: [mon, tue, wed, thu, fri], from: "08:00", to: "18:00"}\n'
        '  - {days: [fri], from: "22:00", to: "06:00"}\n'
        '  - {from: "7:30", to: "24:00"}\n',
    )
    every_day = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
    assert llama8_windows(repo) == [
        (["mon", "tue", "wed", "thu", "fri"], time(8), time(18), False),
        (["fri"], time(22), time(6), True),  # past midnight into Saturday
        (every_day, time(7, 30), time(0), True),  # "24:00": midnight, the day after
    ]


def test_keep_warm_mistakes_name_the_field(repo: Path) -> None:
    add(
        repo,
        LLAMA8,
        "keep_warm:\n"
        '  - {days: [monday], from: "8 am", to: 18:00}\n'
        '  - {from: "09:00", to: "09:00", until: "10:00"}\n'
        '  - {days: [], from: "25:00", to: "24:01"}\n',
    )
    assert problems(repo) == [
        f"{LLAMA8}: keep_warm.0.days.0: must be 'mon', 'tue', 'wed', 'thu', 'fri', 'sat' "
        "or 'sun' (got 'monday')",
        f'{LLAMA8}: keep_warm.0.from: must be a time of day "HH:MM" from "00:00" to '
        "\"23:59\" (got '8 am')",
        f"{LLAMA8}: keep_warm.0.to: is the number 1080: YAML reads an unquoted 18:00 as a "
        'number; quote it, e.g. "18:00"',
        f"{LLAMA8}: keep_warm.1.to: is the same as from (09:00); for the whole day write "
        'from: "00:00", to: "24:00"',
        # The YAML name of the field, not its Python one (from_).
        f"{LLAMA8}: keep_warm.1.until: unknown field; valid fields here are: days, from, to",
        f"{LLAMA8}: keep_warm.2.days: List should have at least 1 item after validation, "
        "not 0 (got [])",
        f'{LLAMA8}: keep_warm.2.from: must be a time of day "HH:MM" from "00:00" to '
        "\"23:59\" (got '25:00')",
        f'{LLAMA8}: keep_warm.2.to: must be a time of day "HH:MM" from "00:00" to '
        "\"24:00\" (got '24:01')",
    ]


def test_a_time_zone_must_be_known(repo: Path, edit: Edit) -> None:
    edit(SOPHIA, "timezone: America/Chicago", "timezone: Central")
    assert problems(repo) == [
        f"{SOPHIA}: timezone: 'Central' is not a time zone this system knows; use an IANA "
        "name such as America/Chicago, or UTC"
    ]


def test_maintenance_windows_as_written(repo: Path, edit: Edit) -> None:
    edit(
        SOPHIA,
        "maintenance: []",
        "maintenance:\n"
        '  - {start: "2026-12-15T08:00:00-06:00", end: "2026-12-15T16:00:00-06:00", '
        "reason: quarterly maintenance}\n"
        # Unquoted, YAML reads a timestamp itself.
        "  - {start: 2027-01-05T14:00:00Z, end: 2027-01-05T20:00:00Z, reason: power work}",
    )
    first, second = load_catalog(repo, "sophia").profile.maintenance
    assert first.start.astimezone(UTC) == datetime(2026, 12, 15, 14, tzinfo=UTC)
    assert first.end.astimezone(UTC) == datetime(2026, 12, 15, 22, tzinfo=UTC)
    assert first.reason == "quarterly maintenance"
    assert second.start.astimezone(UTC) == datetime(2027, 1, 5, 14, tzinfo=UTC)


def test_maintenance_mistakes_name_the_field(repo: Path, edit: Edit) -> None:
    edit(
        SOPHIA,
        "maintenance: []",
        "maintenance:\n"
        '  - {start: "2026-12-15T08:00:00", end: "2026-12-15T16:00:00-06:00", reason: x}\n'
        '  - {start: "2026-12-15T08:00:00-06:00", end: "2026-12-15T07:00:00-06:00", '
        'reason: ""}\n'
        '  - {start: "next tuesday", end: "2026-12-15T07:00:00-06:00"}',
    )
    assert problems(repo) == [
        f"{SOPHIA}: maintenance.0.start: 2026-12-15T08:00:00 has no UTC offset; write it "
        "with one, e.g. 2026-12-15T08:00:00-06:00 or ...Z for UTC",
        f"{SOPHIA}: maintenance.1.end: must be after start (2026-12-15T08:00:00-06:00); got "
        "2026-12-15T07:00:00-06:00",
        f"{SOPHIA}: maintenance.1.reason: String should have at least 1 character (got '')",
        f"{SOPHIA}: maintenance.2.reason: required field is missing; add it",
        f"{SOPHIA}: maintenance.2.start: Input should be a valid datetime or date, invalid "
        "character in year (got 'next tuesday')",
    ]
