"""The model operations' way in: a POST to a known operation goes straight to its handler.

Every other request (and a POST to anything that is not an operation) goes through Starlette's
middleware and routes as before. A model request skips them: matching it against every route
in turn and wrapping it in two exception middlewares cost more than its authentication. What
they did for it is done here: the path's parameters, the handler's response, and OpenAI's
error shape for an ``APIError``, an ``HTTPException`` or anything unexpected.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from inference_bundle.config.operations import by_user_path
from inference_bundle.router.errors import APIError

Handler = Callable[[Request], Awaitable[Response]]
ErrorHandler = Callable[[Request, Exception], Awaitable[Response]]

_BASE = "/v1/"
_CLUSTER_BASE = "/resource_server/"


def operation_params(path: str) -> dict[str, str] | None:
    """The path parameters of a model operation's URL, as the routes in ``api.openai`` name
    them; None when the path is not an operation's."""
    if path.startswith(_BASE):
        params = {"operation": path[len(_BASE) :]}
    elif path.startswith(_CLUSTER_BASE):
        parts = path[len(_CLUSTER_BASE) :].split("/", 3)
        if len(parts) != 4 or parts[2] != "v1" or not parts[0] or not parts[1]:
            return None
        params = {"cluster": parts[0], "framework": parts[1], "operation": parts[3]}
    else:
        return None
    return params if by_user_path(params["operation"]) is not None else None


class OperationsFirst:
    """An ASGI app: model operations to ``handler``, everything else to ``app``."""

    def __init__(
        self,
        app: ASGIApp,
        handler: Handler,
        on_api_error: ErrorHandler,
        on_http_error: ErrorHandler,
        on_unexpected: ErrorHandler,
    ) -> None:
        self.app = app
        self.handler = handler
        self.on_api_error = on_api_error
        self.on_http_error = on_http_error
        self.on_unexpected = on_unexpected

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        params = None
        if scope["type"] == "http" and scope["method"] == "POST":
            params = operation_params(scope["path"])
        if params is None:
            await self.app(scope, receive, send)
            return
        scope["path_params"] = params
        request = Request(scope, receive, send)
        try:
            response = await self.handler(request)
        except APIError as err:
            response = await self.on_api_error(request, err)
        except HTTPException as err:
            response = await self.on_http_error(request, err)
        except Exception as err:  # logged by the handler, answered as a 500
            response = await self.on_unexpected(request, err)
        await response(scope, receive, send)
