"""Runs each batch as a job on its model's batch endpoint, and keeps its record current.

The job (``node_runtime.batch.run_batch``) writes the output, error and progress files in
the batch's own folder (``node_runtime.batch_files``; the record's input_path is
``<folder>/input.jsonl``); the router reads progress for status, writes the cancel marker,
and records the outcome when the job returns. A record whose output_path lies outside the
folder names the user's ``output_file_path``: the job copies the results there at the end.
Batches left unfinished by a stopped router are submitted again when it starts: the job
resumes from its output file, and its lock keeps two jobs off one batch.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from node_runtime.batch import run_batch
from node_runtime.batch_files import (
    ERRORS,
    INPUT,
    OUTPUT,
    clear_pause,
    read_progress,
    request_cancel,
    request_pause,
)

from inference_bundle.config.naming import batch_twin_name
from inference_bundle.router.batches.charging import BatchCharger, pause_note
from inference_bundle.router.batches.store import FINAL, BatchRecord, BatchStore
from inference_bundle.router.executors.base import Executor
from inference_bundle.router.executors.engine import EngineExecutor
from inference_bundle.router.limits.limiter import Limiter
from inference_bundle.router.routes import Route, RouteTable
from inference_bundle.router.store import StoreUnavailable

log = logging.getLogger("router.batches")
# A router's hold on the batches it runs, renewed each watch pass; once it lapses (the
# router died), another router sharing the store takes them over.
LEASE_S = 30.0
WATCH_S = 2.0


def batch_folder(batch: BatchRecord) -> Path:
    """The batch's own folder (where its job keeps every file)."""
    return Path(batch.input_path).parent


def publish_target(batch: BatchRecord) -> str | None:
    """The folder the user asked the results in, or None (they stay in the batch's folder)."""
    results = Path(batch.output_path).parent
    return None if results == batch_folder(batch) else str(results)


def batch_endpoint(route: Route) -> str:
    """The name of a model's batch twin endpoint (rendered next to the model's own)."""
    return batch_twin_name(route.endpoint_name)


def engine_batch_factory(state_dir: Path) -> Callable[[Route], Executor]:
    """Engines from the batch twins that ``engine_factory`` rendered under state_dir."""

    def start(route: Route) -> Executor:
        name = batch_endpoint(route)
        return EngineExecutor(
            state_dir / "endpoints" / route.cluster / name, state_dir / "engines" / name
        )

    return start


