"""Batches as a service: one owner each, a model that takes batches, a job per batch.

A user sees only their own files and batches: anyone else's id is answered 404, exactly as
an id that does not exist. A batch's input is copied into its own folder at submit
(``safe_paths``); the job reads that copy, and writes every file it makes in that folder.
"""

from __future__ import annotations

import functools
import os
import stat
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import anyio
import anyio.to_thread
from node_runtime.batch_files import ERRORS, INPUT, OUTPUT

from inference_bundle.config.profiles import ClusterProfile
from inference_bundle.config.settings import AuthSettings, BatchSettings
from inference_bundle.router import jsonsafe
from inference_bundle.router.auth import Authenticator, Caller, allowed_routes, check_access
from inference_bundle.router.batches import safe_paths
from inference_bundle.router.batches.runner import BatchRunner
from inference_bundle.router.batches.store import BatchRecord, BatchStore, FileRecord
from inference_bundle.router.batches.validation import (
    FileCheck,
    check_batch_model,
    check_file,
    supported_urls,
)
from inference_bundle.router.errors import APIError
from inference_bundle.router.routes import Route, RouteTable

T = TypeVar("T")


@dataclass(frozen=True)
class Staged:
    """A batch's folder with its input stored and checked, before the batch is recorded."""

    folder: Path
    check: FileCheck
    publish_to: str | None  # the folder the job creates for the results, if the user named one


