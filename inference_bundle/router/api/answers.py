"""How an answer leaves the router: named as the user asked, in OpenAI's shape, recorded."""

from __future__ import annotations

import time
from typing import Any

from inference_bundle.router.accesslog import log_request
from inference_bundle.router.dispatch import Answer, Streamed
from inference_bundle.router.errors import APIError
from inference_bundle.router.service import RouterService


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
    context: dict[str, Any],
    status: int,
    began: float,
    answer: Answer | Streamed | None,
) -> None:
    latency = time.monotonic() - began
    metrics = service.metrics
    metrics.requests.labels(context["operation"], context["model"], str(status)).inc()
    via = answer.via if answer is not None else "none"
    metrics.paths.labels(via).inc()
    metrics.latency.labels(context["operation"]).observe(latency)
    start_wait = answer.start_wait_s if answer else 0.0
    if answer is not None and answer.cold_start:
        metrics.cold_starts.labels(context["model"]).inc()
        metrics.start_wait.observe(answer.waited_s)
    log_request(
        **context,
        status=status,
        latency_ms=round(latency * 1000, 2),
        start_wait_s=round(start_wait, 3),
        via=via,
    )
