"""One model request as the router carries it, from authentication to its access-log line."""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from inference_bundle.config.operations import Operation
from inference_bundle.router.auth.callers import Caller
from inference_bundle.router.dispatch.admission import Asker
from inference_bundle.router.limits.limiter import Ticket
from inference_bundle.router.routes import Route
from inference_bundle.router.tracing import RequestTrace


@dataclass
class RequestContext:
    """What is known of one request; placement may move it to another route."""

    operation: Operation
    caller: Caller
    asked: str  # the model as the user named it (an alias is answered under it)
    route: Route  # the route in use
    group: str = ""  # the caller's group that limits charge on this cluster ("" for none)
    stream: bool = False
    include_usage: bool = False  # the client asked for a stream's usage chunk
    ticket: Ticket | None = None  # what limits reserved (or refused: cost None)
    logged_body: dict[str, Any] | None = None  # with log_prompts only
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex[:16])
    began: float = field(default_factory=time.monotonic)
    headers: dict[str, str] = field(default_factory=dict)  # on every answer
    # The conversation its requests belong to (X-Session-ID, else the body's "user"), kept
    # on one replica; None: any replica.
    session: str | None = None
    trace: RequestTrace | None = None  # when traced (router.tracing): its spans' parent

    @property
    def path(self) -> str:
        return self.operation.path

    @property
    def model(self) -> str:
        """The served name of the route in use."""
        return self.route.model

    def asker(self) -> Asker:
        """Who the request is for, as the model's queue weighs it."""
        cost = None if self.ticket is None else self.ticket.cost
        return Asker(
            self.caller.user,
            tuple(sorted(self.caller.groups)),
            self.session,
            self.request_id,
            0 if cost is None else cost.prompt,
        )

    def log_fields(self) -> dict[str, Any]:
        """What the access log says of the request (never a credential; the body only with
        log_prompts)."""
        fields: dict[str, Any] = {
            "request_id": self.request_id,
            "user": self.caller.user,
            "model": self.route.model,
            "cluster": self.route.cluster,
            "operation": self.path,
            "stream": self.stream,
            "group": self.group,
        }
        if self.logged_body is not None:
            fields["body"] = self.logged_body
        return fields


# A conversation's requests carry this header (or the body's OpenAI "user" field) to stay on
# one replica (router.dataplane.connection_hub).
SESSION_HEADER = "X-Session-ID"


def session_of(headers: Mapping[str, str], user: str, body: dict[str, Any]) -> str | None:
    """The request's session key: the caller's own (two users' ids never meet), or None."""
    given = headers.get(SESSION_HEADER) or body.get("user")
    if not isinstance(given, str) or not given:
        return None
    return f"{user}\0{given}"
