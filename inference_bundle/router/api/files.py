"""OpenAI's Files: batch input uploaded to the router, and batch output read back."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import BaseRoute

from inference_bundle.router.api import uploads
from inference_bundle.router.api.common import authenticate, bound_route
from inference_bundle.router.api.upload_lines import check_batch_lines
from inference_bundle.router.batches.service import BatchService
from inference_bundle.router.batches.store import FileRecord, new_id
from inference_bundle.router.errors import APIError

FILENAME_LIMIT = 255


def routes(batches: BatchService) -> list[BaseRoute]:
    """The routes, to be placed before the router's catch-all operation routes."""
    return [
        bound_route("/v1/files", upload_file, batches, ["POST"]),
        bound_route("/v1/files/{file_id}", get_file, batches, ["GET"]),
        bound_route("/v1/files/{file_id}", delete_file, batches, ["DELETE"]),
        bound_route("/v1/files/{file_id}/content", file_content, batches, ["GET"]),
    ]


async def upload_file(batches: BatchService, request: Request) -> Response:
    """Store an uploaded JSON Lines file of purpose 'batch' for the caller."""
    caller = await authenticate(batches.authenticator, request)
    _check_room(batches, caller.user, incoming=0)
    upload = await uploads.receive(request, batches.files_dir, batches.max_file_bytes)
    try:
        purpose, filename = _form(upload)
        limit_s = batches.upload_limits.upload_check_s
        await run_in_threadpool(check_batch_lines, upload.path, limit_s)
        _check_room(batches, caller.user, incoming=upload.size)
        file_id = new_id("file")
        path = batches.files_dir / f"{file_id}.jsonl"
        await run_in_threadpool(os.replace, upload.path, path)
    except BaseException:
        uploads.discard(upload.path)  # not in a thread: a cancelled request may not await
        raise
    add = batches.store.add_file
    record = await run_in_threadpool(add, caller.user, filename, purpose, path, file_id)
    return JSONResponse(file_object(record))


async def get_file(batches: BatchService, request: Request) -> Response:
    """One of the caller's files."""
    caller = await authenticate(batches.authenticator, request)
    return JSONResponse(file_object(batches.owned_file(caller, request.path_params["file_id"])))


async def delete_file(batches: BatchService, request: Request) -> Response:
    """Delete one of the caller's files; a 409 while an unfinished batch reads or writes it."""
    caller = await authenticate(batches.authenticator, request)
    record = batches.owned_file(caller, request.path_params["file_id"])
    for batch in batches.store.batches(caller.user, unfinished=True):
        if record.path in (batch.input_path, batch.output_path, batch.error_path):
            raise APIError(
                409,
                f"File {record.id} is used by batch {batch.id}, which is {batch.status}; "
                "delete the file once the batch ends, or cancel the batch.",
                code="file_in_use",
            )
    batches.store.delete_file(record.id, caller.user)
    # Only the service's own copy of an upload is removed: a path elsewhere (a guide batch's
    # input or output on the cluster) belongs to the user, who deletes it there.
    if Path(record.path).parent == batches.files_dir:
        await run_in_threadpool(uploads.discard, Path(record.path))
    return JSONResponse({"id": record.id, "object": "file", "deleted": True})


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


def _form(upload: uploads.Upload) -> tuple[str, str]:
    """The upload's purpose (batch) and file name, or the 400 naming the field."""
    raw = upload.fields.get("purpose")
    if raw is None:
        raise APIError(
            400, "The upload has no 'purpose' field; send purpose=batch.", param="purpose"
        )
    try:
        purpose = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise APIError(
            400, "purpose is not UTF-8 text; send purpose=batch.", param="purpose"
        ) from None
    if purpose != "batch":
        raise APIError(
            400, f"purpose is {purpose!r}; this service takes 'batch' files.", param="purpose"
        )
    if upload.filename is None:
        raise APIError(
            400, "The upload has no 'file' part: send the JSON Lines file.", param="file"
        )
    try:
        name = upload.filename.decode("utf-8")
    except UnicodeDecodeError:
        raise APIError(400, "The file's name is not UTF-8 text; rename it.", param="file") from None
    # A name is shown back, never used as a path: only its last component is kept.
    name = name.replace("\\", "/").rsplit("/", 1)[-1][:FILENAME_LIMIT]
    return purpose, name or "upload.jsonl"


def _check_room(batches: BatchService, user: str, incoming: int) -> None:
    """A 400 (count) or 413 (bytes) naming the cap that one more upload would pass."""
    limits = batches.upload_limits
    count, used = batches.store.files_usage(user, batches.files_dir)
    if count >= limits.max_files_per_user:
        raise APIError(
            400,
            f"You have {count} uploaded files, the most this service keeps per user "
            f"(max_files_per_user = {limits.max_files_per_user}); delete some with "
            "DELETE /v1/files/{file_id} and upload again.",
            param="file",
            code="file_limit_reached",
        )
    if used + incoming > limits.max_bytes_per_user or used >= limits.max_bytes_per_user:
        raise APIError(
            413,
            f"Your uploads would take {used + incoming:,} bytes, over this service's "
            f"{limits.max_bytes_per_user:,} bytes per user (max_bytes_per_user); delete "
            "files with DELETE /v1/files/{file_id} and upload again.",
            param="file",
            code="storage_limit_reached",
        )
