"""New limits without a restart: the settings file is read again when it changes.

Only ``limits`` is taken from the new file; everything else needs a restart (the log says
so). A file that does not validate changes nothing: its problems, naming the file and the
field, go to the log, and the limits in force stay.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path

from starlette.concurrency import run_in_threadpool

from inference_bundle.config.problems import ConfigError
from inference_bundle.config.settings import LimitsSettings, load_settings
from inference_bundle.router.errors import APIError
from inference_bundle.router.limits.limiter import Limiter
from inference_bundle.router.routes import RouteTable

log = logging.getLogger("router.limits")
CHECK_EVERY_S = 1.0


class LimitsWatcher:
    """Rereads the router's settings file when it changes; applies its limits if they hold."""

    def __init__(self, path: Path | None, table: RouteTable, limiter: Limiter) -> None:
        self.table = table
        self.limiter = limiter
        self.path = path
        self._stamp = _stamp(self.path) if self.path else None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self.path is not None:
            self._task = asyncio.get_running_loop().create_task(self._watch())

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def _watch(self) -> None:
        assert self.path is not None
        while True:
            await asyncio.sleep(CHECK_EVERY_S)
            stamp = _stamp(self.path)
            if stamp is None or stamp == self._stamp:
                continue
            self._stamp = stamp
            with contextlib.suppress(Exception):
                await run_in_threadpool(self.reload)

    def reload(self) -> bool:
        """Apply the file's limits if it validates; whether they were applied."""
        assert self.path is not None
        try:
            settings = load_settings(self.path, self.path.parent)
            check_limits(settings.limits, self.table, self.path)
        except ConfigError as err:
            for problem in err.problems:
                log.error("limits not reloaded: %s", problem)
            return False
        except LimitsConfigError as err:
            log.error("limits not reloaded: %s", err)
            return False
        if settings.limits == self.limiter.rules.settings:
            return False
        self.limiter.update(settings.limits)
        log.info("limits reloaded from %s", self.path)
        return True


def _stamp(path: Path) -> tuple[int, int, int] | None:
    try:
        info = path.stat()
    except OSError:
        return None
    return (info.st_mtime_ns, info.st_size, info.st_ino)


def check_limits(limits: LimitsSettings, table: RouteTable, config_path: Path | None) -> None:
    """Limits name clusters and models this router serves, or they would never apply."""
    shown = str(config_path) if config_path else "router settings"
    problems = []
    for cluster, cluster_limits in limits.clusters.items():
        if cluster not in table.clusters:
            problems.append(
                f"{shown}: limits.clusters.{cluster}: this router serves no cluster "
                f"{cluster!r} (clusters: {', '.join(table.clusters)})"
            )
            continue
        for model in cluster_limits.models:
            try:
                table.lookup(model, cluster)
            except APIError as err:
                problems.append(f"{shown}: limits.clusters.{cluster}.models.{model}: {err}")
    if problems:
        raise LimitsConfigError("; ".join(problems))


class LimitsConfigError(Exception):
    """Limits that name what this router does not serve; the message names file and field."""
