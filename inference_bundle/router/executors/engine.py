"""The `engine` executor: a GlobusComputeEngine in-process, from a rendered endpoint dir."""

from __future__ import annotations

import os
import shutil
import sys
import uuid
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from globus_compute_common import messagepack
from globus_compute_common.messagepack.message_types import Result, Task
from globus_compute_endpoint.engines.base import GCFuture
from globus_compute_sdk.serialize import ComputeSerializer, PureSourceTextInspect

from inference_bundle.rendering.verify import load_endpoint_dir
from inference_bundle.router.executors.base import FunctionFailed

# Stable endpoint ids: the same endpoint directory keeps its id across restarts.
_NAMESPACE = uuid.UUID("6f0c7a52-2a43-4a8e-9d0b-7d0b3f3e6e11")


class EngineExecutor:
    """Submits functions, serialized as they are registered, to one endpoint's engine.

    The engine, its provider (Local, PBS Pro or Slurm) and its idle time are the rendered
    endpoint's own, loaded through globus-compute-endpoint's loader; the engine asks the
    scheduler for a block on the first task and gives it back after ``max_idletime``.
    """

    def __init__(
        self, endpoint_dir: Path, run_dir: Path, user_opts: dict[str, Any] | None = None
    ) -> None:
        if shutil.which("globus-compute-endpoint") is None:
            # The engine starts its interchange and workers through PATH (python-exec).
            os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
        self.name = endpoint_dir.name
        replica = (user_opts or {}).get("replica", 0)
        if replica:
            self.name = f"{self.name}#{replica}"
        self.serializer = ComputeSerializer(strategy_code=PureSourceTextInspect())
        self._functions: dict[Callable[..., Any], str] = {}
        # As a multi-user endpoint does for a user's config: rendered with its options.
        self.engine = load_endpoint_dir(endpoint_dir, user_opts).engine
        run_dir.mkdir(parents=True, exist_ok=True)
        self.engine.start(endpoint_id=uuid.uuid5(_NAMESPACE, self.name), run_dir=str(run_dir))

    def submit(self, function: Callable[..., Any], *args: Any) -> Future[Any]:
        """Run ``function(*args)`` on a worker; the future holds its return value."""
        task_id = uuid.uuid4()
        if function not in self._functions:  # its source, read and packed once
            self._functions[function] = self.serializer.serialize(function)
        buffers = [
            self._functions[function],
            self.serializer.serialize(args),
            self.serializer.serialize({}),
        ]
        task = Task(task_id=task_id, task_buffer=self.serializer.pack_buffers(buffers))
        packed: GCFuture = GCFuture(task_id)
        answer: Future[Any] = Future()
        packed.add_done_callback(lambda done: self._unpack(done, answer, function))
        self.engine.submit(packed, messagepack.pack(task), resource_specification={})
        return answer

    def _unpack(self, done: Future[Any], answer: Future[Any], function: Callable[..., Any]) -> None:
        try:
            result = messagepack.unpack(done.result())
            if not isinstance(result, Result):
                raise FunctionFailed(f"{self.name}: unexpected message {type(result).__name__}")
            if result.is_error:
                raise FunctionFailed(f"{function.__name__} failed on {self.name}: {result.data}")
            answer.set_result(self.serializer.deserialize(result.data))
        except BaseException as err:  # every failure reaches the caller through the future
            answer.set_exception(err)

    def node_held(self) -> bool:
        """True once a worker pool has connected: the block's job runs on a node."""
        return bool(self.engine.executor.connected_managers())

    def shutdown(self) -> None:
        """Stop the engine; its provider cancels the scheduler job."""
        self.engine.shutdown()
