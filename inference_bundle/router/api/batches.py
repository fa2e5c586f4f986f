"""Batches over HTTP: the guide's batch API (paths on the cluster) and OpenAI's Batches.

Every file and database step of a handler runs in a worker thread, bounded in time
(``BatchService.off_loop``): the event loop never waits on a filesystem.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute

from inference_bundle.config.operations import batch_paths
from inference_bundle.router.api.common import authenticate, bound_route, read_json_object
from inference_bundle.router.batches.safe_paths import user_text
from inference_bundle.router.batches.service import BatchService, first_model
from inference_bundle.router.batches.store import BatchRecord, new_id
from inference_bundle.router.batches.validation import (
    supported_urls,
)
from inference_bundle.router.errors import APIError

COMPLETION_WINDOW = "24h"
WINDOW_S = 24 * 3600
# OpenAI's bounds on a batch's metadata.
METADATA_PAIRS, METADATA_KEY, METADATA_VALUE = 16, 64, 512


def routes(batches: BatchService) -> list[BaseRoute]:
    """The routes, to be placed before the router's catch-all operation routes."""
    guide = "/resource_server/{cluster}/{framework}/v1/batches"
    return [
        bound_route(guide, guide_create, batches, ["POST"]),
        bound_route(guide, list_batches, batches, ["GET"]),
        bound_route(guide + "/{batch_id}", get_batch, batches, ["GET"]),
        bound_route(guide + "/{batch_id}/result", guide_result, batches, ["GET"]),
        bound_route(guide + "/{batch_id}/cancel", cancel_batch, batches, ["POST"]),
        bound_route("/v1/batches", openai_create, batches, ["POST"]),
        bound_route("/v1/batches", list_batches, batches, ["GET"]),
        bound_route("/v1/batches/{batch_id}", get_batch, batches, ["GET"]),
        bound_route("/v1/batches/{batch_id}/cancel", cancel_batch, batches, ["POST"]),
    ]


# The guide's API


async def guide_create(batches: BatchService, request: Request) -> Response:
    """Start a batch over a JSON Lines file on the cluster (copied at submit; see safe_paths)."""
    caller = await authenticate(batches.authenticator, request)
    body = await read_json_object(request)
    cluster, framework = request.path_params["cluster"], request.path_params["framework"]
    route = batches.route_for(caller, body.get("model"), cluster, framework)
    if body.get("input_file") is None:
        raise APIError(
            400, "'input_file' is required: the path of a JSON Lines file.", param="input_file"
        )
    input_file = user_text(body.get("input_file"), "input_file")
    wanted = body.get("output_file_path")
    output = None if wanted is None else user_text(wanted, "output_file_path")
    batch_id = new_id("batch")
    staged = await batches.off_loop(batches.stage_path, route, input_file, output, batch_id)
    endpoint = staged.check.url or ""
    batch = await batches.off_loop(
        batches.submit, caller, route, batch_id, staged, input_file, endpoint
    )
    return JSONResponse(batch_object(batch), status_code=200)


async def guide_result(batches: BatchService, request: Request) -> Response:
    """Where a finished batch's output and errors are; a 409 while it runs."""
    batch = await _owned_batch(batches, request)
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


# OpenAI's Batches


