"""What the dispatcher hands back: a whole answer, or one still coming down a connection.

Kept apart from ``router.dispatch`` so that the HTTP layer (``router.api``) can shape
answers without reading how requests travel.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from inference_bundle.router.dataplane.connections import Relay, server_label


@dataclass(frozen=True)
class Answer:
    """A whole answer."""

    status: int
    body: Any
    start_wait_s: float  # time the node runtime spent starting the server
    waited_s: float  # time this request waited in the router
    cold_start: bool
    via: str = "task"  # or "connection": down the server's own connection
    raw: bytes | None = None  # the body as the server wrote it (connection path; body None)
    server: str | None = None  # the label of the server that answered (which replica)
    queue_wait_s: float = 0.0  # time it waited for a place on the model's servers

    def decoded(self) -> Answer:
        """This answer with its body as data (a raw body decoded)."""
        if self.raw is None:
            return self
        return replace(self, body=decode_body(self.raw), raw=None)


def decode_body(raw: bytes) -> Any:
    """A server's JSON body; text that is no JSON as a message."""
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return {"message": raw.decode("utf-8", "replace")}


@dataclass
class Streamed:
    """An answer that is still coming, chunk by chunk, down a server's connection."""

    relay: Relay
    status: int
    content_type: str
    waited_s: float
    cold_start: bool
    finish: Callable[[bool], None]  # call once: whether the answer arrived whole
    via: str = "connection"
    start_wait_s: float = 0.0
    queue_wait_s: float = 0.0  # time it waited for a place on the model's servers

    @property
    def server(self) -> str:
        """The label of the server whose connection it comes down (which replica)."""
        return server_label(self.relay.connection.server_id)
