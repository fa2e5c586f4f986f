"""The model server frameworks the runtime starts: one module each, found by name.

A framework module knows its server's command line, the smallest real request that proves
the server ready, the OpenAI operations it answers, and how the data plane's agent gets into
its process. A new framework is a new module
here (built on ``base.Framework``) and one line in ``_load``.
"""

from __future__ import annotations

from .base import RERANK_PROBE, Framework, Operation, SpecFields


class UnknownFrameworkError(ValueError):
    """A framework name that no module here serves; the message lists the known ones."""


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


__all__ = [
    "RERANK_PROBE",
    "Framework",
    "Operation",
    "SpecFields",
    "UnknownFrameworkError",
    "all_operations",
    "framework",
    "names",
]