async def openai_create(batches: BatchService, request: Request) -> Response:
    """Start a batch over an uploaded file, for one endpoint, in the 24 h window."""
    caller = await authenticate(batches.authenticator, request)
    body = await read_json_object(request)
    window = body.get("completion_window")
    if window != COMPLETION_WINDOW:
        raise APIError(
            400,
            f"completion_window is {window!r}; only '24h' is supported.",
            param="completion_window",
        )
    endpoint = body.get("endpoint")
    if endpoint not in batch_paths():
        raise APIError(
            400,
            f"endpoint is {endpoint!r}; use one of {', '.join(batch_paths())}.",
            param="endpoint",
        )
    metadata = _metadata(body.get("metadata"))
    file_id = body.get("input_file_id")
    if not isinstance(file_id, str):
        raise APIError(
            400, "'input_file_id' is required: the id of an uploaded file.", param="input_file_id"
        )
    source = await batches.off_loop(batches.store.file, file_id, caller.user)
    if source is None or source.purpose != "batch":
        raise APIError(404, f"No batch file {file_id!r}.", param="input_file_id", code="not_found")
    model = await batches.off_loop(first_model, source.path)
    route = batches.route_for(caller, model, None, None)
    if endpoint not in supported_urls(route):
        raise APIError(
            400,
            f"{route.model} does not serve {endpoint} in batches; use one of "
            f"{', '.join(supported_urls(route))}.",
            param="endpoint",
        )
    batch_id = new_id("batch")
    staged = await batches.off_loop(batches.stage_upload, route, source, str(endpoint), batch_id)
    batch = await batches.off_loop(
        batches.submit, caller, route, batch_id, staged, source, str(endpoint), metadata
    )
    return JSONResponse(batch_object(batch))


def _metadata(given: Any) -> dict[str, str] | None:
    """OpenAI's metadata: up to 16 string pairs; a 400 naming what is wrong."""
    if given is None:
        return None
    if not isinstance(given, dict) or len(given) > METADATA_PAIRS:
        raise APIError(
            400,
            f"'metadata' must be an object of at most {METADATA_PAIRS} string pairs.",
            param="metadata",
        )
    for key, value in given.items():
        if not isinstance(value, str) or len(key) > METADATA_KEY or len(value) > METADATA_VALUE:
            raise APIError(
                400,
                f"'metadata' {key!r}: keys are strings of at most {METADATA_KEY} characters, "
                f"values strings of at most {METADATA_VALUE}.",
                param="metadata",
            )
        for text in (key, value):
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:
                raise APIError(
                    400,
                    "'metadata' holds a lone surrogate; send valid Unicode text.",
                    param="metadata",
                ) from None
    return dict(given)


# Both


async def list_batches(batches: BatchService, request: Request) -> Response:
    """The caller's batches (on the URL's cluster, if any), filtered by ?status=."""
    caller = await authenticate(batches.authenticator, request)
    cluster = request.path_params.get("cluster")
    status = request.query_params.get("status")

    def current() -> list[dict[str, Any]]:
        return [
            batch_object(batches.runner.refresh(b))
            for b in batches.store.batches(caller.user, status)
            if cluster is None or b.cluster == cluster
        ]

    data = await batches.off_loop(current)
    return JSONResponse(
        {
            "object": "list",
            "data": data,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
            "has_more": False,
        }
    )


async def get_batch(batches: BatchService, request: Request) -> Response:
    """One of the caller's batches, with its progress."""
    batch = await _owned_batch(batches, request)
    return JSONResponse(batch_object(await batches.off_loop(batches.runner.refresh, batch)))


async def cancel_batch(batches: BatchService, request: Request) -> Response:
    """Cancel a batch: requests in flight finish and are kept, the rest never run."""
    batch = await _owned_batch(batches, request)

    def cancel() -> BatchRecord:
        return batches.runner.refresh(batches.runner.cancel(batch))

    return JSONResponse(batch_object(await batches.off_loop(cancel)))


async def _owned_batch(batches: BatchService, request: Request) -> BatchRecord:
    caller = await authenticate(batches.authenticator, request)
    batch_id = request.path_params["batch_id"]
    cluster = request.path_params.get("cluster")
    return await batches.off_loop(batches.owned_batch, caller, batch_id, cluster)


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
        # While a budget its lines draw on is spent (status "paused"): why, and until when.
        "paused": batch.paused,
        "metadata": batch.metadata,
        "input_file": batch.submitted_input or batch.input_path,
        "output_file_path": batch.output_path,
    }
