"""``/node/v1/connect``: where model servers dial in, with their credential."""

from __future__ import annotations

import json
import logging

from node_runtime import wire
from starlette.routing import BaseRoute, WebSocketRoute
from starlette.websockets import WebSocket

from inference_bundle.router.dataplane.connections import NodeConnection
from inference_bundle.router.dataplane.credentials import Refused
from inference_bundle.router.dataplane.plane import DataPlane

log = logging.getLogger("router.dataplane")


def routes(plane: DataPlane) -> list[BaseRoute]:
    """The nodes' WebSocket route."""

    async def connect(websocket: WebSocket) -> None:
        await serve_node(plane, websocket)

    return [WebSocketRoute(wire.CONNECT_PATH, connect)]


async def serve_node(plane: DataPlane, websocket: WebSocket) -> None:
    """Admit a node's dial, then hand its records to their relays until it hangs up."""
    headers = websocket.headers
    scheme, _, token = headers.get("authorization", "").partition(" ")
    endpoint = headers.get(wire.ENDPOINT_HEADER, "")
    server_id = headers.get(wire.SERVER_HEADER, "")
    host = headers.get(wire.HOST_HEADER, "?")
    peer = websocket.client.host if websocket.client else "?"
    try:
        if scheme.lower() != "bearer" or not token or not endpoint or not server_id:
            raise Refused("a dial needs a bearer credential, an endpoint and a server id")
        if endpoint not in plane.endpoints:
            raise Refused(f"no endpoint {endpoint!r} here")
        plane.credentials.admit(token, endpoint, server_id)
    except Refused as refusal:
        log.warning(
            "data plane: refused %s (%s, server %s) from %s: %s",
            endpoint or "?",
            host,
            server_id or "?",
            peer,
            refusal,
        )
        # Before accept: the node sees HTTP 403 and waits for a new credential.
        await websocket.close(code=wire.REFUSED)
        return
    await websocket.accept()
    connection = NodeConnection(
        endpoint=endpoint,
        server_id=server_id,
        host=host,
        runtime=headers.get(wire.RUNTIME_HEADER, "?"),
        send=websocket.send_bytes,
    )
    plane.hub.add(connection)
    log.info("data plane: %s server %s on %s connected from %s", endpoint, server_id, host, peer)
    said_bye = False
    try:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                break
            record = message.get("bytes")
            if record is not None:
                connection.deliver(record)
            elif _is_bye(message.get("text")):
                said_bye = True
    finally:
        plane.hub.remove(connection)
        plane.credentials.dropped(token)
        if said_bye:
            plane.credentials.revoke_server(endpoint, server_id)
        log.info(
            "data plane: %s server %s on %s %s",
            endpoint,
            server_id,
            host,
            "stopped" if said_bye else "disconnected",
        )


def _is_bye(text: str | None) -> bool:
    try:
        return bool(text) and json.loads(text or "").get("type") == "bye"
    except (ValueError, AttributeError):
        return False
