"""Send one request to a model's endpoint and wait for it, honestly, within a bound."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from node_runtime.entrypoints import serve

from inference_bundle.router.direct import DirectPath
from inference_bundle.router.errors import APIError
from inference_bundle.router.executors.base import FunctionFailed
from inference_bundle.router.executors.pool import ExecutorPool
from inference_bundle.router.joblisting import JobListing
from inference_bundle.router.routes import Route
from inference_bundle.router.states import ModelState, ModelStatus, StateTracker

OnWait = Callable[[ModelStatus, float], Awaitable[None]]
# What a user is told to wait before trying again, by the state the model was left in.
RETRY_AFTER_S = {ModelState.QUEUED: 60, ModelState.STARTING: 15}
# A task reaches its node after a little travel: its caller's wait ends this much later there.
EXPIRY_MARGIN_S = 5.0


@dataclass(frozen=True)
class Answer:
    status: int
    body: Any
    start_wait_s: float  # time the node runtime spent starting the server
    waited_s: float  # time this request waited in the router
    cold_start: bool
    via: str = "endpoint"  # or "direct": straight to the model server on this host


class Dispatcher:
    """Submits the registered entry point for a route and awaits its answer.

    A request waits at most ``wait_s``; past that it gets a 503 with the model's state and
    Retry-After, while its task goes on starting the model for the next request. A task
    handed to an engine or to Globus Compute cannot be withdrawn, so each carries
    ``expires_at``: when it reaches a node after its caller gave up, the node runtime starts
    the model but does not send the request (no generation nobody reads). With a
    ``direct`` path, requests for a model whose server runs on this host skip the endpoint
    (see inference_bundle.router.direct).
    """

    def __init__(
        self,
        pool: ExecutorPool,
        tracker: StateTracker,
        wait_s: float,
        runtime_version: str,
        poll_s: float = 1.0,
        job_listing: JobListing | None = None,
        direct: DirectPath | None = None,
    ) -> None:
        self.job_listing = job_listing
        self.direct = direct
        self.pool = pool
        self.tracker = tracker
        self.wait_s = wait_s
        self.runtime_version = runtime_version
        self.poll_s = poll_s

    async def send(self, route: Route, request: dict[str, Any], on_wait: OnWait | None) -> Answer:
        key = route.endpoint_name
        began = time.monotonic()
        if self.direct is not None and self.direct.take(route):
            answer = await self._send_direct(self.direct, route, request, began)
            if answer is not None:
                return answer
        try:
            executor = await asyncio.to_thread(self.pool.get, route)
        except Exception as err:
            raise APIError(
                502,
                f"The endpoint for '{route.model}' could not be started: {err}",
                type="server_error",
                code="executor_failed",
            ) from None
        cold = self.tracker.begin(key)
        expiring = {**request, "expires_at": time.time() + self.wait_s + EXPIRY_MARGIN_S}
        future = executor.submit(serve, self.runtime_version, route.spec, expiring)
        future.add_done_callback(lambda done: self._finished(route, done))
        waiting = asyncio.wrap_future(future)
        while True:
            done, _ = await asyncio.wait({waiting}, timeout=self.poll_s)
            if done:
                break
            waited = time.monotonic() - began
            # A round trip to the engine's interchange: off the event loop.
            held = await asyncio.to_thread(executor.node_held)
            if held is None:
                held = await self._job_running(route)
            status = self.tracker.waiting(key, held)
            if waited >= self.wait_s:
                waiting.add_done_callback(_retrieve)
                raise _still_starting(route, status, waited)
            if on_wait is not None:
                await on_wait(status, waited)
        try:
            envelope = waiting.result()
        except FunctionFailed as err:
            raise APIError(
                502,
                f"The endpoint for '{route.model}' failed to run the request: {err}",
                type="server_error",
                code="function_failed",
            ) from None
        except Exception as err:
            raise APIError(
                502,
                f"The request for '{route.model}' was lost on its way: {err}",
                type="server_error",
                code="executor_failed",
            ) from None
        timings = envelope.get("timings", {})
        return Answer(
            status=int(envelope["status"]),
            body=envelope["body"],
            start_wait_s=float(timings.get("start_wait_s", 0.0)),
            waited_s=time.monotonic() - began,
            cold_start=cold,
        )

    async def _send_direct(
        self, direct: DirectPath, route: Route, request: dict[str, Any], began: float
    ) -> Answer | None:
        key = route.endpoint_name
        self.tracker.begin_direct(key)
        sent = None
        try:
            sent = await direct.send(route, request)
        finally:
            self.tracker.finish(key, answered=sent is not None)
        if sent is None:
            return None
        return Answer(
            sent[0], sent[1], 0.0, time.monotonic() - began, cold_start=False, via="direct"
        )

    async def _job_running(self, route: Route) -> bool:
        """Whether the scheduler runs the endpoint's job, when the executor cannot say."""
        if self.job_listing is None:
            return False
        try:
            listing = await self.job_listing.jobs(route.cluster)
        except APIError:
            return False  # unknown: keep saying queued rather than fail the request
        return any(
            job.get("endpoint") == route.endpoint_name and job.get("scheduler_state") == "running"
            for job in listing.get("jobs", [])
        )

    def _finished(self, route: Route, done: Future[Any]) -> None:
        error = done.exception()
        self.tracker.finish(
            route.endpoint_name, answered=error is None, error=None if error is None else str(error)
        )
        if self.direct is not None:
            self.direct.learn(route, done.result() if error is None else None)


def _retrieve(done: asyncio.Future[Any]) -> None:
    """Consume the outcome of a task nobody waits for any more (no 'never retrieved')."""
    if not done.cancelled():
        done.exception()


def _still_starting(route: Route, status: ModelStatus, waited: float) -> APIError:
    state = status.state.value
    retry = RETRY_AFTER_S.get(status.state, 30)
    return APIError(
        503,
        f"The model '{route.model}' is {state} on {route.cluster} and did not answer within "
        f"{waited:.0f} s; it keeps starting: retry in about {retry} s.",
        type="server_error",
        code="model_not_ready",
        headers={"Retry-After": str(retry)},
        extra={"state": state, "waited_s": round(waited, 1)},
    )
