"""What the dispatcher uses of the data plane: credentials to send, connections to use."""

from __future__ import annotations

import time
from typing import Any

from inference_bundle.config.settings import DataPlaneSettings
from inference_bundle.router.dataplane.connection_hub import ConnectionHub
from inference_bundle.router.dataplane.connections import NodeConnection
from inference_bundle.router.dataplane.node_credentials import Credentials
from inference_bundle.router.dataplane.node_keys import NodeKeys
from inference_bundle.router.node_envelope import Envelope
from inference_bundle.router.routes import Route


class DataPlane:
    """The router's side of the nodes' connections, for the endpoints it serves."""

    def __init__(self, settings: DataPlaneSettings, dial_url: str, endpoints: set[str]) -> None:
        self.settings = settings
        self.dial_url = dial_url
        self.endpoints = endpoints
        self.hub = ConnectionHub()
        self.credentials = Credentials(settings.credential_ttl_s, settings.redial_grace_s)
        self.keys = NodeKeys()
        self._last_task: dict[str, float] = {}

    def dial(self, route: Route) -> dict[str, Any]:
        """The ``dial`` a task carries: where its server dials, as what, and a credential."""
        self._last_task[route.endpoint_name] = time.monotonic()
        return {
            "url": self.dial_url,
            "token": self.credentials.mint(route.endpoint_name),
            "endpoint": route.endpoint_name,
            "ca_file": self.settings.ca_file,
        }

    def vouch(self, route: Route, envelope: Envelope) -> None:
        """A task's envelope names its server and that server's key: dials that prove it."""
        self.keys.vouch(route.endpoint_name, envelope.node)

    def pick(
        self, route: Route, avoid: frozenset[str] = frozenset(), session: str | None = None
    ) -> NodeConnection | None:
        """A live connection of the route's endpoint, not of a server in ``avoid``
        (draining or stopping): the session's own server, or the less busy of two."""
        return self.hub.pick(route.endpoint_name, avoid, session)

    async def wait_for(self, route: Route) -> NodeConnection | None:
        """A connection of the route's endpoint, waiting up to connect_wait_s for one."""
        return await self.hub.wait_for(route.endpoint_name, self.settings.connect_wait_s)

    def refreshed(self, route: Route) -> None:
        """A keep-alive task went out for the route's endpoint (it carries no credential)."""
        self._last_task[route.endpoint_name] = time.monotonic()

    def refresh_due(self, route: Route) -> bool:
        """Whether the endpoint saw no task for refresh_s (its engine would let the job go)."""
        last = self._last_task.get(route.endpoint_name)
        return last is None or time.monotonic() - last >= self.settings.refresh_s

    def servers(self, endpoint: str) -> list[dict[str, Any]]:
        """The connected servers of an endpoint, for the listings."""
        return self.hub.servers(endpoint)
