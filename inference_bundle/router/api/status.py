"""The status page (GET /status) and the JSON it reads beyond the rest of the API (/v1/status).

The page is one static HTML file (``router/static/status.html``: plain JS and CSS, no build
step, no external assets) served without auth: it holds no data. In the browser it asks for
an API key once and polls ``/v1/status``, ``/resource_server/list-endpoints`` (each
model's job and estimated start) and, for admins, ``/v1/usage``. ``/v1/status`` adds what no
other route serves: each model's state with its last use and waiting time, requests and
tokens in the last hour (and this router's requests, errors and median latency minute by
minute, which the page draws as charts), the caller's batches in flight, each cluster's
maintenance notice, and for admins the last errors, each with the request id that its
access-log line and its answer's ``X-Request-Id`` carry.
"""

from __future__ import annotations

import base64
import hashlib
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache
from importlib import resources
from typing import Any

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import BaseRoute

from inference_bundle.router.api.batches import batch_object
from inference_bundle.router.api.common import authenticate, bound_route
from inference_bundle.router.auth import Caller, may_use
from inference_bundle.router.fleet.states import ModelState
from inference_bundle.router.routes import Route
from inference_bundle.router.service import RouterService

RECENT_S = 3600  # "the last hour" of requests and tokens per model
ERRORS_SINCE_S = 24 * 3600  # the last errors are looked for this far back (a bounded scan)
ERRORS_SHOWN = 20
# Every open page polls; the ledger's answers (everyone's, the same for all) are reused this
# long, so viewers add no database work (on SQLite it would run on the event loop).
SHARED_FOR_S = 3.0
_WAITING = (ModelState.QUEUED, ModelState.STARTING)


@dataclass
class StatusSource:
    """The service, and the ledger's last answers for the status JSON with when they came."""

    service: RouterService
    _answers: dict[str, tuple[float, list[dict[str, Any]]]] = field(default_factory=dict)

    async def shared(
        self, name: str, query: Callable[..., list[dict[str, Any]]], *args: Any
    ) -> list[dict[str, Any]]:
        """``query(*args)`` on the ledger, or its answer from under SHARED_FOR_S ago."""
        kept = self._answers.get(name)
        if kept is not None and time.monotonic() - kept[0] < SHARED_FOR_S:
            return kept[1]
        answer = await self.service.limiter.call(query, *args)
        self._answers[name] = (time.monotonic(), answer)
        return answer


def routes(service: RouterService) -> list[BaseRoute]:
    """The page and its JSON; before the catch-all operation routes, which take /v1/*."""
    source = StatusSource(service)
    return [
        bound_route("/status", status_page, service, ["GET"]),
        bound_route("/v1/status", status, source, ["GET"]),
        bound_route("/resource_server/v1/status", status, source, ["GET"]),
    ]


async def status_page(service: RouterService, request: Request) -> Response:
    """The page itself: static, the same for everyone, no data in it."""
    page = _page()
    return HTMLResponse(page.html, headers=page.headers)


async def status(source: StatusSource, request: Request) -> Response:
    """What the caller may use on each cluster, right now; admins also see the last errors."""
    service = source.service
    caller = await authenticate(service.authenticator, request)
    now = time.time()
    ledger = service.limiter.ledger
    recent = await source.shared("recent", ledger.recent_by_model, now - RECENT_S)
    last_hour = {(row["cluster"], row["model"]): row for row in recent}
    clusters: dict[str, Any] = {}
    for cluster in service.table.clusters:
        models = [
            _model(service, caller, route, last_hour.get((cluster, route.model)))
            for route in service.table.routes(cluster)
            if route.entry.endpoint.enabled and _allowed(service, caller, route)
        ]
        if models:
            clusters[cluster] = {
                "maintenance": maintenance_notice(service, cluster),
                "models": models,
            }
    batches = service.batches

    def in_flight() -> list[dict[str, Any]]:
        unfinished = batches.store.batches(caller.user, unfinished=True)
        return [batch_object(batches.runner.refresh(batch)) for batch in unfinished]

    body: dict[str, Any] = {
        "object": "status",
        "generated_at": _iso(now),
        "caller": {"user": caller.user, "admin": caller.admin},
        "recent_window_s": RECENT_S,
        "clusters": clusters,
        "batches_in_flight": await batches.off_loop(in_flight),
    }
    if caller.admin:
        errors = await source.shared(
            "errors", ledger.recent_errors, now - ERRORS_SINCE_S, ERRORS_SHOWN
        )
        body["last_errors"] = [{**error, "at": _iso(error["at"])} for error in errors]
    return JSONResponse(body)


