"""The direct path: warm requests straight to a model server that runs on the router's host.

Through the engine a request makes four hops (interchange, manager, worker, runtime) before
it reaches the model server; on the embedded local cluster, and wherever the router shares
the node with its workers, that costs more than the model's own answer. So once a request
through the endpoint has answered, its envelope tells where the server listens (host, port,
server id, folder); while the server stays the same, later requests for that model go to
127.0.0.1:<port> directly, each inside ``node_runtime.lease_running``, which holds the same
in-flight marker and last-use stamp as the runtime's own requests, so idle teardown works
unchanged.

The endpoint stays in charge of the server's life:
- starts and restarts only happen through the endpoint: a server that is gone, replaced, or
  being started or stopped refuses the lease, and the request goes through the endpoint;
- at least one request each ``refresh_s`` still goes through the endpoint, so that the
  engine sees tasks and does not give the scheduler job back while the model is in use;
- a server on another host (Globus Compute endpoints, remote Slurm nodes) is never reached
  directly.
"""

from __future__ import annotations

import json
import socket
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
from node_runtime import lease_running
from node_runtime.backend import decode_answer

from inference_bundle.router.errors import APIError
from inference_bundle.router.routes import Route


@dataclass
class _Server:
    port: int
    server_id: str
    folder: str
    learned_at: float  # monotonic time of the last answer through the endpoint
    refreshing: bool = False  # a request through the endpoint is under way


class DirectPath:
    """Known local servers by endpoint; sends a request to one when it may."""

    def __init__(self, refresh_s: float, timeout_s: float, host: str | None = None) -> None:
        self.refresh_s = refresh_s
        self.timeout_s = timeout_s
        self.host = host or socket.gethostname()
        self._servers: dict[str, _Server] = {}
        self._session: aiohttp.ClientSession | None = None

    def learn(self, route: Route, envelope: dict[str, Any] | None) -> None:
        """Note where the endpoint's answer came from (None: the request failed)."""
        key = route.endpoint_name
        node = envelope.get("node") if envelope is not None else None
        if not isinstance(node, dict) or node.get("host") != self.host:
            known = self._servers.get(key)
            if known is not None:
                known.refreshing = False
            return
        self._servers[key] = _Server(
            port=int(node["port"]),
            server_id=str(node["server_id"]),
            folder=str(node["folder"]),
            learned_at=time.monotonic(),
        )

    def take(self, route: Route) -> bool:
        """Whether this request may go direct; False also picks it to refresh through the
        endpoint when the last answer from there is older than refresh_s."""
        known = self._servers.get(route.endpoint_name)
        if known is None:
            return False
        if time.monotonic() - known.learned_at < self.refresh_s or known.refreshing:
            return True
        known.refreshing = True
        return False

    async def send(self, route: Route, request: dict[str, Any]) -> tuple[int, Any] | None:
        """(status, body) from the server, or None: go through the endpoint instead."""
        key = route.endpoint_name
        known = self._servers.get(key)
        if known is None:
            return None
        with lease_running(known.folder, known.server_id) as port:
            if port is None:
                self._servers.pop(key, None)
                return None
            method = str(request.get("method", "POST"))
            body = request.get("body")
            try:
                async with self._client().request(
                    method,
                    f"http://127.0.0.1:{port}{request['path']}",
                    data=None if body is None else json.dumps(body),
                    headers={"Content-Type": "application/json"} if body is not None else None,
                ) as response:
                    raw = await response.read()
                    return response.status, decode_answer(response.status, raw)
            except aiohttp.ClientConnectorError:
                self._servers.pop(key, None)  # stopped since the lease: not sent at all
                return None
            except (TimeoutError, aiohttp.ClientError) as err:
                message = f"model {route.model!r}: no answer from its server ({err!r})"
                return 502, APIError(502, message, type="server_error").body()

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=4.0),
                timeout=aiohttp.ClientTimeout(total=self.timeout_s),
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
