"""Refused dials, logged once a minute per source and reason, with what they claimed cut short.

A handshake's headers are the dialler's to choose: each is escaped and cut before it reaches
the log, and a source that keeps dialling gets one line a minute for each reason it is
refused (a short, fixed list), with a count, so a flood of bad dials neither fills the disk
nor slows the router.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

WINDOW_S = 60.0
_FIELD_CHARS = 64
_MAX_SOURCES = 4096


@dataclass
class _Source:
    since: float
    count: int = 0


class RefusalLog:
    """Counts refusals per source and reason; logs the first of each minute and how many
    followed."""

    def __init__(self, log: logging.Logger, clock: Callable[[], float] = time.monotonic) -> None:
        self._log = log
        self._clock = clock
        self._sources: dict[tuple[str, str], _Source] = {}

    def refused(self, peer: str, endpoint: str, server_id: str, host: str, why: str) -> None:
        """One refused dial from ``peer``."""
        now = self._clock()
        key = (peer, why)
        source = self._sources.get(key)
        if source is not None and now - source.since < WINDOW_S:
            source.count += 1
            return
        if len(self._sources) >= _MAX_SOURCES:
            self._forget(now)
        followed = ""
        if source is not None and source.count:
            followed = f" ({source.count} more refused in the minute before)"
        self._sources[key] = _Source(now)
        self._log.warning(
            "data plane: refused %s (%s, server %s) from %s: %s%s",
            cut(endpoint or "?"),
            cut(host),
            cut(server_id or "?"),
            cut(peer),
            why,
            followed,
        )

    def _forget(self, now: float) -> None:
        self._sources = {p: s for p, s in self._sources.items() if now - s.since < WINDOW_S}
        while len(self._sources) >= _MAX_SOURCES:
            self._sources.pop(next(iter(self._sources)))


def cut(value: str) -> str:
    """A header value as the log shows it: escaped (no line breaks or controls), cut short."""
    shown = value.encode("unicode_escape").decode("ascii")
    return shown if len(shown) <= _FIELD_CHARS else shown[:_FIELD_CHARS] + "..."
