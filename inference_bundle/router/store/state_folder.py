"""The router's state folder: where it is, and one router at a time in it."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import IO

from inference_bundle.config.settings import RouterSettings
from inference_bundle.router.store.private_files import open_private, private_folder


class StateFolderInUse(Exception):
    """Another router holds the state folder: two would share its records and servers."""


def state_folder(settings: RouterSettings, root: Path) -> Path:
    """The router's state folder; a relative state_dir is taken from ``root``."""
    state_dir = Path(settings.state_dir)
    return state_dir if state_dir.is_absolute() else root / state_dir


def lock_state_folder(state_dir: Path) -> IO[str]:
    """Hold ``state_dir/router.lock`` for as long as the returned file stays open.

    A POSIX lock (fcntl.lockf) is the process's own: children that the engines fork do not
    inherit it, so it ends with the router, however the router ends.
    """
    private_folder(state_dir)
    lock = open_private(state_dir / "router.lock", os.O_RDWR | os.O_CREAT)
    handle = os.fdopen(lock, "r+")  # held for the process's life
    try:
        fcntl.lockf(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        handle.close()
        raise StateFolderInUse(
            f"{state_dir}: another router (pid {holder}) is using this state folder; stop "
            "it first, or give this router a state_dir of its own"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle
