"""HTTP to a model server on 127.0.0.1: one keep-alive connection per thread and port."""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections.abc import Mapping
from typing import Any

from .launch import HOST

# A kept connection older than this is not reused: uvicorn closes idle ones after 5 s.
_REUSE_WITHIN_S = 2.0
_local = threading.local()


def _connections() -> dict[int, tuple[http.client.HTTPConnection, float]]:
    conns: dict[int, tuple[http.client.HTTPConnection, float]] | None = getattr(
        _local, "conns", None
    )
    if conns is None:
        conns = {}
        _local.conns = conns
    return conns


def call(
    port: int,
    method: str,
    path: str,
    body: Any,
    timeout_s: float,
    extra_headers: Mapping[str, str] | None = None,
) -> tuple[int, Any]:
    """Send one request; return (status, JSON body). Network errors propagate.

    A JSON-less answer becomes an OpenAI-style error body carrying its text. timeout_s bounds
    the connect and each read; a reused connection that the server closed is retried once on
    a fresh one (the request never reached the server). ``extra_headers``: a trace's.
    """
    payload = None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"} if payload is not None else {}
    if extra_headers:
        headers.update(extra_headers)
    conns = _connections()
    kept = conns.pop(port, None)
    if kept is not None and time.monotonic() - kept[1] < _REUSE_WITHIN_S:
        kept[0].timeout = timeout_s
        if kept[0].sock is not None:  # the socket keeps the timeout of its first request
            kept[0].sock.settimeout(timeout_s)
        try:
            return _exchange(conns, port, kept[0], method, path, payload, headers)
        except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
            kept[0].close()
    elif kept is not None:
        kept[0].close()
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout_s)
    try:
        return _exchange(conns, port, conn, method, path, payload, headers)
    except BaseException:
        conn.close()
        raise


def _exchange(
    conns: dict[int, tuple[http.client.HTTPConnection, float]],
    port: int,
    conn: http.client.HTTPConnection,
    method: str,
    path: str,
    payload: bytes | None,
    headers: dict[str, str],
) -> tuple[int, Any]:
    conn.request(method, path, body=payload, headers=headers)
    response = conn.getresponse()
    raw = response.read()
    if response.will_close:
        conn.close()
    else:
        conns[port] = (conn, time.monotonic())
    return response.status, decode_answer(response.status, raw)


def decode_answer(status: int, raw: bytes) -> Any:
    """A server's answer as JSON; one that is not JSON becomes an OpenAI error body."""
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        text = raw.decode("utf-8", "replace")[:2000]
        return {"error": {"message": text, "type": "BackendError", "code": status}}


def drop_connection(port: int) -> None:
    """Forget this thread's kept connection to port (its server was stopped)."""
    kept = _connections().pop(port, None)
    if kept is not None:
        kept[0].close()
