"""An operation's body as the router checks it: its record's model, then its other checks.

What each operation must carry is its record's (``config.operations``); anything else its
API defines passes through to the backend.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from inference_bundle.config.operation_bodies import RequestBody
from inference_bundle.config.operations import Operation
from inference_bundle.router.errors import APIError


def validate(operation: Operation, body: Any) -> RequestBody:
    """Check a parsed JSON body for an operation; 400 naming the first bad field.

    Media the body names are ``api.media_checks``'s to check (a host lookup is awaited)."""
    if not isinstance(body, dict):
        raise APIError(400, "The request body must be a JSON object.")
    try:
        parsed = operation.check.model_validate(body)
    except ValidationError as err:
        first = err.errors()[0]
        param = ".".join(str(p) for p in first["loc"]) or None
        if first["type"] == "missing":
            message = f"'{param}' is a required property."
        else:
            message = f"Invalid value for '{param}': {first['msg']}."
        raise APIError(400, message, param=param, code="invalid_value") from None
    problem = operation.also(body) if operation.also is not None else None
    if problem is not None:
        param, message = problem
        raise APIError(400, message, param=param, code="invalid_value")
    return parsed
