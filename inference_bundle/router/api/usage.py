"""GET /v1/usage: tokens and requests per day, the caller's own (an admin's: anyone's).

Query: ``since`` and ``until`` (YYYY-MM-DD, UTC, both included; default the last 30 days),
``by`` (comma-separated: day, user, group, model, cluster; default day,model), and for
admins ``user`` (one user; default everyone). The answer also lists the caller's own limits
with what is used of them now.
"""

from __future__ import annotations

import time
from datetime import date, timedelta
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute

from inference_bundle.router.api.common import authenticate, bound_route
from inference_bundle.router.errors import APIError
from inference_bundle.router.limits.ledger import BY_CHOICES, day_of
from inference_bundle.router.service import RouterService

DEFAULT_DAYS = 30
# No record is older than the Unix epoch; the last day is the calendar's own.
FIRST_DAY = date(1970, 1, 1)
LAST_DAY = date.max


def routes(service: RouterService) -> list[BaseRoute]:
    return [
        bound_route("/v1/usage", usage, service, ["GET"]),
        bound_route("/resource_server/v1/usage", usage, service, ["GET"]),
    ]


async def usage(service: RouterService, request: Request) -> Response:
    caller = await authenticate(service.authenticator, request)
    query = request.query_params
    until = _day(query.get("until"), "until") or date.fromisoformat(day_of(time.time()))
    since = _day(query.get("since"), "since") or max(
        until - timedelta(days=DEFAULT_DAYS - 1), FIRST_DAY
    )
    if since > until:
        raise APIError(
            400,
            f"'since' ({since}) is after 'until' ({until}); name the first day, then the last.",
            param="since",
            code="invalid_value",
        )
    by = [name.strip() for name in query.get("by", "day,model").split(",") if name.strip()]
    unknown = [name for name in by if name not in BY_CHOICES]
    if unknown or len(set(by)) != len(by):
        raise APIError(
            400,
            f"'by' takes distinct names among {', '.join(BY_CHOICES)}, comma-separated; "
            f"got {query.get('by')!r}.",
            param="by",
            code="invalid_value",
        )
    user: str | None = caller.user
    asked_user = query.get("user")
    if caller.admin:
        user = asked_user or None
    elif asked_user not in (None, caller.user):
        raise APIError(
            403,
            "Only the service's admins may see another user's usage; leave out 'user' to "
            "see your own.",
            param="user",
            code="permission_denied",
        )
    limiter = service.limiter
    data = await limiter.call(limiter.ledger.usage, str(since), str(until), by, user)
    limits = await limiter.call(limiter.ledger.standing, _own_counters(service, caller))
    body: dict[str, Any] = {
        "object": "usage",
        "since": str(since),
        "until": str(until),
        "by": by,
        "user": user,
        "data": data,
        "limits": limits,
    }
    return JSONResponse(body)


def _own_counters(service: RouterService, caller: Any) -> list[Any]:
    """The caller's user and group counters on every cluster (limits on models are shared)."""
    rules = service.limiter.rules
    out = []
    for cluster in service.table.clusters:
        group = rules.group_of(cluster, caller.groups)
        out += [
            counter
            for counter in rules.counters(cluster, caller.user, group, "")
            if ":model:" not in counter.scope
        ]
    return out


def _day(value: str | None, name: str) -> date | None:
    """A query's day, or the 400 that names the parameter: not a day, or out of range."""
    if value is None:
        return None
    try:
        day = date.fromisoformat(value)
    except ValueError:
        day = None
    if day is None or not FIRST_DAY <= day <= LAST_DAY:
        shown = value if len(value) <= 32 else value[:32] + "..."
        raise APIError(
            400,
            f"'{name}' must be a day as YYYY-MM-DD from {FIRST_DAY} to {LAST_DAY}, not {shown!r}.",
            param=name,
            code="invalid_value",
        )
    return day
