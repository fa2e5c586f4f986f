"""When an endpoint is kept warm (``keep_warm`` in its catalog file): days and times of day.

Checked here, where the operator's YAML is read, so that a mistyped time is a problem
sentence naming the file and field; the router's schedules (``router.fleet.warm_schedules``) use the
validated windows.
"""

from __future__ import annotations

import re
from datetime import time
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
WEEKDAYS: tuple[Weekday, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_CLOCK_TIME = re.compile(r"^([01]?\d|2[0-3]):[0-5]\d$")


def _clock_time(value: object, end: bool) -> str:
    """A "HH:MM" time of day; "24:00" too where it ends a window (the end of the day)."""
    if isinstance(value, int) and not isinstance(value, bool):
        # YAML 1.1 reads an unquoted 18:00 as the base-60 number 1080.
        hours, minutes = divmod(value, 60)
        raise ValueError(
            f"is the number {value}: YAML reads an unquoted {hours}:{minutes:02d} as a "
            f'number; quote it, e.g. "{hours:02d}:{minutes:02d}"'
        )
    if not isinstance(value, str) or not (_CLOCK_TIME.match(value) or (end and value == "24:00")):
        last = "24:00" if end else "23:59"
        raise ValueError(f'must be a time of day "HH:MM" from "00:00" to "{last}" (got {value!r})')
    return value.zfill(5)  # "8:00" as "08:00"


class WarmWindow(BaseModel):
    """When an endpoint is kept warm: days of the week and a time of day, in the cluster's
    time zone (its profile's ``timezone``).

    A window whose ``to`` is earlier than its ``from`` runs past midnight into the next day;
    ``days`` are the days it opens.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    days: list[Weekday] = Field(default_factory=lambda: list(WEEKDAYS), min_length=1)
    from_: str = Field(alias="from", description='time of day it opens, "08:00"')
    to: str = Field(description='time of day it closes, "18:00"; "24:00" is midnight')

    @field_validator("from_", mode="before")
    @classmethod
    def _opens(cls, value: object) -> str:
        return _clock_time(value, end=False)

    @field_validator("to", mode="before")
    @classmethod
    def _closes(cls, value: object, info: ValidationInfo) -> str:
        closes = _clock_time(value, end=True)
        opens = info.data.get("from_")  # absent when from itself is wrong
        if closes == opens:
            raise ValueError(
                f'is the same as from ({opens}); for the whole day write from: "00:00", to: "24:00"'
            )
        return closes

    @property
    def opening(self) -> time:
        return time.fromisoformat(self.from_)

    @property
    def closing(self) -> time:
        """The time of day it closes ("24:00" is midnight, then on the next day)."""
        return time(0, 0) if self.to == "24:00" else time.fromisoformat(self.to)

    @property
    def closes_next_day(self) -> bool:
        """Whether it closes on the day after it opens (past midnight, or at "24:00")."""
        return self.closing <= self.opening
