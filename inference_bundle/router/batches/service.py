"""Batches as a service: one owner each, a model that takes batches, a job per batch.

A user sees only their own files and batches: anyone else's id is answered 404, exactly as
an id that does not exist.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from inference_bundle.config.profiles import ClusterProfile
from inference_bundle.config.settings import AuthSettings
from inference_bundle.router.auth import Authenticator, Caller, check_access
from inference_bundle.router.batches.runner import BatchRunner
from inference_bundle.router.batches.store import BatchRecord, BatchStore, FileRecord
from inference_bundle.router.batches.validation import check_batch_model
from inference_bundle.router.errors import APIError
from inference_bundle.router.routes import Route, RouteTable


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

    def shutdown(self) -> None:
        self.store.close()

    def route_for(
        self, caller: Caller, model: Any, cluster: str | None, framework: str | None
    ) -> Route:
        """The route of a batch's model, which the caller may use and which takes batches."""
        if not isinstance(model, str) or not model:
            raise APIError(
                400, "'model' is required: the model every line asks for.", param="model"
            )
        route = self.table.lookup(model, cluster, framework)
        check_access(caller, self.auth, route.cluster, route.entry.endpoint.groups)
        check_batch_model(route)
        return route

    def submit(
        self,
        caller: Caller,
        route: Route,
        batch_id: str,
        source: FileRecord,
        output: Path,
        endpoint: str,
        total: int,
        metadata: dict[str, str] | None = None,
    ) -> BatchRecord:
        """Record a new batch in progress and start its job."""
        output.parent.mkdir(parents=True, exist_ok=True)
        now = int(time.time())
        batch = BatchRecord(
            id=batch_id,
            owner=caller.user,
            cluster=route.cluster,
            model=route.model,
            endpoint=endpoint,
            input_file_id=source.id,
            input_path=source.path,
            output_path=str(output),
            error_path=str(output.with_suffix(".errors.jsonl")),
            status="in_progress",
            total=total,
            created_at=now,
            in_progress_at=now,
            metadata=metadata,
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


def first_model(path: Path) -> Any:
    """body.model of the first request line (the batch's model); a 400 when unreadable."""
    with open(path, "rb") as handle:
        for raw in handle:
            if raw.strip():
                try:
                    line = json.loads(raw)
                    return line["body"]["model"]
                except (ValueError, KeyError, TypeError):
                    raise APIError(
                        400,
                        "The input file has lines that cannot run: line 1 has no body.model; "
                        "every line must name the batch's model.",
                        param="input_file_id",
                        code="invalid_batch_file",
                    ) from None
    raise APIError(400, "The input file has no requests.", param="input_file_id")
