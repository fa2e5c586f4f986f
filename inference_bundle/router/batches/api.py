"""HTTP handlers: the guide's batch API and OpenAI's Files and Batches, one owner each.

A user sees only their own files and batches: anyone else's id is answered 404, exactly as
an id that does not exist.
"""

from __future__ import annotations

import email.parser
import email.policy
import json
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route as HTTPRoute

from inference_bundle.config.profiles import ClusterProfile
from inference_bundle.config.settings import AuthSettings
from inference_bundle.router.auth import Authenticator, Caller, check_access
from inference_bundle.router.batches.runner import BatchRunner
from inference_bundle.router.batches.store import BatchRecord, BatchStore, FileRecord, new_id
from inference_bundle.router.batches.validation import (
    EMBEDDING_URLS,
    GENERATION_URLS,
    check_batch_model,
    check_file,
    path_under,
    supported_urls,
)
from inference_bundle.router.bodies import read_limited
from inference_bundle.router.errors import APIError
from inference_bundle.router.routes import Route, RouteTable

COMPLETION_WINDOW = "24h"
WINDOW_S = 24 * 3600


@dataclass
class BatchService:
    """What the batch handlers need from the router."""

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


Handler = Callable[[Request], Awaitable[Response]]


def batch_routes(batches: BatchService) -> list[HTTPRoute]:
    """The routes, to be placed before the router's catch-all operation routes."""
    api = _Handlers(batches)
    guide = "/resource_server/{cluster}/{framework}/v1/batches"
    return [
        HTTPRoute(guide, api.guide_create, methods=["POST"]),
        HTTPRoute(guide, api.list_batches, methods=["GET"]),
        HTTPRoute(guide + "/{batch_id}", api.get_batch, methods=["GET"]),
        HTTPRoute(guide + "/{batch_id}/result", api.guide_result, methods=["GET"]),
        HTTPRoute(guide + "/{batch_id}/cancel", api.cancel_batch, methods=["POST"]),
        HTTPRoute("/v1/files", api.upload_file, methods=["POST"]),
        HTTPRoute("/v1/files/{file_id}", api.get_file, methods=["GET"]),
        HTTPRoute("/v1/files/{file_id}/content", api.file_content, methods=["GET"]),
        HTTPRoute("/v1/batches", api.openai_create, methods=["POST"]),
        HTTPRoute("/v1/batches", api.list_batches, methods=["GET"]),
        HTTPRoute("/v1/batches/{batch_id}", api.get_batch, methods=["GET"]),
        HTTPRoute("/v1/batches/{batch_id}/cancel", api.cancel_batch, methods=["POST"]),
    ]


