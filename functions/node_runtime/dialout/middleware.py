"""DialOut: an ASGI middleware that starts the agent with the application and stops it after."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from .agent import Agent

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

FOLDER_ENV = "NODE_RUNTIME_SERVER_FOLDER"
SERVER_ID_ENV = "NODE_RUNTIME_SERVER_ID"

log = logging.getLogger("node_runtime.dialout")


class DialOut:
    """Pass everything to ``app``; run the agent between the app's start-up and shutdown.

    The agent only runs when the node runtime started this server (it sets the server's
    folder and id in the environment); otherwise this middleware does nothing.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._task: asyncio.Task[None] | None = None
        self._agent: Agent | None = None
        folder = os.environ.get(FOLDER_ENV)
        server_id = os.environ.get(SERVER_ID_ENV)
        if folder and server_id:
            self._agent = Agent(self.app, folder, server_id)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan" or self._agent is None:
            await self.app(scope, receive, send)
            return
        agent = self._agent

        async def started(message: Message) -> None:
            await send(message)
            if message["type"] == "lifespan.startup.complete" and self._task is None:
                # What the server's framework put in the scope for every request (Starlette:
                # "app"; uvicorn: the lifespan "state"), as it arrives with the lifespan.
                agent.inherit(scope)
                self._task = asyncio.create_task(agent.run())

        async def stopping() -> Message:
            message = await receive()
            if message["type"] == "lifespan.shutdown" and self._task is not None:
                await agent.stop()
                self._task.cancel()
            return message

        await self.app(scope, stopping, started)
