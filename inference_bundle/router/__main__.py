"""`python -m router --config config/router/local.yaml`: serve the router with uvicorn."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click
import uvicorn
from node_runtime import wire

from inference_bundle.config.problems import ConfigError
from inference_bundle.config.settings import load_settings
from inference_bundle.router.app import create_app
from inference_bundle.router.auth import AuthConfigError
from inference_bundle.router.limits.reload import LimitsConfigError
from inference_bundle.router.service import build_service
from inference_bundle.router.store import SchemaTooNew, StoreUnavailable
from inference_bundle.router.store.state_folder import (
    StateFolderInUse,
    lock_state_folder,
    state_folder,
)

ROOT = Path(__file__).resolve().parents[2]


@click.command()
@click.option("--config", "config", type=click.Path(dir_okay=False, path_type=Path), required=True)
@click.option("--root", type=click.Path(file_okay=False, path_type=Path), default=ROOT)
def main(config: Path, root: Path) -> None:
    """Serve the guide's API for the clusters named in CONFIG."""
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        settings = load_settings(config, root)
        # Held until the process ends: a second router on this folder stops here.
        lock = lock_state_folder(state_folder(settings, root))
        service = build_service(settings, root, config_path=config.resolve())
    except ConfigError as err:
        for problem in err.problems:
            click.echo(str(problem), err=True)
        sys.exit(1)
    except (
        AuthConfigError,
        StateFolderInUse,
        LimitsConfigError,
        StoreUnavailable,
        SchemaTooNew,
    ) as err:
        click.echo(_startup_problem(config, err), err=True)
        sys.exit(1)
    listen = settings.listen
    uvicorn.run(
        create_app(service),
        host=listen.host,
        port=listen.port,
        log_level="warning",
        http="httptools",
        loop="uvloop",
        # The nodes' connections: compression costs about a fifth of the relay's CPU.
        ws="websockets-sansio",
        ws_per_message_deflate=False,
        # Bodies cross in bounded records (node_runtime.wire): no message is larger.
        ws_max_size=wire.MAX_MESSAGE,
        # Liveness is any record heard, with the node's heartbeats: a late pong on a busy
        # line must not cut every request on it.
        ws_ping_interval=None,
        ws_ping_timeout=None,
        ssl_certfile=_from_root(root, listen.tls_cert),
        ssl_keyfile=_from_root(root, listen.tls_key),
        timeout_graceful_shutdown=5,
    )
    lock.close()


def _startup_problem(config: Path, err: Exception) -> str:
    """Why the router cannot start, naming the settings file and, where one, the field."""
    if isinstance(err, StateFolderInUse):
        return f"{config}: state_dir: {err}"
    if isinstance(err, StoreUnavailable):
        return f"{config}: store.url: the database does not answer: {err.detail}"
    if isinstance(err, SchemaTooNew):
        return f"{config}: store: {err}"
    if isinstance(err, LimitsConfigError):
        return str(err)  # it names the file and the field already
    return f"{config}: {err}"


def _from_root(root: Path, path: str | None) -> str | None:
    return None if path is None else str(root / path)


main()
