"""A batch job's body: feed an input file to the model's own server, answer by answer.

vLLM's offline ``run_batch`` (vLLM 0.32) has no /v1/completions, aborts the whole run with
no output on one invalid line, and writes its output once, at the end; so the job starts the
model's server (``use_server``) and sends it the file with bounded concurrency. Each answer
is appended to the output file as it comes (one flushed line), failures to the error file;
custom_ids already in either file are skipped, so a job cut by its walltime resumes where it
stopped. A pause marker ends the job "paused" once the lines in flight are answered: the
router submits the batch again later, and the job resumes the same way. Every file is in
the batch's own folder (``node_runtime.batch_files``); when the
user named an ``output_file_path``, the results are copied there once the batch ends.

The server is the batch's own (role "batch": never the interactive server of the model on
the same host, which a batch job's end would otherwise stop). Only answers (an HTTP status
and a body) are written: a line the server never answered (it died, refused or reset the
connection, or went silent) is fed again once ``use_server`` has started it again, at most
``_MAX_RESTARTS`` times per job; the model is sent by its served name, and the answer
names it as the line did (a line may use an alias).
"""

import fcntl
import http.client
import json
import os
import queue
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from . import backend
from .batch_files import (
    ERRORS,
    OUTPUT,
    Results,
    answered_ids,
    cancelled,
    hold_lock,
    input_lines,
    paused,
    private_dir,
    publish,
)
from .server import use_server
from .spec import ServerSpec
from .state_names import FeedState
from .version import __version__