class BatchRunner:
    """Submits batch jobs and turns what they report into batch records."""

    def __init__(
        self,
        store: BatchStore,
        table: RouteTable,
        executor_for: Callable[[Route], Executor],
        runtime_version: str,
        concurrency: int,
        limiter: Limiter | None = None,
        lease_s: float = LEASE_S,
    ) -> None:
        self.store = store
        self.limiter = limiter
        self.charger = BatchCharger(store, limiter) if limiter is not None else None
        # Which router this is, among those sharing the store: its leases carry it.
        self.runner_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.lease_s = lease_s
        self.table = table
        self.executor_for = executor_for
        self.runtime_version = runtime_version
        self.concurrency = concurrency
        self._lock = threading.Lock()
        self._running: dict[str, Future[Any]] = {}
        self._stopping = False
        self._prestart: threading.Thread | None = None
        self._watching = threading.Event()

    def start(self, batch: BatchRecord) -> None:
        """Submit the batch's job in the background (an engine may take a while to start)."""
        if self.store.claim(batch.id, self.runner_id, self.lease_s):
            threading.Thread(target=self._submit, args=(batch.id,), daemon=True).start()

    def prestart(self) -> threading.Thread:
        """Start each batch-capable model's engine now, in the background, with no job yet.

        An engine's start (its interchange) takes seconds; done here, a batch's cold start
        waits only for its job and its model server. The job itself is still asked for when
        a batch arrives.
        """
        routes = [
            route
            for route in self.table.routes()
            if route.entry.endpoint.batch and route.entry.endpoint.enabled
        ]

        def start_all() -> None:
            for route in routes:
                try:
                    self.executor_for(route)
                except Exception:
                    log.exception("the batch engine of %s could not be started", route.model)

        thread = threading.Thread(target=start_all, daemon=True, name="batch-engines")
        thread.start()
        self._prestart = thread
        return thread

    def engines_state(self) -> str | None:
        """'starting' or 'ready' once ``prestart`` ran; None if it did not (for /health)."""
        if self._prestart is None:
            return None
        return "starting" if self._prestart.is_alive() else "ready"

    def resume_unfinished(self) -> list[str]:
        """Submit again every batch a stopped router left running (no other router's lease
        holds it); their ids. Paused ones wait for their budget (``watch``)."""
        ids = []
        for batch_id in self.store.unclaimed():
            batch = self.store.batch(batch_id, None)
            if batch is None or batch.status == "paused":
                continue
            if self.store.claim(batch_id, self.runner_id, self.lease_s):
                ids.append(batch_id)
                threading.Thread(target=self._submit, args=(batch_id,), daemon=True).start()
        return ids

    def watch(self, every_s: float = WATCH_S) -> threading.Thread:
        """In the background: keep this router's leases, charge the lines its jobs answer,
        pause a batch whose budget is spent and resume it when the budget is back, and take
        over the batches of a router that stopped."""

        def loop() -> None:
            while not self._watching.wait(every_s):
                try:
                    self.watch_once()
                except StoreUnavailable as err:
                    log.warning("batches: the store does not answer (%s); trying again", err.detail)
                except Exception:
                    log.exception("batches: the watch pass failed; trying again")

        thread = threading.Thread(target=loop, daemon=True, name="batch-watch")
        thread.start()
        return thread

    def watch_once(self) -> None:
        with self._lock:
            if self._stopping:
                return
            running = list(self._running)
        self.store.renew(self.runner_id, running, self.lease_s)
        for batch_id in running:
            batch = self.store.batch(batch_id, None)
            if batch is None or self.charger is None:
                continue
            self.charger.charge(batch)
            refusal = self.charger.spent(batch)
            if refusal is not None and batch.paused is None:
                log.info("batch %s: pausing, %s", batch_id, refusal.limit.source)
                with contextlib.suppress(OSError):
                    request_pause(str(batch_folder(batch)))
                self.store.save(batch.with_(paused=pause_note(refusal)))
        for batch in self.store.batches(None, status="paused"):
            if self.store.claim(batch.id, self.runner_id, self.lease_s) and (
                self.charger is None or self.charger.spent(batch) is None
            ):
                log.info("batch %s: its budget is back; resuming", batch.id)
                self.store.save(batch.with_(status="in_progress", paused=None))
                self._submit(batch.id)
        self.resume_unfinished()

    def _submit(self, batch_id: str) -> None:
        batch = self.store.batch(batch_id, None)
        if batch is None or batch.status in FINAL:
            return
        refusal = self.charger.spent(batch) if self.charger is not None else None
        if refusal is not None:
            # Its budget is spent already: no job (and no node) until it is back.
            self.store.save(batch.with_(status="paused", paused=pause_note(refusal)))
            return
        with contextlib.suppress(OSError):
            clear_pause(str(batch_folder(batch)))
        folder = batch_folder(batch)
        if Path(batch.input_path).name != INPUT or folder.name != batch.id:
            # recorded by a version that read the user's own path: never opened by name again
            self._finish(
                batch_id, None, "the batch was submitted to an older router; submit it again"
            )
            return
        try:
            route = self.table.lookup(batch.model, batch.cluster)
            executor = self.executor_for(route)
            future = executor.submit(
                run_batch,
                self.runtime_version,
                route.spec.to_dict(),
                str(folder),
                self.concurrency,
                publish_target(batch),
            )
        except Exception as err:
            log.exception("batch %s could not be submitted", batch_id)
            self._finish(batch_id, None, f"the batch job could not be submitted: {err}")
            return
        with self._lock:
            self._running[batch_id] = future
        future.add_done_callback(lambda done: self._done(batch_id, done))

    def _done(self, batch_id: str, done: Future[Any]) -> None:
        with self._lock:
            self._running.pop(batch_id, None)
        error = done.exception()
        if error is not None:
            self._finish(batch_id, None, f"the batch job failed: {error}")
        else:
            self._finish(batch_id, done.result(), None)

    def _finish(self, batch_id: str, result: dict[str, Any] | None, error: str | None) -> None:
        with self._lock:
            if self._stopping:
                return  # the router stops its jobs: the batch stays unfinished, to resume
            self._record_outcome(batch_id, result, error)

    def stop(self) -> None:
        """Record no more outcomes: jobs cut from now on are the router's own stop. Its
        batches are let go, for another router sharing the store to take over at once."""
        with self._lock:
            self._stopping = True
        self._watching.set()
        with contextlib.suppress(Exception):
            self.store.release(self.runner_id)

    def _record_outcome(
        self, batch_id: str, result: dict[str, Any] | None, error: str | None
    ) -> None:
        batch = self.store.batch(batch_id, None)
        if batch is None:
            return
        batch = self.refresh(batch)
        if self.charger is not None:
            with contextlib.suppress(Exception):
                self.charger.charge_all(batch)
        if result is not None and result.get("state") == "paused":
            # Its budget ran out (``watch``): it goes on when the budget is back.
            self.store.save(
                batch.with_(
                    status="paused",
                    completed=int(result["completed"]),
                    failed=int(result["failed"]),
                )
            )
            return
        if result is not None:
            batch = batch.with_(
                total=int(result["total"]),
                completed=int(result["completed"]),
                failed=int(result["failed"]),
            )
        status = "failed" if error else str(result["state"]) if result else "failed"
        folder = batch_folder(batch)
        output_id = error_id = None
        if os.path.exists(folder / OUTPUT):
            output_id = self.store.add_file(batch.owner, OUTPUT, "batch_output", folder / OUTPUT).id
        if os.path.exists(folder / ERRORS):
            error_id = self.store.add_file(batch.owner, ERRORS, "batch_output", folder / ERRORS).id
        errors = None if error is None else [{"code": "job_failed", "message": error}]
        unpublished = result.get("publish_error") if result else None
        if unpublished:
            errors = [
                {
                    "code": "output_not_written",
                    "message": f"the results could not be copied to {publish_target(batch)} "
                    f"({unpublished}); they are in output_file_id and error_file_id",
                }
            ]
        if publish_target(batch) is not None and (error or unpublished):
            # the results are only in the batch's own folder: name those
            batch = batch.with_(output_path=str(folder / OUTPUT), error_path=str(folder / ERRORS))
        self.store.save(
            batch.with_(
                status=status,
                finished_at=int(time.time()),
                output_file_id=output_id,
                error_file_id=error_id,
                errors=errors,
            )
        )

    def refresh(self, batch: BatchRecord) -> BatchRecord:
        """The batch with the counts its job last reported (not saved)."""
        if batch.status in FINAL:
            return batch
        progress = read_progress(str(batch_folder(batch)))
        if progress is None:
            return batch
        return batch.with_(
            completed=int(progress.get("completed", batch.completed)),
            failed=int(progress.get("failed", batch.failed)),
        )

    def cancel(self, batch: BatchRecord) -> BatchRecord:
        """Ask the job to stop after the requests in flight; what finished is kept."""
        with self._lock:
            batch = self.store.batch(batch.id, None) or batch
            if batch.status in FINAL or batch.status == "cancelling":
                return batch
            if batch.status == "paused" and batch.id not in self._running:
                # No job runs it: cancelled at once, what was answered is kept.
                cancelled = batch.with_(status="cancelled", finished_at=int(time.time()))
                self.store.save(cancelled)
                return cancelled
            with contextlib.suppress(OSError):  # no folder: no job there to stop
                request_cancel(str(batch_folder(batch)))
            cancelling = batch.with_(status="cancelling", cancelling_at=int(time.time()))
            self.store.save(cancelling)
            return cancelling

    def running(self, batch_id: str) -> bool:
        with self._lock:
            return batch_id in self._running
