"""A batch job's body: feed an input file to the model's own server, answer by answer.

vLLM's offline ``run_batch`` (vLLM 0.32) has no /v1/completions, aborts the whole run with
no output on one invalid line, and writes its output once, at the end; so the job starts the
model's server (``use_server``) and sends it the file with bounded concurrency. Each answer
is appended to the output file as it comes (one flushed line), failures to the error file;
custom_ids already in either file are skipped, so a job cut by its walltime resumes where it
stopped. Files next to the output:

- ``<output>.progress.json``: {"total", "completed", "failed", "state", "updated_at"},
  rewritten atomically while the job runs (the router reads it for status);
- ``<output>.cancel``: when it appears, no new request is sent; those in flight finish;
- ``<output>.lock``: held while a job runs, so that two jobs never feed one output.
"""

import contextlib
import fcntl
import http.client
import json
import os
import queue
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

from . import __version__, backend
from .server import use_server
from .spec import ServerSpec
from .states import FeedState


def run_batch(
    expected_runtime_version: str,
    spec: dict[str, object],
    input_path: str,
    output_path: str,
    error_path: str,
    concurrency: int,
) -> dict[str, object]:
    """Run one batch file on this node (the registered entry point; source-serialized).

    Returns {"runtime_version", "total", "completed", "failed", "skipped", "state"}, state
    "completed" or "cancelled". Raises RuntimeError, before anything starts, if the
    installed runtime is not expected_runtime_version.
    """
    import node_runtime
    import node_runtime.batch

    if node_runtime.__version__ != expected_runtime_version:
        raise RuntimeError(
            f"node runtime version mismatch: the router expects {expected_runtime_version}, "
            f"but this node's environment has inference-node-runtime "
            f"{node_runtime.__version__} ({node_runtime.__file__}); install the matching "
            "version into the cluster environment (make deploy) or re-register the functions"
        )
    return node_runtime.batch.feed(spec, input_path, output_path, error_path, concurrency)


_PROGRESS_EVERY_S = 0.5
_STOP = object()


def progress_path(output_path: str) -> str:
    return output_path + ".progress.json"


def cancel_path(output_path: str) -> str:
    return output_path + ".cancel"


def read_progress(output_path: str) -> dict[str, Any] | None:
    """The job's last progress record, or None before it wrote one."""
    try:
        with open(progress_path(output_path)) as handle:
            data = json.load(handle)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def answered_ids(path: str) -> set[str]:
    """custom_ids in a result file; a torn last line (a cut job) is cut off first."""
    if not os.path.exists(path):
        return set()
    with open(path, "rb+") as handle:
        data = handle.read()
        if data and not data.endswith(b"\n"):
            keep = data.rfind(b"\n") + 1
            handle.truncate(keep)
            data = data[:keep]
    ids: set[str] = set()
    for raw in data.splitlines():
        with contextlib.suppress(ValueError):
            line = json.loads(raw)
            if isinstance(line, dict) and isinstance(line.get("custom_id"), str):
                ids.add(line["custom_id"])
    return ids


class _Results:
    """The output and error files, appended line by line, and the progress counts."""

    def __init__(self, output_path: str, error_path: str, total: int) -> None:
        self.output_path = output_path
        self.lock = threading.Lock()
        self.output = open(output_path, "a")  # noqa: SIM115 - closed in close()
        self.errors = open(error_path, "a")  # noqa: SIM115
        self.total = total
        self.completed, self.failed = self._counts(output_path, error_path)
        self.state = FeedState.RUNNING
        self.written_at = 0.0

    @staticmethod
    def _counts(output_path: str, error_path: str) -> tuple[int, int]:
        def count(path: str) -> int:
            with open(path, "rb") as handle:
                return sum(1 for raw in handle if raw.strip())

        return count(output_path), count(error_path)

    def add(self, line: dict[str, Any], ok: bool) -> None:
        text = json.dumps(line) + "\n"
        with self.lock:
            target = self.output if ok else self.errors
            target.write(text)
            target.flush()
            if ok:
                self.completed += 1
            else:
                self.failed += 1
            if time.monotonic() - self.written_at >= _PROGRESS_EVERY_S:
                self.write_progress()

    def write_progress(self) -> None:
        record = {
            "total": self.total,
            "completed": self.completed,
            "failed": self.failed,
            "state": self.state,
            "updated_at": time.time(),
        }
        target = progress_path(self.output_path)
        temporary = f"{target}.{os.getpid()}.tmp"
        with open(temporary, "w") as handle:
            json.dump(record, handle)
        os.replace(temporary, target)
        self.written_at = time.monotonic()

    def close(self) -> None:
        with self.lock:
            self.write_progress()
            self.output.close()
            self.errors.close()


