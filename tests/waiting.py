"""Waiting in tests: poll for the awaited condition with a deadline, never a fixed sleep.

``wait_until`` for plain tests and threads, ``until`` (its twin) on an event loop. Both return
the first truthy value of ``check()`` and fail with ``what`` once ``timeout_s`` has passed
without one. ``what`` may be a callable: it is asked only on failure, so that the message can
show the last state seen.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, overload

T = TypeVar("T")

# What was awaited, as the failure names it; a callable is asked only when the wait fails.
What = str | Callable[[], str]


def _failure(what: What, timeout_s: float) -> AssertionError:
    said = what() if callable(what) else what
    return AssertionError(f"{said} did not happen within {timeout_s} s")


def wait_until(
    check: Callable[[], T | None], what: What, timeout_s: float = 10, every_s: float = 0.02
) -> T:
    """The first truthy value of ``check()``, asked every ``every_s`` seconds; an
    AssertionError naming ``what`` if none came within ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise _failure(what, timeout_s)
        time.sleep(every_s)


@overload
async def until(
    check: Callable[[], Awaitable[T | None]],
    what: What,
    timeout_s: float = ...,
    every_s: float = ...,
) -> T: ...


@overload
async def until(
    check: Callable[[], T | None], what: What, timeout_s: float = ..., every_s: float = ...
) -> T: ...


async def until(
    check: Callable[[], Any], what: What, timeout_s: float = 10, every_s: float = 0.02
) -> Any:
    """``wait_until`` on an event loop: the loop runs on between looks. ``check`` may be a
    coroutine function (each look is awaited)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() >= deadline:
            raise _failure(what, timeout_s)
        await asyncio.sleep(every_s)
