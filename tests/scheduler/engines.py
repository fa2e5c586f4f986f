"""A GlobusComputeEngine run in-process, fed the way an endpoint feeds it.

Functions are serialized with the source strategy that registration uses, packed into a
Task message, submitted, and their Result unpacked: the path production takes from the
endpoint on, with no cloud service.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from globus_compute_common import messagepack
from globus_compute_common.messagepack.message_types import Result, Task
from globus_compute_endpoint.engines import GlobusComputeEngine
from globus_compute_endpoint.engines.base import GCFuture
from globus_compute_sdk.serialize import ComputeSerializer, PureSourceTextInspect


class TaskFailed(AssertionError):
    """The function raised on the worker; the message is the remote traceback."""


class EngineRun:
    """One started engine; call() runs a function on its workers and returns the value."""

    def __init__(self, scheduler: str, label: str, provider: Any, run_dir: Path) -> None:
        self.scheduler = scheduler
        self.label = label
        self.run_dir = run_dir
        self.serde = ComputeSerializer(strategy_code=PureSourceTextInspect())
        self.engine = GlobusComputeEngine(
            label=label,
            address="127.0.0.1",
            provider=provider,
            max_workers_per_node=2,
            cores_per_worker=0.1,
            heartbeat_period=2,
            heartbeat_threshold=10,
            job_status_kwargs={"max_idletime": 120.0, "strategy_period": 0.5},
        )
        self.engine.start(endpoint_id=uuid.uuid4(), run_dir=str(run_dir))
        self.interchange_pid: int = self.engine.executor.interchange_proc.pid

    def call(self, fn: Callable[..., Any], *args: Any, timeout: float = 120.0) -> Any:
        """Run fn(*args) on a worker, serialized as registered; raise TaskFailed on error."""
        task_id = uuid.uuid4()
        body = [self.serde.serialize(fn), self.serde.serialize(args), self.serde.serialize({})]
        packed = messagepack.pack(Task(task_id=task_id, task_buffer=self.serde.pack_buffers(body)))
        future = GCFuture(task_id)
        self.engine.submit(future, packed, resource_specification={})
        result = messagepack.unpack(future.result(timeout=timeout))
        assert isinstance(result, Result)
        if result.is_error:
            raise TaskFailed(f"{fn.__name__} failed on the {self.label} engine:\n{result.data}")
        return self.serde.deserialize(result.data)

    def shutdown(self, wait_s: float = 20.0) -> list[int]:
        """Shut the engine down; return the pids of its processes still alive after wait_s.

        Survivors are killed, so that one leak does not spill into the next test.
        """
        self.engine.shutdown()
        deadline = time.monotonic() + wait_s
        while (left := self.leftovers()) and time.monotonic() < deadline:
            time.sleep(0.2)
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return left

    def leftovers(self) -> list[int]:
        """This engine's processes: its interchange, and any that mention its run_dir or
        work under it (its worker pools and their jobs' processes)."""
        here = str(self.run_dir)
        return sorted(
            pid
            for pid, (_, cmdline, cwd) in live_processes().items()
            if pid == self.interchange_pid or here in cmdline or cwd.startswith(here)
        )


def processes_under(folder: Path) -> list[int]:
    """Live processes whose working directory is in folder (model servers, watchdogs)."""
    return sorted(
        pid for pid, (_, _, cwd) in live_processes().items() if cwd.startswith(str(folder))
    )


def live_processes() -> dict[int, tuple[int, str, str]]:
    """pid -> (parent pid, command line, cwd) of each live process but this one."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            cwd = os.readlink(entry / "cwd")
        except (OSError, IndexError):
            continue
        if fields[0] not in "ZX":
            found[int(entry.name)] = (int(fields[1]), cmdline, cwd)
    return found