def _requests(input_path: str, skip: set[str]) -> Iterator[dict[str, Any]]:
    with open(input_path, "rb") as handle:
        for raw in handle:
            if raw.strip():
                line = json.loads(raw)
                if line["custom_id"] not in skip:
                    yield line


def _count_requests(input_path: str) -> int:
    with open(input_path, "rb") as handle:
        return sum(1 for raw in handle if raw.strip())


def _answer(port: int, line: dict[str, Any], timeout_s: float) -> tuple[dict[str, Any], bool]:
    request_id = f"batch_req_{uuid.uuid4().hex[:24]}"
    result: dict[str, Any] = {"id": request_id, "custom_id": line["custom_id"]}
    try:
        try:
            status, body = backend.call(port, "POST", line["url"], line["body"], timeout_s)
        except (ConnectionError, http.client.RemoteDisconnected):
            # a dropped connection: once more on a fresh one before calling it a failure
            backend.drop_connection(port)
            status, body = backend.call(port, "POST", line["url"], line["body"], timeout_s)
    except (OSError, http.client.HTTPException) as err:
        backend.drop_connection(port)
        result |= {
            "response": None,
            "error": {"code": "server_unreachable", "message": f"{type(err).__name__}: {err}"},
        }
        return result, False
    result |= {
        "response": {"status_code": status, "request_id": request_id, "body": body},
        "error": None,
    }
    return result, 200 <= status < 300


def feed(
    spec_dict: dict[str, Any],
    input_path: str,
    output_path: str,
    error_path: str,
    concurrency: int,
) -> dict[str, Any]:
    """Send every unanswered line of input_path to the model's server; see the module doc."""
    spec = ServerSpec.from_dict(spec_dict)
    for path in (output_path, error_path):
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(output_path + ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a second job for this output waits, then resumes
        skip = answered_ids(output_path) | answered_ids(error_path)
        results = _Results(output_path, error_path, _count_requests(input_path))
        results.write_progress()
        try:
            with use_server(spec) as server:
                cancelled = _pump(
                    server.port,
                    spec.request_timeout_s,
                    input_path,
                    results,
                    skip,
                    output_path,
                    max(1, concurrency),
                )
            results.state = FeedState.CANCELLED if cancelled else FeedState.COMPLETED
        except BaseException:
            results.state = FeedState.FAILED
            raise
        finally:
            results.close()
    return {
        "runtime_version": __version__,
        "total": results.total,
        "completed": results.completed,
        "failed": results.failed,
        "skipped": len(skip),
        "state": results.state,
    }


def _pump(
    port: int,
    timeout_s: float,
    input_path: str,
    results: _Results,
    skip: set[str],
    output_path: str,
    concurrency: int,
) -> bool:
    """Feed the lines through ``concurrency`` threads; True if a cancel marker stopped it."""
    work: queue.Queue[object] = queue.Queue(maxsize=concurrency * 2)
    failures: list[BaseException] = []

    def worker() -> None:
        while (item := work.get()) is not _STOP:
            assert isinstance(item, dict)
            try:
                results.add(*_answer(port, item, timeout_s))
            except BaseException as err:  # recorded, re-raised by the feeding thread
                failures.append(err)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    cancelled = False
    marker = cancel_path(output_path)
    try:
        for line in _requests(input_path, skip):
            if os.path.exists(marker) or failures:
                cancelled = not failures
                break
            work.put(line)
    finally:
        for _ in threads:
            work.put(_STOP)
        for thread in threads:
            thread.join()
    if failures:
        raise failures[0]
    return cancelled
