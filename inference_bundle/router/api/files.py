"""OpenAI's Files: batch input uploaded to the router, and batch output read back."""

from __future__ import annotations

import os
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import BaseRoute

from inference_bundle.router.api.common import authenticate, bound_route, read_multipart
from inference_bundle.router.batches.service import BatchService
from inference_bundle.router.batches.store import FileRecord, new_id
from inference_bundle.router.errors import APIError


def routes(batches: BatchService) -> list[BaseRoute]:
    """The routes, to be placed before the router's catch-all operation routes."""
    return [
        bound_route("/v1/files", upload_file, batches, ["POST"]),
        bound_route("/v1/files/{file_id}", get_file, batches, ["GET"]),
        bound_route("/v1/files/{file_id}/content", file_content, batches, ["GET"]),
    ]


async def upload_file(batches: BatchService, request: Request) -> Response:
    """Store an uploaded JSON Lines file of purpose 'batch' for the caller."""
    caller = await authenticate(batches.authenticator, request)
    fields = await read_multipart(request, batches.max_file_bytes)
    purpose = fields.get("purpose", (None, b""))[1].decode()
    if purpose != "batch":
        raise APIError(
            400, f"purpose is {purpose!r}; this service takes 'batch' files.", param="purpose"
        )
    if "file" not in fields:
        raise APIError(400, "The upload has no 'file' part.", param="file")
    filename, data = fields["file"]
    file_id = new_id("file")
    batches.files_dir.mkdir(parents=True, exist_ok=True)
    path = batches.files_dir / f"{file_id}.jsonl"
    await run_in_threadpool(path.write_bytes, data)
    record = batches.store.add_file(caller.user, filename or "upload.jsonl", purpose, path, file_id)
    return JSONResponse(file_object(record))


async def get_file(batches: BatchService, request: Request) -> Response:
    """One of the caller's files."""
    caller = await authenticate(batches.authenticator, request)
    return JSONResponse(file_object(batches.owned_file(caller, request.path_params["file_id"])))


async def file_content(batches: BatchService, request: Request) -> Response:
    """The bytes of one of the caller's files (a batch's input, output or errors)."""
    caller = await authenticate(batches.authenticator, request)
    record = batches.owned_file(caller, request.path_params["file_id"])
    if not os.path.exists(record.path):
        raise APIError(404, f"The content of file {record.id} is gone.", code="not_found")
    return FileResponse(record.path, media_type="application/jsonl")


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
