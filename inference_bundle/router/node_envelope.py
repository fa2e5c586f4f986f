"""The node runtime's answer to a task (its envelope), as the router reads it.

The node writes it (``node_runtime.proxy``; the package docstring describes it) and the
router parses it here, once, where a task's future resolves: the dispatcher and the data
plane read typed fields. The field names are the node's own, so that
tests/router/dispatch/test_node_envelope.py can check the two sides field by field.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, cast

SERVER_STATES = ("started", "reused")


class EnvelopeError(ValueError):
    """An envelope the router cannot read; the message names the field."""


@dataclass(frozen=True)
class Timings:
    """Where the task's time went on its node."""

    start_wait_s: float  # waiting for the server's lock and start
    latency_s: float  # the request at the server


@dataclass(frozen=True)
class NodeReport:
    """The server that answered: where it runs and the key its agent proves at each dial."""

    host: str
    server_id: str
    key: str | None = None  # the digest of the agent's secret (node_runtime.dialout.node_key)


@dataclass(frozen=True)
class Envelope:
    """One task's result: the server's answer and what the node says of its server."""

    runtime_version: str
    status: int
    body: Any
    timings: Timings
    server: Literal["started", "reused"]
    node: NodeReport | None = None  # present once a server is up
    sent: bool = True  # false: the task only ensured the server ("send": false)
    expired: bool = False  # true: the caller had stopped waiting, so nothing was sent

    @classmethod
    def parse(cls, raw: object) -> Envelope:
        """Read a task's result; raise ``EnvelopeError`` naming what is wrong.

        Fields the node adds later are ignored here (the runtime's version is checked on
        every call); the parity test makes each one a decision.
        """
        data = _mapping(raw, "envelope")
        timings = _mapping(data.get("timings"), "envelope field 'timings'")
        node = data.get("node")
        server = data.get("server")
        if server not in SERVER_STATES:
            raise EnvelopeError(f"envelope field 'server' is {server!r}, not started or reused")
        status = data.get("status")
        if type(status) is not int:
            raise EnvelopeError(f"envelope field 'status' is {status!r}, not an integer")
        return cls(
            runtime_version=_text(data, "runtime_version"),
            status=status,
            body=data.get("body"),
            timings=Timings(
                start_wait_s=_seconds(timings, "timings.start_wait_s"),
                latency_s=_seconds(timings, "timings.latency_s"),
            ),
            server=cast(Literal["started", "reused"], server),
            node=None if node is None else _node(_mapping(node, "envelope field 'node'")),
            sent=_flag(data, "sent", default=True),
            expired=_flag(data, "expired", default=False),
        )


def _node(data: Mapping[str, Any]) -> NodeReport:
    key = data.get("key")
    if key is not None and not isinstance(key, str):
        raise EnvelopeError(f"envelope field 'node.key' is {key!r}, not a string")
    return NodeReport(
        host=_text(data, "host", "node."), server_id=_text(data, "server_id", "node."), key=key
    )


def _mapping(value: object, what: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise EnvelopeError(f"{what} is {type(value).__name__}, not a mapping")
    return value


def _text(data: Mapping[str, Any], name: str, prefix: str = "") -> str:
    value = data.get(name)
    if not isinstance(value, str):
        raise EnvelopeError(f"envelope field '{prefix}{name}' is {value!r}, not a string")
    return value


def _seconds(data: Mapping[str, Any], shown: str) -> float:
    value = data.get(shown.rpartition(".")[2])
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise EnvelopeError(f"envelope field '{shown}' is {value!r}, not a number of seconds")
    return float(value)


def _flag(data: Mapping[str, Any], name: str, default: bool) -> bool:
    """A flag the node writes only when it differs from ``default``."""
    value = data.get(name, default)
    if not isinstance(value, bool):
        raise EnvelopeError(f"envelope field '{name}' is {value!r}, not true or false")
    return value
