"""Batches over HTTP: the guide's batch API (paths on the cluster) and OpenAI's Batches."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute

from inference_bundle.router.api.common import authenticate, bound_route, read_json_object
from inference_bundle.router.batches.service import BatchService, first_model
from inference_bundle.router.batches.store import BatchRecord, new_id
from inference_bundle.router.batches.validation import (
    EMBEDDING_URLS,
    GENERATION_URLS,
    check_file,
    path_under,
    supported_urls,
)
from inference_bundle.router.errors import APIError

COMPLETION_WINDOW = "24h"
WINDOW_S = 24 * 3600


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
    """Start a batch over a JSON Lines file on the cluster; its output goes beside it."""
    caller = await authenticate(batches.authenticator, request)
    body = await read_json_object(request)
    cluster, framework = request.path_params["cluster"], request.path_params["framework"]
    route = batches.route_for(caller, body.get("model"), cluster, framework)
    paths = batches.profiles[route.cluster].paths
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
    source = batches.store.add_file(caller.user, input_path.name, "batch", input_path)
    endpoint = check.url or ""
    batch = batches.submit(caller, route, batch_id, source, output, endpoint, check.requests)
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
    if endpoint not in GENERATION_URLS + EMBEDDING_URLS:
        raise APIError(
            400,
            f"endpoint is {endpoint!r}; use one of {', '.join(GENERATION_URLS + EMBEDDING_URLS)}.",
            param="endpoint",
        )
    file_id = body.get("input_file_id")
    source = batches.store.file(str(file_id), caller.user)
    if source is None or source.purpose != "batch":
        raise APIError(404, f"No batch file {file_id!r}.", param="input_file_id", code="not_found")
    model = await run_in_threadpool(first_model, Path(source.path))
    route = batches.route_for(caller, model, None, None)
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
    output = Path(batches.profiles[route.cluster].paths.batch_output_root) / batch_id
    given = body.get("metadata")
    metadata = {str(k): str(v) for k, v in given.items()} if isinstance(given, dict) else None
    output = output / "output.jsonl"
    batch = batches.submit(
        caller, route, batch_id, source, output, str(endpoint), check.requests, metadata
    )
    return JSONResponse(batch_object(batch))


# Both


async def list_batches(batches: BatchService, request: Request) -> Response:
    """The caller's batches (on the URL's cluster, if any), filtered by ?status=."""
    caller = await authenticate(batches.authenticator, request)
    cluster = request.path_params.get("cluster")
    status = request.query_params.get("status")
    found = [
        batches.runner.refresh(b)
        for b in batches.store.batches(caller.user, status)
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


async def get_batch(batches: BatchService, request: Request) -> Response:
    """One of the caller's batches, with its progress."""
    batch = await _owned_batch(batches, request)
    return JSONResponse(batch_object(batches.runner.refresh(batch)))


async def cancel_batch(batches: BatchService, request: Request) -> Response:
    """Cancel a batch: requests in flight finish and are kept, the rest never run."""
    batch = await _owned_batch(batches, request)
    batch = await run_in_threadpool(batches.runner.cancel, batch)
    return JSONResponse(batch_object(batches.runner.refresh(batch)))


async def _owned_batch(batches: BatchService, request: Request) -> BatchRecord:
    caller = await authenticate(batches.authenticator, request)
    batch_id = request.path_params["batch_id"]
    return batches.owned_batch(caller, batch_id, request.path_params.get("cluster"))


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
