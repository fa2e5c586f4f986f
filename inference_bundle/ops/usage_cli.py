"""`bundle usage`: tokens and requests per user, group, model, cluster or day, from the store.

A thin layer over the router's ledger (``Ledger.usage``): it opens the same store the router
writes (the SQLite file in its state folder, or the PostgreSQL database ``store.url``
names), reads the daily totals and prints them. Both stores take a reader while the router
runs (SQLite in WAL mode), so it is safe at any time; it writes nothing but the schema's
migrations, which the router applies at its start anyway.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
import time
from collections.abc import Iterator, Sequence
from datetime import date
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import click

from inference_bundle.config.problems import display_path
from inference_bundle.config.settings import RouterSettings
from inference_bundle.ops.router_config import DEFAULT_CONFIG, router_settings
from inference_bundle.router.limits.ledger import BY_CHOICES, Ledger, day_of
from inference_bundle.router.store import (
    SchemaTooNew,
    StoreUnavailable,
    open_database,
    sqlite_path,
)

COUNTS = ("requests", "prompt_tokens", "completion_tokens", "total_tokens")
COUNT_HEADERS = ("REQUESTS", "PROMPT", "COMPLETION", "TOTAL")


def _day_option(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is None:
        return None
    try:
        return date.fromisoformat(value).isoformat()
    except ValueError:
        raise click.BadParameter(f"a day as YYYY-MM-DD (UTC), not {value!r}") from None


def _by_option(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]) -> list[str]:
    """``--by`` repeated or comma-separated (as GET /v1/usage takes it), each name once."""
    names = [name.strip() for item in value for name in item.split(",") if name.strip()]
    unknown = [name for name in names if name not in BY_CHOICES]
    if unknown or len(set(names)) != len(names) or not names:
        raise click.BadParameter(
            f"distinct names among {', '.join(BY_CHOICES)}, not {', '.join(value)!r}"
        )
    return names


@click.command()
@click.option(
    "--config",
    "config",
    type=click.Path(dir_okay=False, path_type=Path),
    default=DEFAULT_CONFIG,
    show_default=True,
    help="Router settings naming the store (state_dir, or store.url); relative to --root.",
)
@click.option(
    "--since",
    callback=_day_option,
    help="First day (YYYY-MM-DD, UTC, included)  [default: the first of --until's month]",
)
@click.option(
    "--until", callback=_day_option, help="Last day (YYYY-MM-DD, UTC, included)  [default: today]"
)
@click.option(
    "--by",
    "by",
    multiple=True,
    default=("user",),
    show_default=True,
    callback=_by_option,
    help=f"Sum by one of {', '.join(BY_CHOICES)} (repeat, or comma-separate, for several).",
)
@click.option("--user", help="Only this user's usage.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object, for scripts.")
@click.pass_obj
def usage(
    root: Path,
    config: Path,
    since: str | None,
    until: str | None,
    by: list[str],
    user: str | None,
    as_json: bool,
) -> None:
    """Tokens and requests per user (or group, model, cluster, day) from the router's store.

    Daily totals (UTC days) of the requests the router recorded, read from the store the
    router with --config writes; safe while it runs.
    """
    today = day_of(time.time())
    until = until or today
    since = since or until[:8] + "01"
    if since > until:
        raise click.BadParameter(f"{since} is after --until {until}", param_hint="--since")
    settings, shown = router_settings(root, config)
    rows = _read_usage(settings, root, shown, since, until, by, user)
    total = {name: sum(row[name] for row in rows) for name in COUNTS}
    if as_json:
        body = {"since": since, "until": until, "by": by, "user": user, "data": rows}
        click.echo(json.dumps({**body, "total": total}, indent=2))
        return
    whose = f"of {user}" if user else "of every user"
    click.echo(f"Usage {whose} from {since} to {until} (UTC days), by {', '.join(by)}:")
    if not rows:
        click.echo("No requests recorded in these days.")
        return
    click.echo(_table(rows, by, total))


def _read_usage(
    settings: RouterSettings,
    root: Path,
    shown: str,
    since: str,
    until: str,
    by: Sequence[str],
    user: str | None,
) -> list[dict[str, Any]]:
    """The ledger's daily totals, or a ClickException naming the store that did not answer."""
    # Here, not at the top: the router's store pulls in its database drivers, which every
    # other `bundle` command would pay for.
    from inference_bundle.router.store.state_folder import state_folder

    url = settings.store.url
    if url is None:
        db_file = sqlite_path(settings, state_folder(settings, root))
        if not db_file.exists():
            # No router has run with these settings: nothing to read, and nothing created.
            click.echo(f"note: {display_path(db_file, root)} does not exist yet", err=True)
            return []
        where = f"{shown}: the store {display_path(db_file, root)}"
    else:
        where = f"{shown}: store.url ({_without_secrets(url)})"
    try:
        with _pool_errors() as why:
            db = open_database(settings, state_folder(settings, root))
    except StoreUnavailable as err:
        detail = why.reason or " ".join(err.detail.split())
        raise click.ClickException(
            f"{where}: the database does not answer ({detail}); is it running, and is "
            "store.url right?"
        ) from None
    except SchemaTooNew as err:
        raise click.ClickException(
            f"{where}: {err}; use the `bundle` of the router that wrote it"
        ) from None
    except sqlite3.Error as err:
        raise click.ClickException(f"{where}: cannot be read: {err}") from None
    try:
        with _pool_errors() as why:
            return Ledger(db).usage(since, until, by, user)
    except StoreUnavailable as err:
        detail = why.reason or " ".join(err.detail.split())
        raise click.ClickException(f"{where}: the database stopped answering ({detail})") from None
    except sqlite3.Error as err:
        raise click.ClickException(f"{where}: cannot be read: {err}") from None
    finally:
        db.close()


