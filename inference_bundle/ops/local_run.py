"""The run files of a deploy from this machine, under .state/deploy/<cluster>/.

pid, log, the effective router settings and a fingerprint of what was deployed, so that a
second deploy with the same input changes nothing and `make stop` finds everything again.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from inference_bundle.config.problems import ConfigError
from inference_bundle.config.settings import load_settings
from inference_bundle.router.store.private_files import FileAccess, open_private, tighten_folder

Say = Callable[[str], None]


class DeployError(RuntimeError):
    """A deploy step that cannot go on; the message says what to do."""


@dataclass(frozen=True)
class LocalDeployment:
    """Where one cluster's local deployment keeps its run files."""

    root: Path
    cluster: str

    @property
    def folder(self) -> Path:
        return self.root / ".state" / "deploy" / self.cluster

    @property
    def pid_file(self) -> Path:
        return self.folder / "router.pid"

    @property
    def log_file(self) -> Path:
        return self.folder / "router.log"

    @property
    def settings_file(self) -> Path:
        return self.folder / "router.yaml"

    @property
    def fingerprint_file(self) -> Path:
        return self.folder / "fingerprint"

    @property
    def key_file(self) -> Path:
        """The API key this deployment created, readable by its owner only."""
        return self.root / ".state" / "router" / f"{self.cluster}-api-key"

    def make_private(self, access: FileAccess) -> None:
        """The run folder (made if missing) and its files (the log with the access log, the
        settings) readable by this account only, or by the settings' file_group too."""
        tighten_folder(self.folder, access)

    def open_log(self, access: FileAccess) -> BinaryIO:
        """The router's log, appended to, with ``access`` whether new or found looser."""
        fd = open_private(self.log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, access)
        return os.fdopen(fd, "ab")

    def router_state_dir(self) -> Path:
        """The router's own state folder (engines' run dirs), from the deployed settings."""
        try:
            folder = Path(load_settings(self.settings_file, self.root).state_dir)
        except ConfigError:
            folder = Path(".state") / "router"
        return folder if folder.is_absolute() else self.root / folder

    def router_pid(self) -> int | None:
        """The router's pid if it runs, else None."""
        try:
            pid = int(self.pid_file.read_text())
            os.kill(pid, 0)
        except (OSError, ValueError):
            return None
        return pid

    def shown(self, path: Path) -> str:
        """A path as the operator reads it: relative to the checkout when under it."""
        try:
            return str(path.relative_to(self.root))
        except ValueError:
            return str(path)


def read_or_empty(path: Path) -> str:
    """A small run file's text, stripped; empty when it cannot be read."""
    try:
        return path.read_text().strip()
    except OSError:
        return ""