def maintenance_notice(service: RouterService, cluster: str) -> dict[str, Any] | None:
    """The cluster's current or next maintenance window (``router.fleet.maintenance``); None when
    its profile plans none."""
    maintenance = service.dispatcher.maintenance
    return None if maintenance is None else maintenance.notice(cluster)


def _model(
    service: RouterService, caller: Caller, route: Route, recent: dict[str, Any] | None
) -> dict[str, Any]:
    status = service.tracker.status(route.endpoint_name)

    def named(user: str) -> bool:  # an admin sees every user's share, others their own
        return caller.admin or user == caller.user

    return {
        "id": route.model,
        "endpoint": route.endpoint_name,
        "framework": route.framework,
        "kind": route.entry.endpoint.kind,
        "state": status.state.value,
        # When the wait for a job or a server began (queued, starting); None otherwise.
        "waiting_since": _iso(status.since) if status.state in _WAITING else None,
        "last_used": _iso(status.last_used),
        "in_flight": status.in_flight,
        "last_error": status.last_error,
        "last_hour": {name: recent[name] if recent else 0 for name in _RECENT_FIELDS},
        "last_hour_by_minute": _by_minute(service, route),
        # Requests waiting for a place on its servers, places, 429s, users' shares.
        "queue": service.dispatcher.admission.describe(route.endpoint_name, named),
    }


def _by_minute(service: RouterService, route: Route) -> dict[str, Any]:
    """This router's minutes of the model's last hour (``router.minute_series``), for the
    page's charts; ``start`` is the first minute's, in ISO 8601."""
    series = service.minute_series.series(route.cluster, route.model)
    return {**series, "start": _iso(series["start"])}


# What the last hour says of each model (Ledger.recent_by_model, everyone's requests).
_RECENT_FIELDS = ("requests", "errors", "prompt_tokens", "completion_tokens", "total_tokens")


def _allowed(service: RouterService, caller: Caller, route: Route) -> bool:
    return may_use(caller, service.settings.auth, route.cluster, route.entry.endpoint.groups)


def _iso(moment: float | None) -> str | None:
    return None if moment is None else datetime.fromtimestamp(moment, UTC).isoformat()


class _Page:
    """The page's HTML and headers: a CSP that lets only its own inline script and style
    run (by their hashes) and lets it talk to this router only."""

    def __init__(self, html: str) -> None:
        self.html = html
        script = _hashes(html, "script")
        style = _hashes(html, "style")
        self.headers = {
            "Content-Security-Policy": (
                f"default-src 'none'; script-src {script}; style-src {style}; "
                "connect-src 'self'; img-src 'self' data:; base-uri 'none'; "
                "form-action 'none'; frame-ancestors 'none'"
            ),
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
            "Cache-Control": "no-cache",
        }


@cache
def _page() -> _Page:
    """Read once: the file ships inside the package (pyproject's package-data)."""
    html = resources.files("inference_bundle.router").joinpath("static/status.html").read_text()
    return _Page(html)


def _hashes(html: str, tag: str) -> str:
    """The CSP sources of each inline ``<tag>`` element's text: 'sha256-...'."""
    bodies = re.findall(rf"<{tag}>(.*?)</{tag}>", html, flags=re.DOTALL)
    if not bodies:
        return "'none'"
    return " ".join(
        f"'sha256-{base64.b64encode(hashlib.sha256(body.encode()).digest()).decode()}'"
        for body in bodies
    )
