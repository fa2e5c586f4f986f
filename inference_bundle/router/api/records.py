"""How an answer leaves the router: named as the user asked, in OpenAI's shape, recorded."""

from __future__ import annotations

import json
import time
from typing import Any

from inference_bundle.router.api.access_log import log_request
from inference_bundle.router.api.request_context import RequestContext
from inference_bundle.router.dispatch.answers import Answer, Streamed
from inference_bundle.router.errors import APIError
from inference_bundle.router.limits.limiter import Usage
from inference_bundle.router.service import RouterService
from inference_bundle.router.tracing import RequestTrace, Step

# nginx's "client closed request": the client hung up before its answer ended. Neither the
# router nor a server failed: error counts and the status page's error list leave it out.
CLIENT_CLOSED = 499
_DECODER = json.JSONDecoder()


def answer_body(answer: Answer, asked: str) -> Any:
    """The backend's body, named as the user asked; errors always in OpenAI's shape."""
    body = answer.body
    if answer.status < 400:
        # The served name went to the backend; an alias comes back as the user wrote it.
        if isinstance(body, dict) and "model" in body:
            return {**body, "model": asked}
        return body
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        return body
    message = body.get("message") if isinstance(body, dict) else None
    return APIError(
        answer.status,
        str(message or body or "The model server returned an error."),
        type=str(body.get("type", "invalid_request_error"))
        if isinstance(body, dict)
        else "invalid_request_error",
    ).body()


def record(
    service: RouterService,
    ctx: RequestContext,
    status: int,
    answer: Answer | Streamed | None,
    usage: Usage | None = None,
    estimated: bool = False,
) -> None:
    """Count, log and charge one request: ``usage`` as the backend reported it (read from a
    whole answer when not given), or an estimate when the answer was cut."""
    recording = None if ctx.trace is None else ctx.trace.child("record")
    latency = time.monotonic() - ctx.began
    metrics = service.metrics
    metrics.requests.labels(ctx.path, ctx.model, str(status)).inc()
    via = answer.via if answer is not None else "none"
    metrics.paths.labels(via).inc()
    metrics.latency.labels(ctx.path).observe(latency)
    service.minute_series.record(ctx.route.cluster, ctx.model, status, latency)
    start_wait = answer.start_wait_s if answer else 0.0
    if answer is not None and answer.cold_start:
        metrics.cold_starts.labels(ctx.model).inc()
        metrics.start_wait.observe(answer.waited_s)
    if ctx.ticket is not None:
        if usage is None and isinstance(answer, Answer) and status < 400:
            usage = usage_of(answer)
        service.limiter.settle(ctx.ticket, status, usage, latency, via, estimated)
    log_request(
        **ctx.log_fields(),
        status=status,
        latency_ms=round(latency * 1000, 2),
        start_wait_s=round(start_wait, 3),
        queue_wait_ms=round(answer.queue_wait_s * 1000, 1) if answer is not None else 0.0,
        via=via,
        server=answer.server if answer is not None else None,
    )
    if recording is not None and ctx.trace is not None:
        _end_trace(ctx, ctx.trace, recording, status, via, answer)


def _end_trace(
    ctx: RequestContext,
    request_trace: RequestTrace,
    recording: Step,
    status: int,
    via: str,
    answer: Answer | Streamed | None,
) -> None:
    """The request's trace ends with its record: the root says what the log line says of
    the request, less the caller."""
    recording.end()
    request_trace.end(
        status,
        request_id=ctx.request_id,
        model=ctx.model,
        cluster=ctx.route.cluster,
        stream=ctx.stream,
        via=via,
        server=answer.server if answer is not None else None,
    )


def usage_of(answer: Answer) -> Usage | None:
    """The ``usage`` a whole answer reports, if it reports one."""
    if answer.raw is not None:
        return usage_in(answer.raw)
    body = answer.body
    return usage_of_fields(body.get("usage")) if isinstance(body, dict) else None


def usage_in(raw: bytes) -> Usage | None:
    """The last ``"usage": {...}`` object in a JSON text, read without parsing the rest
    (backends write it at the end of an answer and in a stream's last chunk)."""
    return usage_of_fields(usage_fields(raw))


def usage_fields(raw: bytes) -> dict[str, Any] | None:
    """The last ``"usage"`` object of a JSON text as it is, or None."""
    at = raw.rfind(b'"usage"')
    if at < 0:
        return None
    brace = raw.find(b"{", at, at + 32)
    if brace < 0:
        return None
    try:
        value, _ = _DECODER.raw_decode(raw[brace:].decode("utf-8", "replace"))
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def usage_of_fields(value: Any) -> Usage | None:
    """Usage from OpenAI's fields (prompt/completion_tokens) or Responses' and Anthropic's
    (input/output_tokens)."""
    if not isinstance(value, dict):
        return None
    prompt = value.get("prompt_tokens", value.get("input_tokens"))
    completion = value.get("completion_tokens", value.get("output_tokens", 0))
    if not isinstance(prompt, int) or not isinstance(completion, int):
        return None
    return Usage(prompt, completion or 0)
