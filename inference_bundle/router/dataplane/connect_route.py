"""``/node/v1/connect``: where model servers dial in, with their credential and their key.

A dial is admitted when its credential is good for its endpoint and server
(``credentials``) and its proof is the key a task of this router reported for that server
(``node_keys``). A credential holds one connection: a second dial with it is refused, unless
it proves the server's key, in which case it is the same server dialling again before this
router noticed the first line drop, and the stale line is let go. Refusals are logged once a
minute per source (``refusal_log``).
"""

from __future__ import annotations

import asyncio
import json
import logging

from node_runtime import wire
from starlette.routing import BaseRoute, WebSocketRoute
from starlette.websockets import WebSocket

from inference_bundle.router.dataplane.connections import NodeConnection
from inference_bundle.router.dataplane.node_credentials import InUse, Refused, digest
from inference_bundle.router.dataplane.plane import DataPlane
from inference_bundle.router.dataplane.refusal_log import RefusalLog

log = logging.getLogger("router.dataplane")


def routes(plane: DataPlane) -> list[BaseRoute]:
    """The nodes' WebSocket route."""
    refusals = RefusalLog(log)

    async def connect(websocket: WebSocket) -> None:
        await serve_node(plane, websocket, refusals)

    return [WebSocketRoute(wire.CONNECT_PATH, connect)]


async def serve_node(plane: DataPlane, websocket: WebSocket, refusals: RefusalLog) -> None:
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
            raise Refused("no such endpoint here")
        await _admit(plane, token, endpoint, server_id, headers.get(wire.PROOF_HEADER, ""))
    except Refused as refusal:
        refusals.refused(peer, endpoint, server_id, host, str(refusal))
        # Before accept: the node sees HTTP 403 and waits for a new credential.
        await websocket.close(code=wire.REFUSED)
        return
    await websocket.accept(headers=_TAKES)
    connection = NodeConnection(
        endpoint=endpoint,
        server_id=server_id,
        host=host,
        runtime=headers.get(wire.RUNTIME_HEADER, "?"),
        send=websocket.send_bytes,
        window=plane.settings.stream_window_bytes,
        credential=digest(token),
        hang_up=websocket.close,
    )
    plane.hub.add(connection)
    log.info("data plane: %s server %s on %s connected from %s", endpoint, server_id, host, peer)
    said_bye = False
    loop = asyncio.get_running_loop()
    try:
        # One deadline, moved on by each message heard (``wait_for`` would make a task for
        # every message of every request).
        async with asyncio.timeout(None) as silence:
            while True:
                silence.reschedule(loop.time() + wire.SILENCE_S)
                message = await websocket.receive()
                if message["type"] == "websocket.disconnect":
                    break
                record = message.get("bytes")
                if record is not None:
                    await _deliver(connection, record)
                elif _is_bye(message.get("text")):
                    said_bye = True
    except TimeoutError:
        log.warning(
            "data plane: nothing heard from %s server %s for %.0f s; hanging up",
            endpoint,
            server_id,
            wire.SILENCE_S,
        )
    finally:
        plane.hub.remove(connection)
        if not connection.superseded:
            plane.credentials.dropped(token)
        if said_bye:
            plane.credentials.revoke_server(endpoint, server_id)
            plane.keys.forget(endpoint, server_id)
        log.info(
            "data plane: %s server %s on %s %s",
            endpoint,
            server_id,
            host,
            "stopped" if said_bye else "disconnected",
        )


# The handshake's answer names the records of runtime 0.10 this router takes.
_TAKES = [(wire.RECORDS_HEADER.lower().encode(), wire.ROUTER_RECORDS.encode())]


async def _admit(plane: DataPlane, token: str, endpoint: str, server_id: str, proof: str) -> None:
    """Refused unless the credential and the server's key both hold; a proven redial lets
    the line it replaces go."""
    plane.credentials.check(token, endpoint, server_id)  # no wait for a stranger's dial
    if not await plane.keys.proves(endpoint, server_id, proof):
        raise Refused("the dial does not prove the key its server's task reported")
    try:
        plane.credentials.admit(token, endpoint, server_id)
    except InUse:
        stale = plane.hub.holding(digest(token))
        if stale is None:
            raise
        log.warning(
            "data plane: %s server %s dialled again; its previous line is let go",
            endpoint,
            server_id,
        )
        stale.superseded = True
        plane.hub.remove(stale)
        plane.credentials.dropped(token)
        await stale.let_go()
        plane.credentials.admit(token, endpoint, server_id)


async def _deliver(connection: NodeConnection, record: bytes) -> None:
    """A record from the node: a heartbeat is echoed, the rest go to their relays."""
    try:
        if record == wire.HEARTBEAT_RECORD:
            await connection.send(wire.HEARTBEAT_RECORD)
        else:
            connection.deliver(record)
    except wire.WireError as err:
        log.warning("data plane: %s sent a record that was dropped: %s", connection.endpoint, err)


def _is_bye(text: str | None) -> bool:
    try:
        return bool(text) and json.loads(text or "").get("type") == "bye"
    except (ValueError, AttributeError):
        return False
