"""The router settings an operator command reads (`--config`, relative to the root)."""

from __future__ import annotations

from pathlib import Path

import click

from inference_bundle.config.problems import ConfigError, display_path
from inference_bundle.config.settings import RouterSettings, load_settings

DEFAULT_CONFIG = Path("config/router/local.yaml")


def router_settings(root: Path, config: Path) -> tuple[RouterSettings, str]:
    """The settings, and their file as messages name it; a ClickException naming each
    problem when they do not validate."""
    path = config if config.is_absolute() else root / config
    try:
        return load_settings(path, root), display_path(path, root)
    except ConfigError as err:
        raise click.ClickException(str(err)) from None