def run_batch(
    expected_runtime_version: str,
    spec: dict[str, object],
    batch_dir: str,
    concurrency: int,
    publish_to: str | None = None,
) -> dict[str, object]:
    """Run one batch (its folder, see batch_files) on this node (the registered entry point).

    Returns {"runtime_version", "total", "completed", "failed", "skipped", "state",
    "publish_error"}, state "completed", "cancelled" or "paused" (a pause marker stopped it,
    or was there at the start: then no server was started; submitted again once the marker
    is gone, the job resumes); publish_error is why the results could not be copied to
    ``publish_to`` (None when they were, none was asked, or the batch is paused). Raises
    RuntimeError, before anything starts, if the installed runtime is not
    expected_runtime_version.
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
    return node_runtime.batch.feed(spec, batch_dir, concurrency, publish_to)


_STOP = object()


def _requests(dir_fd: int, skip: set[str]) -> Iterator[dict[str, Any]]:
    for raw in input_lines(dir_fd):
        line = json.loads(raw)
        if line["custom_id"] not in skip:
            yield line


def _count_requests(dir_fd: int) -> int:
    return sum(1 for _ in input_lines(dir_fd))


class BackendLost(RuntimeError):
    """The model server kept dying (or not answering) mid-file; the unanswered lines remain."""


class _NoAnswer(Exception):
    """A line got no HTTP answer (the server is gone or silent): it is fed again later."""


# Starts of the server after the first, per job, before the batch fails (each is a cold
# start); a resume (the job submitted again) gets as many again.
_MAX_RESTARTS = 3


@dataclass
class _Round:
    """How one pass over the file with one server ended."""

    cancelled: bool = False
    paused: bool = False
    lost: str | None = None  # why lines got no answer, if some did


def _answer(
    port: int, line: dict[str, Any], served: str, timeout_s: float
) -> tuple[dict[str, Any], bool]:
    """The result line for a line the server answered; raises _NoAnswer if it did not.

    The server is sent its own served name (a line may ask for an alias of the model); the
    recorded answer names the model as the line asked for it.
    """
    asked = line["body"].get("model")
    body = {**line["body"], "model": served}
    try:
        try:
            status, answer = backend.call(port, "POST", line["url"], body, timeout_s)
        except (ConnectionError, http.client.RemoteDisconnected):
            # a dropped connection: once more on a fresh one before deciding the server is gone
            backend.drop_connection(port)
            status, answer = backend.call(port, "POST", line["url"], body, timeout_s)
    except (OSError, http.client.HTTPException) as err:
        backend.drop_connection(port)
        raise _NoAnswer(f"{type(err).__name__}: {err}") from err
    if isinstance(answer, dict) and isinstance(answer.get("model"), str) and asked is not None:
        answer["model"] = asked
    request_id = f"batch_req_{uuid.uuid4().hex[:24]}"
    result = {
        "id": request_id,
        "custom_id": line["custom_id"],
        "response": {"status_code": status, "request_id": request_id, "body": answer},
        "error": None,
    }
    return result, 200 <= status < 300


def feed(
    spec_dict: dict[str, Any],
    batch_dir: str,
    concurrency: int,
    publish_to: str | None = None,
) -> dict[str, Any]:
    """Send every unanswered line of the batch's input to the model's server; see the doc."""
    # a batch job's server is its own, never the interactive one of the same model and host
    # (a port of its own too: a fixed port in the spec is the interactive server's)
    spec = ServerSpec.from_dict({**spec_dict, "role": "batch", "port": 0})
    with private_dir(batch_dir) as dir_fd, os.fdopen(hold_lock(dir_fd), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a second job for this batch waits, then resumes
        skip = answered_ids(dir_fd, OUTPUT) | answered_ids(dir_fd, ERRORS)
        results = Results(dir_fd, _count_requests(dir_fd))
        try:
            if paused(dir_fd) and not cancelled(dir_fd):
                results.state = FeedState.PAUSED  # a batch on hold starts no server
            else:
                results.write_progress()
                results.state = _feed_rounds(spec, dir_fd, results, skip, max(1, concurrency))
        except BaseException:
            results.state = FeedState.FAILED
            raise
        finally:
            results.close()
        publish_error = None
        # a paused batch is not done: its results are copied once it is
        if publish_to is not None and results.state != FeedState.PAUSED:
            try:
                publish(dir_fd, publish_to)
            except (OSError, ValueError) as err:
                publish_error = f"{type(err).__name__}: {err}"
    return {
        "runtime_version": __version__,
        "total": results.total,
        "completed": results.completed,
        "failed": results.failed,
        "skipped": len(skip),
        "state": results.state,
        "publish_error": publish_error,
    }


def _feed_rounds(
    spec: ServerSpec,
    dir_fd: int,
    results: Results,
    skip: set[str],
    concurrency: int,
) -> FeedState:
    """Feed the file, starting the server again when it dies mid-file; return how it ended.

    Lines that got no answer are neither written nor counted: the next pass (on a server
    that ``use_server`` found dead and started again) feeds every line not answered yet,
    and so does the next job after a pause.
    """
    done: set[str] = set()  # answered (written) by this job
    restarts = 0
    while True:
        with use_server(spec) as server:
            ended = _pump(
                server.port,
                spec,
                _requests(dir_fd, skip | done),
                results,
                done,
                dir_fd,
                concurrency,
            )
        # A cancel that came while the paused job's last lines finished still wins.
        if ended.cancelled or (ended.paused and cancelled(dir_fd)):
            return FeedState.CANCELLED
        if ended.paused:
            return FeedState.PAUSED
        if ended.lost is None:
            return FeedState.COMPLETED
        if restarts == _MAX_RESTARTS:
            left = results.total - results.completed - results.failed
            raise BackendLost(
                f"model {spec.name!r}: its server stopped answering mid-file "
                f"{restarts + 1} times ({ended.lost}); {left} lines got no answer (they are "
                "in neither the output nor the error file: submit them again in a new batch). "
                f"The server's log: {server.folder}/server.log"
            )
        restarts += 1


def _pump(
    port: int,
    spec: ServerSpec,
    lines: Iterator[dict[str, Any]],
    results: Results,
    done: set[str],
    dir_fd: int,
    concurrency: int,
) -> _Round:
    """Feed lines through ``concurrency`` threads until they run out, a cancel or a pause,
    or no answer.

    Once a line gets no answer, or a cancel or pause comes, no line is sent any more: those
    already queued are dropped (the next pass, or job, feeds them), those in flight finish
    or fail.
    """
    work: queue.Queue[object] = queue.Queue(maxsize=concurrency * 2)
    failures: list[BaseException] = []
    lost: list[str] = []
    down = threading.Event()  # no answer: the server is gone
    halt = threading.Event()  # a cancel or a pause
    ended = _Round()

    def stop_asked() -> bool:
        """Whether a cancel or a pause came; asked before each line is sent."""
        if not halt.is_set():
            if cancelled(dir_fd):
                ended.cancelled = True
                halt.set()
            elif paused(dir_fd):
                ended.paused = True
                halt.set()
        return halt.is_set()

    def worker() -> None:
        while (item := work.get()) is not _STOP:
            assert isinstance(item, dict)
            if down.is_set() or stop_asked():
                continue
            try:
                results.add(*_answer(port, item, spec.name, spec.request_timeout_s))
                done.add(item["custom_id"])
            except _NoAnswer as err:
                lost.append(str(err))
                down.set()
            except BaseException as err:  # recorded, re-raised by the feeding thread
                failures.append(err)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    try:
        for line in lines:
            if failures or down.is_set() or stop_asked():
                break
            work.put(line)
    finally:
        for _ in threads:
            work.put(_STOP)
        for thread in threads:
            thread.join()
    if failures:
        raise failures[0]
    ended.lost = lost[0] if lost else None
    return ended
