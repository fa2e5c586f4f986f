"""The errors a dispatched request ends in: too slow, its server gone, its model still starting
or full.

Each is an OpenAI-shaped ``APIError`` whose sentence says what happened and what to do; the
503 of a model still starting carries Retry-After and the scheduler's estimate
(``router.fleet.estimates``).
"""

from __future__ import annotations

from inference_bundle.router.dataplane.connections import NodeGone
from inference_bundle.router.errors import APIError
from inference_bundle.router.executors.base import FunctionFailed
from inference_bundle.router.fleet.estimates import Eta, retry_after_s
from inference_bundle.router.fleet.states import ModelState, ModelStatus
from inference_bundle.router.node_envelope import EnvelopeError
from inference_bundle.router.routes import Route

# What a user is told to wait before trying again, by the state the model was left in, when
# neither the scheduler's plan nor an earlier start gives an estimate.
RETRY_AFTER_S = {ModelState.QUEUED: 60, ModelState.STARTING: 15}


def request_timeout_s(route: Route) -> float:
    """The spec's bound on one request at its server, as the node runtime applies it."""
    return route.spec.request_timeout_s


def too_slow(route: Route) -> APIError:
    """The 504 for a server that did not answer within the spec's request timeout."""
    return APIError(
        504,
        f"The model '{route.model}' did not answer within its request timeout of "
        f"{request_timeout_s(route):g} s; the request was cancelled.",
        type="server_error",
        code="timeout",
    )


def answer_too_large(route: Route, limit: int) -> APIError:
    """The 502 for a whole answer past the router's bound (that request alone fails)."""
    return APIError(
        502,
        f"The answer of '{route.model}' is larger than this router's bound of {limit} bytes "
        "(data_plane.max_answer_bytes); the request was cancelled. Ask for less, or stream it.",
        type="server_error",
        code="answer_too_large",
    )


def not_connected(route: Route) -> APIError:
    """The 503 for a body only a server's connection carries (a form), with none up yet."""
    retry = RETRY_AFTER_S[ModelState.STARTING]
    return APIError(
        503,
        f"The model '{route.model}' takes this operation's form only over its server's "
        f"connection, and none is up on {route.cluster} yet; retry in about {retry} s.",
        type="server_error",
        code="model_not_ready",
        headers={"Retry-After": str(retry)},
    )


def server_gone(model: str, gone: NodeGone) -> APIError:
    """The 502 for an answer that broke off at its server (a stream's last event)."""
    return APIError(
        502,
        f"The model '{model}' stopped answering: {gone}. The next request restarts it.",
        type="server_error",
        code="server_gone",
    )


def still_starting(route: Route, status: ModelStatus, waited: float, eta: Eta) -> APIError:
    """The 503 for a request that waited its limit while its model queued or started."""
    state = status.state.value
    retry = retry_after_s(eta, RETRY_AFTER_S.get(status.state, 30))
    told = eta.sentence()
    return APIError(
        503,
        f"The model '{route.model}' is {state} on {route.cluster} and did not answer within "
        f"{waited:.0f} s; it keeps starting{f': {told}' if told else ''}. "
        f"Retry in about {retry} s.",
        type="server_error",
        code="model_not_ready",
        headers={"Retry-After": str(retry)},
        extra={
            "state": state,
            "waited_s": round(waited, 1),
            "retry_after_s": retry,
            **eta.fields(),
        },
    )


def task_failed(route: Route, err: Exception) -> APIError:
    """The 502 of a task that brought no envelope this router can read."""
    if isinstance(err, EnvelopeError):
        return APIError(
            502,
            f"The endpoint for '{route.model}' answered in a shape this router cannot "
            f"read ({err}); deploy matching versions of the router and node runtime.",
            type="server_error",
            code="function_failed",
        )
    if isinstance(err, FunctionFailed):
        return APIError(
            502,
            f"The endpoint for '{route.model}' failed to run the request: {err}",
            type="server_error",
            code="function_failed",
        )
    return APIError(
        502,
        f"The request for '{route.model}' was lost on its way: {err}",
        type="server_error",
        code="executor_failed",
    )


def model_saturated(model: str, bound: str, value: int, ahead: int, retry: int) -> APIError:
    """The 429 of a full queue (router.dispatch.admission), naming the bound that refused."""
    whose = "wait for it" if bound == "queue.max_waiting" else "of yours wait for it"
    return APIError(
        429,
        f"'{model}' is saturated: {ahead} requests {whose}, and {bound} is {value}. "
        f"Retry after {retry} s.",
        type="requests",
        code="model_saturated",
        headers={"Retry-After": str(retry)},
        extra={"limit": bound},
    )


def queue_timeout(model: str, waited: float, bound: float, retry: int) -> APIError:
    """The 503 of a request that waited past queue.max_queue_wait_s for a place."""
    return APIError(
        503,
        f"'{model}' stayed full: this request waited {waited:.0f} s for a place, "
        f"and queue.max_queue_wait_s is {bound:g}. Retry after {retry} s.",
        type="server_error",
        code="queue_timeout",
        headers={"Retry-After": str(retry)},
    )