class _PoolErrors(logging.Handler):
    """What the PostgreSQL pool logged while it tried to connect, kept instead of printed.

    The pool only says "pool initialization incomplete"; why (refused, unknown host, a
    password) is in the warnings it logs, which would otherwise reach the terminal as a
    traceback-like block beside the error.
    """

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.reason: str | None = None

    def emit(self, record: logging.LogRecord) -> None:
        cause = record.args[-1] if isinstance(record.args, tuple) and record.args else None
        text = str(cause) if isinstance(cause, Exception) else record.getMessage()
        lines = text.strip().splitlines()
        self.reason = lines[0] if lines else None


@contextlib.contextmanager
def _pool_errors() -> Iterator[_PoolErrors]:
    handler = _PoolErrors()
    loggers = [logging.getLogger(name) for name in ("psycopg", "router.store")]
    saved = [(logger.propagate, logger.level) for logger in loggers]
    for logger in loggers:
        logger.addHandler(handler)
        logger.propagate = False
        logger.setLevel(logging.WARNING)
    try:
        yield handler
    finally:
        for logger, (propagate, level) in zip(loggers, saved, strict=True):
            logger.removeHandler(handler)
            logger.propagate = propagate
            logger.setLevel(level)


def _without_secrets(url: str) -> str:
    """The URL as shown in an error: any password left out."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username}@{host}" + (f":{parts.port}" if parts.port else "")
    return parts._replace(netloc=netloc).geturl()


def _table(rows: list[dict[str, Any]], by: Sequence[str], total: dict[str, int]) -> str:
    header = tuple(name.upper() for name in by) + COUNT_HEADERS
    cells = [
        tuple(str(row[name]) or "-" for name in by) + tuple(f"{row[n]:,}" for n in COUNTS)
        for row in rows
    ]
    last = ("TOTAL",) + ("",) * (len(by) - 1) + tuple(f"{total[n]:,}" for n in COUNTS)
    widths = [max(len(row[i]) for row in [header, *cells, last]) for i in range(len(header))]
    keys = len(by)

    def line(row: tuple[str, ...]) -> str:
        text = [
            cell.ljust(width) if i < keys else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        ]
        return "  ".join(text).rstrip()

    rule = "  ".join("-" * width for width in widths)
    return "\n".join([line(header), *map(line, cells), rule, line(last)])