class _Handlers:
    def __init__(self, batches: BatchService) -> None:
        self.b = batches

    async def _caller(self, request: Request) -> Caller:
        header = request.headers.get("authorization")
        caller: Caller = await run_in_threadpool(self.b.authenticator.authenticate, header)
        return caller

    async def _json(self, request: Request) -> dict[str, Any]:
        raw = await _read_body(request, 1024 * 1024)
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise APIError(400, "The request body is not valid JSON.") from None
        if not isinstance(body, dict):
            raise APIError(400, "The request body must be a JSON object.")
        return body

    def _route(
        self, caller: Caller, model: Any, cluster: str | None, framework: str | None
    ) -> Route:
        if not isinstance(model, str) or not model:
            raise APIError(
                400, "'model' is required: the model every line asks for.", param="model"
            )
        route = self.b.table.lookup(model, cluster, framework)
        check_access(caller, self.b.auth, route.cluster, route.entry.endpoint.groups)
        check_batch_model(route)
        return route

    # The guide's API

    async def guide_create(self, request: Request) -> Response:
        caller = await self._caller(request)
        body = await self._json(request)
        cluster, framework = request.path_params["cluster"], request.path_params["framework"]
        route = self._route(caller, body.get("model"), cluster, framework)
        paths = self.b.profiles[route.cluster].paths
        input_file = body.get("input_file")
        if not isinstance(input_file, str):
            raise APIError(400, "'input_file' is required: the path of a JSON Lines file.")
        input_path = path_under(input_file, paths.batch_input_roots, "input_file")
        urls = supported_urls(route)
        check = await run_in_threadpool(check_file, input_path, route.model, urls, "input_file")
        batch_id = new_id("batch")
        wanted = body.get("output_file_path")
        if wanted is None:
            output = Path(paths.batch_output_root) / batch_id / "output.jsonl"
        elif isinstance(wanted, str):
            roots = [paths.batch_output_root, *paths.batch_input_roots]
            output = path_under(wanted, roots, "output_file_path")
            if output.is_dir():
                output = output / f"{batch_id}.jsonl"
            if output.exists():
                raise APIError(
                    400,
                    f"'output_file_path' {output} already exists; name a new file.",
                    param="output_file_path",
                )
        else:
            raise APIError(400, "'output_file_path' must be a path.", param="output_file_path")
        source = self.b.store.add_file(caller.user, input_path.name, "batch", input_path)
        endpoint = check.url or ""
        batch = self._submit(caller, route, batch_id, source, output, endpoint, check.requests)
        return JSONResponse(batch_object(batch), status_code=200)

    async def guide_result(self, request: Request) -> Response:
        caller = await self._caller(request)
        batch = self._batch(request, caller)
        if batch.status not in ("completed", "cancelled", "failed"):
            raise APIError(
                409,
                f"Batch {batch.id} is {batch.status} ({batch.completed + batch.failed} of "
                f"{batch.total} requests done); its result is ready once it ends.",
                code="batch_not_finished",
            )
        return JSONResponse(
            {
                "id": batch.id,
                "status": batch.status,
                "output_file_path": batch.output_path,
                "error_file_path": batch.error_path,
                "output_file_id": batch.output_file_id,
                "error_file_id": batch.error_file_id,
                "request_counts": _counts(batch),
            }
        )

    # OpenAI's Files and Batches

    async def upload_file(self, request: Request) -> Response:
        caller = await self._caller(request)
        fields = await _multipart(request, self.b.max_file_bytes)
        purpose = fields.get("purpose", (None, b""))[1].decode()
        if purpose != "batch":
            raise APIError(
                400, f"purpose is {purpose!r}; this service takes 'batch' files.", param="purpose"
            )
        if "file" not in fields:
            raise APIError(400, "The upload has no 'file' part.", param="file")
        filename, data = fields["file"]
        file_id = new_id("file")
        self.b.files_dir.mkdir(parents=True, exist_ok=True)
        path = self.b.files_dir / f"{file_id}.jsonl"
        await run_in_threadpool(path.write_bytes, data)
        record = self.b.store.add_file(
            caller.user, filename or "upload.jsonl", purpose, path, file_id
        )
        return JSONResponse(file_object(record))

    async def get_file(self, request: Request) -> Response:
        caller = await self._caller(request)
        return JSONResponse(file_object(self._file(request, caller)))

    async def file_content(self, request: Request) -> Response:
        caller = await self._caller(request)
        record = self._file(request, caller)
        if not os.path.exists(record.path):
            raise APIError(404, f"The content of file {record.id} is gone.", code="not_found")
        return FileResponse(record.path, media_type="application/jsonl")

    async def openai_create(self, request: Request) -> Response:
        caller = await self._caller(request)
        body = await self._json(request)
        window = body.get("completion_window")
        if window != COMPLETION_WINDOW:
            raise APIError(
                400,
                f"completion_window is {window!r}; only '24h' is supported.",
                param="completion_window",
            )
        endpoint = body.get("endpoint")
        if endpoint not in GENERATION_URLS + EMBEDDING_URLS:
            raise APIError(
                400,
                f"endpoint is {endpoint!r}; use one of "
                f"{', '.join(GENERATION_URLS + EMBEDDING_URLS)}.",
                param="endpoint",
            )
        file_id = body.get("input_file_id")
        source = self.b.store.file(str(file_id), caller.user)
        if source is None or source.purpose != "batch":
            raise APIError(
                404, f"No batch file {file_id!r}.", param="input_file_id", code="not_found"
            )
        model = await run_in_threadpool(_first_model, Path(source.path))
        route = self._route(caller, model, None, None)
        if endpoint not in supported_urls(route):
            raise APIError(
                400,
                f"{route.model} does not serve {endpoint} in batches; use one of "
                f"{', '.join(supported_urls(route))}.",
                param="endpoint",
            )
        path = Path(source.path)
        check = await run_in_threadpool(
            check_file, path, route.model, (str(endpoint),), "input_file_id"
        )
        batch_id = new_id("batch")
        output = Path(self.b.profiles[route.cluster].paths.batch_output_root) / batch_id
        given = body.get("metadata")
        metadata = {str(k): str(v) for k, v in given.items()} if isinstance(given, dict) else None
        output = output / "output.jsonl"
        batch = self._submit(
            caller, route, batch_id, source, output, str(endpoint), check.requests, metadata
        )
        return JSONResponse(batch_object(batch))

    # Both

    async def list_batches(self, request: Request) -> Response:
        caller = await self._caller(request)
        cluster = request.path_params.get("cluster")
        status = request.query_params.get("status")
        found = [
            self.b.runner.refresh(b)
            for b in self.b.store.batches(caller.user, status)
            if cluster is None or b.cluster == cluster
        ]
        data = [batch_object(b) for b in found]
        return JSONResponse(
            {
                "object": "list",
                "data": data,
                "first_id": data[0]["id"] if data else None,
                "last_id": data[-1]["id"] if data else None,
                "has_more": False,
            }
        )

    async def get_batch(self, request: Request) -> Response:
        caller = await self._caller(request)
        return JSONResponse(batch_object(self.b.runner.refresh(self._batch(request, caller))))

    async def cancel_batch(self, request: Request) -> Response:
        caller = await self._caller(request)
        batch = await run_in_threadpool(self.b.runner.cancel, self._batch(request, caller))
        return JSONResponse(batch_object(self.b.runner.refresh(batch)))

    def _submit(
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
        self.b.store.save(batch)
        self.b.runner.start(batch)
        return batch

    def _batch(self, request: Request, caller: Caller) -> BatchRecord:
        batch_id = request.path_params["batch_id"]
        batch = self.b.store.batch(batch_id, caller.user)
        cluster = request.path_params.get("cluster")
        if batch is None or (cluster is not None and batch.cluster != cluster):
            raise APIError(404, f"No batch {batch_id!r}.", code="not_found")
        return batch

    def _file(self, request: Request, caller: Caller) -> FileRecord:
        file_id = request.path_params["file_id"]
        record = self.b.store.file(file_id, caller.user)
        if record is None:
            raise APIError(404, f"No file {file_id!r}.", code="not_found")
        return record


def _counts(batch: BatchRecord) -> dict[str, int]:
    return {"total": batch.total, "completed": batch.completed, "failed": batch.failed}


def batch_object(batch: BatchRecord) -> dict[str, Any]:
    """OpenAI's Batch object, with the guide's model, cluster and paths added."""
    final = batch.finished_at
    errors = None
    if batch.errors:
        errors = {"object": "list", "data": batch.errors}
    return {
        "id": batch.id,
        "object": "batch",
        "endpoint": batch.endpoint,
        "model": batch.model,
        "cluster": batch.cluster,
        "errors": errors,
        "input_file_id": batch.input_file_id,
        "completion_window": COMPLETION_WINDOW,
        "status": batch.status,
        "output_file_id": batch.output_file_id,
        "error_file_id": batch.error_file_id,
        "created_at": batch.created_at,
        "in_progress_at": batch.in_progress_at,
        "expires_at": batch.created_at + WINDOW_S,
        "finalizing_at": None,
        "completed_at": final if batch.status == "completed" else None,
        "failed_at": final if batch.status == "failed" else None,
        "expired_at": None,
        "cancelling_at": batch.cancelling_at,
        "cancelled_at": final if batch.status == "cancelled" else None,
        "request_counts": _counts(batch),
        "metadata": batch.metadata,
        "input_file": batch.input_path,
        "output_file_path": batch.output_path,
    }


def file_object(record: FileRecord) -> dict[str, Any]:
    """OpenAI's File object."""
    return {
        "id": record.id,
        "object": "file",
        "bytes": record.bytes,
        "created_at": record.created_at,
        "filename": record.filename,
        "purpose": record.purpose,
        "status": "processed",
    }


def _first_model(path: Path) -> Any:
    """body.model of the first request line (the batch's model); None when unreadable."""
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


async def _read_body(request: Request, limit: int) -> bytes:
    too_large = APIError(
        413, f"The upload is larger than {limit // 2**20} MB.", code="request_too_large"
    )
    return await read_limited(request, limit, too_large)


async def _multipart(request: Request, limit: int) -> dict[str, tuple[str | None, bytes]]:
    """multipart/form-data fields: name -> (filename, bytes), read with the stdlib parser."""
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("multipart/form-data"):
        raise APIError(400, "Upload the file as multipart/form-data (purpose and file).")
    raw = await _read_body(request, limit)
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode()
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + raw)
    fields: dict[str, tuple[str | None, bytes]] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True)
        if isinstance(name, str) and isinstance(payload, bytes):
            fields[name] = (part.get_filename(), payload)
    return fields
