"""The model server frameworks the runtime starts: one module each, found by name.

A framework module knows its server's command line, the smallest real request that proves
the server ready, the OpenAI operations it answers, and how the data plane's agent gets into
its process. A new framework is a new module
here and one line in ``_FRAMEWORKS``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..spec import ServerSpec

Operation = tuple[str, str]  # (HTTP method, OpenAI path)
# Where a cross-encoder's readiness probe goes: both frameworks serve rerank here.
RERANK_PROBE = "/v1/rerank"


class UnknownFrameworkError(ValueError):
    """A framework name that no module here serves; the message lists the known ones."""


@dataclass(frozen=True, kw_only=True)
class Framework:
    """One model server framework: how to start it, probe it, and what it answers."""

    name: str  # as specs name it
    label: str  # as people write it, for messages
    tasks: tuple[str, ...]  # the spec tasks it serves
    serves: str  # what those tasks are, in words: "embeddings"
    operations: frozenset[Operation]
    # (spec, host, port) -> the server's argv, without the spec's own args
    server_argv: Callable[[ServerSpec, str, int], list[str]]
    # spec -> (path, body) of the request that proves the server ready
    probe_request: Callable[[ServerSpec], tuple[str, dict[str, Any]]]
    # the server's argv -> the same server with the data plane's agent inside its process
    # (node_runtime.dialout)
    with_agent: Callable[[list[str]], list[str]]


def _load() -> dict[str, Framework]:
    from . import infinity, vllm

    return {f.name: f for f in (vllm.FRAMEWORK, infinity.FRAMEWORK)}


_FRAMEWORKS = _load()


def names() -> tuple[str, ...]:
    """The known framework names, in the order messages list them."""
    return tuple(_FRAMEWORKS)


def framework(name: str) -> Framework:
    """The framework of this name; UnknownFrameworkError lists the known ones."""
    try:
        return _FRAMEWORKS[name]
    except KeyError:
        raise UnknownFrameworkError(
            f"unknown framework {name!r}: use one of {', '.join(_FRAMEWORKS)}"
        ) from None


def all_operations() -> frozenset[Operation]:
    """Every operation some framework answers."""
    return frozenset().union(*(f.operations for f in _FRAMEWORKS.values()))
