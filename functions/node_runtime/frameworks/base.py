"""What every framework module is made of: the ``Framework`` record and what they share.

It imports nothing of the runtime: a framework reads a server spec through ``SpecFields``,
so that ``node_runtime.spec`` (which checks a spec against the frameworks) and the
framework modules do not import each other.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

Operation = tuple[str, str]  # (HTTP method, OpenAI path)
# Where a cross-encoder's readiness probe goes: both frameworks serve rerank here.
RERANK_PROBE = "/v1/rerank"


class SpecFields(Protocol):
    """What a framework reads of a server spec (``node_runtime.spec.ServerSpec``)."""

    @property
    def name(self) -> str: ...
    @property
    def task(self) -> str: ...
    @property
    def weights(self) -> str: ...
    @property
    def python(self) -> str: ...


@dataclass(frozen=True, kw_only=True)
class Framework:
    """One model server framework: how to start it, probe it, and what it answers."""

    name: str  # as specs name it
    label: str  # as people write it, for messages
    tasks: tuple[str, ...]  # the spec tasks it serves
    serves: str  # what those tasks are, in words: "embeddings"
    operations: frozenset[Operation]
    # (spec, host, port) -> the server's argv, without the spec's own args
    server_argv: Callable[[SpecFields, str, int], list[str]]
    # spec -> (path, body) of the request that proves the server ready
    probe_request: Callable[[SpecFields], tuple[str, dict[str, Any]]]
    # the server's argv -> the same server with the data plane's agent inside its process
    # (node_runtime.dialout)
    with_agent: Callable[[list[str]], list[str]]
