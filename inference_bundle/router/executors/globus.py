"""The `globus` executor: Globus Compute's cloud service, through globus_compute_sdk.

One SDK ``Executor`` (one client) serves every endpoint of the router: the SDK batches the
tasks submitted close together into one API call per endpoint and paces its calls
(``api_burst_limit`` per ``api_burst_window_s``), which keeps the router inside the
service's limit of 20 submissions per 10 s per client however many endpoints it serves.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from inference_bundle.config.registry import Registry
from inference_bundle.router.errors import APIError
from inference_bundle.router.executors.base import FunctionFailed

# The service refuses a task payload or a result over 10 MB.
MAX_PAYLOAD_BYTES = 10 * 1024 * 1024
# The SDK's own caps: at most 8 calls in its burst window, a window of at most 32 s.
API_BURST_LIMIT = 8
API_BURST_WINDOW_S = 16


class SharedSubmitter:
    """The router's one SDK Executor; switches its endpoint per submission, thread-safely."""

    def __init__(self, sdk_executor: Any) -> None:
        self._sdk = sdk_executor
        self._lock = threading.Lock()

    def submit(
        self,
        endpoint_id: str,
        function_id: str,
        args: tuple[Any, ...],
        user_config: dict[str, Any] | None = None,
    ) -> Future[Any]:
        with self._lock:
            self._sdk.endpoint_id = endpoint_id
            # A distinct user endpoint config is a user endpoint of its own (its own engine,
            # provider and job): a replica's index makes one per replica.
            self._sdk.user_endpoint_config = user_config
            future: Future[Any] = self._sdk.submit_to_registered_function(function_id, args=args)
            return future

    def shutdown(self) -> None:
        self._sdk.shutdown(wait=False, cancel_futures=True)


def default_sdk_executor() -> Any:
    """The production SDK Executor; credentials come from the environment or a login."""
    from globus_compute_sdk import Executor

    return Executor(api_burst_limit=API_BURST_LIMIT, api_burst_window_s=API_BURST_WINDOW_S)


class GlobusExecutor:
    """Runs registered functions on one endpoint through the shared submitter."""

    def __init__(
        self, endpoint: str, registry: Registry, submitter: SharedSubmitter, replica: int = 0
    ) -> None:
        self.endpoint = endpoint
        self.user_config = {"replica": replica} if replica else None
        self.endpoint_id = registry.endpoint_id(endpoint)
        self.registry = registry
        self.submitter = submitter

    def submit(self, function: Callable[..., Any], *args: Any) -> Future[Any]:
        size = len(json.dumps(args, default=str).encode())
        if size > MAX_PAYLOAD_BYTES:
            raise APIError(
                413,
                f"The request is {size / 2**20:.1f} MB once packed; Globus Compute carries at "
                "most 10 MB a task. Send less per request or use the batch API.",
                code="request_too_large",
            )
        function_id = self.registry.function_id(function.__name__)
        answer: Future[Any] = Future()
        remote = self.submitter.submit(self.endpoint_id, function_id, args, self.user_config)
        remote.add_done_callback(lambda done: _relay(done, answer, self.endpoint))
        return answer

    def node_held(self) -> bool | None:
        return None  # the job listing says; the SDK does not

    def shutdown(self) -> None:
        """The shared submitter is shut down once, by the pool's owner."""


def _relay(done: Future[Any], answer: Future[Any], endpoint: str) -> None:
    error = done.exception()
    if error is None:
        answer.set_result(done.result())
    else:
        # TaskExecutionFailed carries the remote traceback; its last line is the error itself.
        remote = str(getattr(error, "remote_data", "") or error)
        lines = [line.strip() for line in remote.splitlines() if line.strip()]
        answer.set_exception(FunctionFailed(f"{endpoint}: {lines[-1] if lines else repr(error)}"))
