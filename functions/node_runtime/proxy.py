"""Answer one OpenAI-style request on this node: ensure the server, forward, wrap the reply."""

from __future__ import annotations

import http.client
import socket
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from . import backend, tracing
from .dialout.agent import write_dial
from .dialout.node_key import read_node_key
from .frameworks import all_operations
from .server import ServerHandle, use_server
from .spec import ServerSpec
from .version import __version__

# Any framework's operation is forwarded; a server that lacks it answers with its own error.
ROUTES = all_operations()


class RequestError(ValueError):
    """A request the runtime will not forward; the message says what is allowed."""


def check_request(request: Mapping[str, Any]) -> tuple[str, str, dict[str, Any] | None]:
    """Validate {"method", "path", "body"[, "expires_at", "send", "dial", "trace"]}; return
    the first three (a malformed "trace" is ignored: tracing never fails a request)."""
    if not isinstance(request, Mapping):
        raise RequestError(f"request: expected a dict, got {type(request).__name__}")
    method = str(request.get("method", "POST")).upper()
    path = request.get("path")
    body = request.get("body")
    if (method, path) not in ROUTES:
        allowed = ", ".join(f"{m} {p}" for m, p in sorted(ROUTES))
        raise RequestError(f"request {method} {path!r} is not served here; allowed: {allowed}")
    if method == "POST" and not isinstance(body, dict):
        raise RequestError(f"request {method} {path}: 'body' must be a JSON object")
    if method == "GET" and body is not None:
        raise RequestError(f"request {method} {path}: 'body' must be null")
    expires_at = request.get("expires_at")
    if expires_at is not None and (
        isinstance(expires_at, bool) or not isinstance(expires_at, int | float)
    ):
        raise RequestError(f"request {method} {path}: 'expires_at' must be epoch seconds")
    if not isinstance(request.get("send", True), bool):
        raise RequestError(f"request {method} {path}: 'send' must be true or false")
    dial = request.get("dial")
    if dial is not None and not (
        isinstance(dial, Mapping)
        and all(isinstance(dial.get(key), str) for key in ("url", "token", "endpoint"))
        and isinstance(dial.get("ca_file"), str | None)
    ):
        raise RequestError(
            f"request {method} {path}: 'dial' must be {{url, token, endpoint, ca_file}} strings"
        )
    return method, str(path), body


def expired(request: Mapping[str, Any]) -> bool:
    """Whether the caller stopped waiting for this request (its ``expires_at`` has passed).

    The router gives up on a request after its wait and answers 503, but a task already
    queued for a node cannot be withdrawn. When it runs, it still starts the model (what the
    503 promised), but nobody reads the answer, so the request itself is not sent.
    """
    expires_at = request.get("expires_at")
    return expires_at is not None and time.time() > float(expires_at)


def handle(spec: ServerSpec | Mapping[str, Any], request: Mapping[str, Any]) -> dict[str, Any]:
    """Ensure the model's server on this node and forward one request; return the envelope.

    With ``"trace"`` (the router's span: ``node_runtime.tracing``) the task is a span of the
    router's trace, and its traceparent goes on to the server with the request; its spans
    are sent before the envelope is returned. The rest is ``_handle``'s.
    """
    asked = tracing.trace_of(request) if isinstance(request, Mapping) else None
    span = tracing.begin("node.task", asked)
    if span is None:
        return _handle(spec, request, None)
    status, failure = None, None
    try:
        envelope = _handle(spec, request, span.headers)
        status = envelope["status"]
        span.set(server=envelope["server"], start_wait_s=envelope["timings"]["start_wait_s"])
        return envelope
    except BaseException as err:
        failure = repr(err)
        raise
    finally:
        span.end(status, failure)
        tracing.flush()


def _handle(
    spec: ServerSpec | Mapping[str, Any],
    request: Mapping[str, Any],
    trace_headers: Mapping[str, str] | None,
) -> dict[str, Any]:
    """Ensure the model's server on this node and forward one request; return the envelope.

    The envelope is {"runtime_version", "status", "body", "timings": {"start_wait_s",
    "latency_s"}, "server": "started" | "reused", "node": {"host", "server_id"}} ("node"
    when a server is up). With ``"dial"`` the server's agent is told (again) where to dial
    the router and with which credential (``node_runtime.dialout``). With ``"send": false``
    the server is only ensured: status 200, body null, ``"sent": false``. A request that
    expired while it waited for the server is not sent: status 504 with ``"expired": true``.
    A backend error keeps its status and OpenAI error body. If the server is found gone at
    connect time it is started again and the request sent once more.
    """
    if not isinstance(spec, ServerSpec):
        spec = ServerSpec.from_dict(spec)
    method, path, body = check_request(request)
    if body is not None and body.get("stream"):
        return _envelope(
            400,
            _error(
                "streaming is not available through the node runtime; "
                "send the request with stream false",
                "invalid_request_error",
            ),
            0.0,
            0.0,
            False,
        )
    start_wait = 0.0
    started = False
    for attempt in (1, 2):
        with use_server(spec) as server:
            start_wait += server.start_wait_s
            started = started or server.started
            began = time.monotonic()
            dial = request.get("dial")
            if dial is not None:
                write_dial(Path(server.folder), dict(dial))
            if not request.get("send", True):
                envelope = _envelope(200, None, start_wait, 0.0, started)
                envelope["sent"] = False
                envelope["node"] = _node(server)
                return envelope
            if expired(request):
                envelope = _envelope(
                    504,
                    _error(
                        f"model {spec.name!r} is ready, but the request was no longer awaited "
                        "when it was; it was not sent",
                        "timeout",
                    ),
                    start_wait,
                    0.0,
                    started,
                )
                envelope["expired"] = True
                envelope["node"] = _node(server)
                return envelope
            try:
                status, answer = backend.call(
                    server.port, method, path, body, spec.request_timeout_s, trace_headers
                )
            except ConnectionRefusedError:
                if attempt == 2:
                    raise
                continue  # the server died since the check: the next use_server restarts it
            except TimeoutError:
                backend.drop_connection(server.port)
                error = _error(
                    f"model {spec.name!r} did not answer within its request timeout of "
                    f"{spec.request_timeout_s:g} s; the request was cancelled.",
                    "server_error",
                    code="timeout",
                )
                status, answer = 504, error  # as a connection's request past the bound
            except (OSError, http.client.HTTPException) as exc:
                backend.drop_connection(server.port)
                message = f"model {spec.name!r}: no answer from the server ({exc!r})"
                status, answer = 502, _error(message, "server_error")
            # The server is up whatever it answered: its node (and key) go back with it.
            envelope = _envelope(status, answer, start_wait, time.monotonic() - began, started)
            envelope["node"] = _node(server)
            return envelope
    raise AssertionError("unreachable")


def _node(server: ServerHandle) -> dict[str, Any]:
    node = {"host": socket.gethostname(), "server_id": server.server_id}
    key = read_node_key(Path(server.folder), server.server_id)
    if key is not None:
        node["key"] = key  # the digest the server's agent proves at each dial
    return node


def _envelope(
    status: int, body: Any, start_wait: float, latency: float, started: bool
) -> dict[str, Any]:
    return {
        "runtime_version": __version__,
        "status": status,
        "body": body,
        "timings": {"start_wait_s": round(start_wait, 6), "latency_s": round(latency, 6)},
        "server": "started" if started else "reused",
    }


def _error(message: str, kind: str, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}
