"""`bundle keys`: add, list and revoke the router's API keys (auth mode keys).

A thin layer over the keys file functions of router.auth: they take the file's lock and
replace it atomically, so each command is safe while the router runs, and the router
sees the change on its next request.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from inference_bundle.config.problems import display_path
from inference_bundle.ops.router_config import DEFAULT_CONFIG, router_settings
from inference_bundle.router.auth import (
    ApiKeyEntry,
    AuthConfigError,
    UnknownKeyError,
    add_api_key,
    keys_file_path,
    list_api_keys,
    revoke_api_key,
)

config_option = click.option(
    "--config",
    "config",
    type=click.Path(dir_okay=False, path_type=Path),
    default=DEFAULT_CONFIG,
    show_default=True,
    help="Router settings whose auth.keys_file holds the keys (relative to --root).",
)


def _keys_file(root: Path, config: Path) -> Path:
    """The keys file that the router run with `config` reads, or a ClickException saying why not."""
    settings, shown = router_settings(root, config)
    if settings.auth.mode != "keys":
        raise click.ClickException(
            f"{shown}: auth.mode is {settings.auth.mode}: API keys are for mode keys. "
            "Its callers use Globus tokens; name admins in auth.admins."
        )
    try:
        return keys_file_path(settings.auth, root)
    except AuthConfigError as err:
        raise click.ClickException(f"{shown}: {err}") from None


def _describe(entry: ApiKeyEntry) -> str:
    groups = ", ".join(entry.groups) or "none"
    return f"{entry.key_id} of {entry.user} (groups: {groups}; admin: {_yes(entry.admin)})"


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


@click.group()
def keys() -> None:
    """Add, list and revoke the router's API keys (auth mode keys).

    Safe while the router runs: it sees each change on its next request.
    """


@keys.command()
@click.argument("user")
@click.option(
    "--group",
    "groups",
    multiple=True,
    help="A catalog group the key's user belongs to (repeat for several).",
)
@click.option("--admin", is_flag=True, help="The key's user gets the admin view of usage.")
@config_option
@click.pass_obj
def add(root: Path, user: str, groups: tuple[str, ...], admin: bool, config: Path) -> None:
    """Create an API key for USER and print it, once."""
    keys_file = _keys_file(root, config)
    try:
        new = add_api_key(keys_file, user, groups, admin=admin)
    except (AuthConfigError, ValueError) as err:
        raise click.ClickException(str(err)) from None
    click.echo(f"Created API key {_describe(new.entry)} in {display_path(keys_file, root)}:")
    click.echo(f"  {new.key}")
    click.echo(
        "The key is not stored (only its hash is) and cannot be shown again: copy it now. "
        f"Revoke it with `bundle keys revoke {new.entry.key_id}`."
    )


@keys.command(name="list")
@config_option
@click.option("--json", "as_json", is_flag=True, help="One JSON array, for scripts.")
@click.pass_obj
def list_keys(root: Path, config: Path, as_json: bool) -> None:
    """List the keys: never a key or its hash.

    Each key's id (what revoke takes), user, groups, admin flag and creation time.
    """
    keys_file = _keys_file(root, config)
    try:
        entries = list_api_keys(keys_file)
    except AuthConfigError as err:
        raise click.ClickException(str(err)) from None
    if as_json:
        click.echo(json.dumps([e.as_json() for e in entries], indent=2))
        return
    if not entries:
        click.echo(
            f"No API keys in {display_path(keys_file, root)}; add one with `bundle keys add USER`."
        )
        return
    rows = [
        (e.key_id, e.user, ",".join(e.groups) or "-", _yes(e.admin), e.created or "-")
        for e in entries
    ]
    header = ("ID", "USER", "GROUPS", "ADMIN", "CREATED")
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        click.echo(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )


@keys.command()
@click.argument("key_id")
@config_option
@click.pass_obj
def revoke(root: Path, key_id: str, config: Path) -> None:
    """Revoke the key KEY_ID at once.

    The router refuses it from its next request; `bundle keys list` shows the ids.
    """
    keys_file = _keys_file(root, config)
    try:
        entry = revoke_api_key(keys_file, key_id)
    except (AuthConfigError, UnknownKeyError) as err:
        raise click.ClickException(str(err)) from None
    click.echo(f"Revoked API key {_describe(entry)}; the router refuses it from its next request.")
