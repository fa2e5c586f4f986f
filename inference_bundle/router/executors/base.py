"""The interface every executor offers the router."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, Protocol


class FunctionFailed(RuntimeError):
    """The function raised on the endpoint, or the endpoint could not run it."""


class Executor(Protocol):
    """Runs registered functions on one endpoint."""

    def submit(self, function: Callable[..., Any], *args: Any) -> Future[Any]:
        """Run ``function(*args)`` on the endpoint; the future holds the return value."""
        ...

    def node_held(self) -> bool | None:
        """Whether a scheduler job (block) is running for the endpoint; None: unknown."""
        ...

    def shutdown(self) -> None: ...