@dataclass
class BatchService:
    """What the batch and file handlers need from the router."""

    store: BatchStore
    runner: BatchRunner
    table: RouteTable
    profiles: dict[str, ClusterProfile]
    authenticator: Authenticator
    auth: AuthSettings
    files_dir: Path  # uploads through POST /v1/files
    max_file_bytes: int
    # Per-user caps on uploads, and how long checking an upload's lines may take.
    upload_limits: BatchSettings = field(default_factory=BatchSettings)

    async def off_loop(self, work: Callable[..., T], *args: Any) -> T:
        """``work(*args)`` in a worker thread, bounded in time (a 504 past io_timeout_s).

        Handlers do their file and database work here: a slow or hung filesystem holds a
        thread, never the event loop; past the bound the request is answered and the thread
        is left to finish on its own.
        """
        limit = self.upload_limits.io_timeout_s
        try:
            with anyio.fail_after(limit):
                return await anyio.to_thread.run_sync(
                    functools.partial(work, *args), abandon_on_cancel=True
                )
        except TimeoutError:
            raise APIError(
                504,
                f"The batch filesystem did not answer within {limit:g} s; try again later.",
                type="server_error",
                code="filesystem_timeout",
            ) from None

    def shutdown(self) -> None:
        self.store.close()

    def _group_of(self, caller: Caller, route: Route) -> str:
        """The group whose budgets the batch's lines draw on (as its owner's requests do)."""
        limiter = self.runner.limiter
        return limiter.rules.group_of(route.cluster, caller.groups) if limiter else ""

    def route_for(
        self, caller: Caller, model: Any, cluster: str | None, framework: str | None
    ) -> Route:
        """The route of a batch's model, which the caller may use and which takes batches."""
        if not isinstance(model, str) or not model:
            raise APIError(
                400, "'model' is required: the model every line asks for.", param="model"
            )
        route = self.table.lookup(model, cluster, framework, allowed_routes(caller, self.auth))
        check_access(caller, self.auth, route.cluster, route.entry.endpoint.groups)
        check_batch_model(route)
        return route

    def stage_path(
        self, route: Route, input_file: str, output: str | None, batch_id: str
    ) -> Staged:
        """The guide's input: the user's file opened once, checked, copied; its folder."""
        paths = self.profiles[route.cluster].paths
        publish_to = None
        if output is not None:
            roots = [paths.batch_output_root, *paths.batch_input_roots]
            publish_to = safe_paths.output_target(output, roots, "output_file_path", batch_id)
        limit = self.upload_limits.max_input_bytes
        fd = safe_paths.open_input(input_file, paths.batch_input_roots, "input_file", limit)
        return self._stage(route, fd, batch_id, supported_urls(route), "input_file", publish_to)

    def stage_upload(
        self, route: Route, source: FileRecord, endpoint: str, batch_id: str
    ) -> Staged:
        """OpenAI's input: an uploaded file copied into the batch's folder and checked."""
        fd = open_own(source.path, "input_file_id")
        return self._stage(route, fd, batch_id, (endpoint,), "input_file_id", None)

    def _stage(
        self,
        route: Route,
        fd: int,
        batch_id: str,
        urls: Sequence[str],
        field: str,
        publish_to: str | None,
    ) -> Staged:
        try:
            root = self.profiles[route.cluster].paths.batch_output_root
            folder = safe_paths.make_batch_dir(root, batch_id)
        except BaseException:
            os.close(fd)
            raise
        try:
            safe_paths.store_input(fd, folder, self.upload_limits.max_input_bytes, field)
            aliases = route.entry.endpoint.aliases  # a line may name the model by one
            check = check_file(folder / INPUT, route.model, urls, field, aliases)
        except BaseException:
            safe_paths.drop_batch_dir(folder)
            raise
        return Staged(folder, check, publish_to)

    def submit(
        self,
        caller: Caller,
        route: Route,
        batch_id: str,
        staged: Staged,
        source: FileRecord | str,
        endpoint: str,
        metadata: dict[str, str] | None = None,
    ) -> BatchRecord:
        """Record a new batch in progress and start its job.

        ``source`` is the uploaded file the batch runs, or the user's path, whose stored
        copy becomes the batch's input file.
        """
        submitted = source if isinstance(source, str) else None
        if isinstance(source, str):
            name = os.path.basename(source)
            source = self.store.add_file(caller.user, name, "batch", staged.folder / INPUT)
        results = Path(staged.publish_to) if staged.publish_to else staged.folder
        now = int(time.time())
        batch = BatchRecord(
            id=batch_id,
            owner=caller.user,
            cluster=route.cluster,
            model=route.model,
            endpoint=endpoint,
            input_file_id=source.id,
            input_path=str(staged.folder / INPUT),
            output_path=str(results / OUTPUT),
            error_path=str(results / ERRORS),
            status="in_progress",
            total=staged.check.requests,
            created_at=now,
            in_progress_at=now,
            metadata=metadata,
            submitted_input=submitted,
            group=self._group_of(caller, route),
        )
        self.store.save(batch)
        self.runner.start(batch)
        return batch

    def owned_batch(self, caller: Caller, batch_id: str, cluster: str | None) -> BatchRecord:
        """The caller's batch (on ``cluster`` when a URL names one), or a 404."""
        batch = self.store.batch(batch_id, caller.user)
        if batch is None or (cluster is not None and batch.cluster != cluster):
            raise APIError(404, f"No batch {batch_id!r}.", code="not_found")
        return batch

    def owned_file(self, caller: Caller, file_id: str) -> FileRecord:
        """The caller's file, or a 404."""
        record = self.store.file(file_id, caller.user)
        if record is None:
            raise APIError(404, f"No file {file_id!r}.", code="not_found")
        return record


def open_own(path: str, field: str) -> int:
    """A read descriptor of a file of the service's own store (an upload), never via a link."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        raise APIError(404, "The content of the input file is gone.", param=field) from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise APIError(400, "The input file is not a regular file.", param=field)
    os.set_blocking(fd, True)
    return fd


def first_model(path: str) -> Any:
    """body.model of the first request line (the batch's model); a 400 when unreadable."""
    with os.fdopen(open_own(path, "input_file_id"), "rb") as handle:
        for raw in handle:
            if raw.strip():
                try:
                    line = jsonsafe.parse(raw)
                    return line["body"]["model"]
                except (jsonsafe.JSONProblem, KeyError, TypeError):
                    raise APIError(
                        400,
                        "The input file has lines that cannot run: line 1 has no body.model; "
                        "every line must name the batch's model.",
                        param="input_file_id",
                        code="invalid_batch_file",
                    ) from None
    raise APIError(400, "The input file has no requests.", param="input_file_id")
