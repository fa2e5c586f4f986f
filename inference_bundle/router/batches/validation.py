"""Checks a batch passes before anything runs: the model, the paths, every line of the file."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from inference_bundle.router.errors import APIError
from inference_bundle.router.routes import Route

MAX_REQUESTS = 150_000
SHOWN_PROBLEMS = 20
GENERATION_URLS = ("/v1/chat/completions", "/v1/completions")
EMBEDDING_URLS = ("/v1/embeddings",)


def check_batch_model(route: Route) -> None:
    """Only the guide's B models, on a single node, take batches."""
    ep = route.entry.endpoint
    if not ep.batch or ep.nodes != 1:
        why = "it is not batch-capable" if not ep.batch else f"it spans {ep.nodes} nodes"
        raise APIError(
            400,
            f"The model '{route.model}' does not take batches on {route.cluster}: {why}. "
            "GET /resource_server/list-endpoints shows the models with batch: true.",
            param="model",
            code="batch_not_supported",
        )


def supported_urls(route: Route) -> tuple[str, ...]:
    """The request urls a batch line may use for this model."""
    return EMBEDDING_URLS if route.entry.endpoint.kind == "embedding" else GENERATION_URLS


def path_under(value: str, roots: Sequence[str], field: str) -> Path:
    """``value`` resolved (links and ``..`` followed); 400 unless it lies under a root."""
    if not value or "\x00" in value:
        raise APIError(400, f"'{field}' must be a file path.", param=field)
    path = Path(os.path.realpath(Path(value).expanduser()))
    for root in roots:
        base = Path(os.path.realpath(Path(root).expanduser()))
        if path == base or base in path.parents:
            return path
    raise APIError(
        400,
        f"'{field}' {value} is outside the folders batches may use on this cluster: "
        f"{', '.join(roots)}. Put the file under one of them.",
        param=field,
        code="path_not_allowed",
    )


@dataclass(frozen=True)
class FileCheck:
    """The outcome of reading an input file: how many requests, and what is wrong."""

    requests: int
    problems: list[tuple[int, str]]  # the first SHOWN_PROBLEMS
    problem_lines: int
    url: str | None  # the url every line uses, or None when they differ


def check_lines(lines: Iterable[bytes], model: str, urls: Sequence[str]) -> FileCheck:
    """Check every line; keep the first problems, count the requests (blank lines skipped)."""
    problems: list[tuple[int, str]] = []
    seen: set[str] = set()
    used: set[str] = set()
    requests = bad = 0
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        requests += 1
        reason = _line_problem(raw, model, urls, seen, used)
        if reason is not None:
            bad += 1
            if len(problems) < SHOWN_PROBLEMS:
                problems.append((number, reason))
    return FileCheck(requests, problems, bad, next(iter(used)) if len(used) == 1 else None)


def _line_problem(
    raw: bytes, model: str, urls: Sequence[str], seen: set[str], used: set[str]
) -> str | None:
    try:
        line = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return "not a JSON object"
    if not isinstance(line, dict):
        return "not a JSON object"
    custom_id = line.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        return "custom_id is missing (a non-empty string)"
    if custom_id in seen:
        return f"custom_id {custom_id!r} is used by an earlier line"
    seen.add(custom_id)
    if line.get("method") != "POST":
        return f"method is {line.get('method')!r}; only POST is supported"
    url = line.get("url")
    if url not in urls:
        return f"url {url!r} is not supported for {model}; use one of {', '.join(urls)}"
    used.add(str(url))
    body = line.get("body")
    if not isinstance(body, dict):
        return "body is missing (a JSON object)"
    if body.get("model") != model:
        return f"body.model is {body.get('model')!r}, not the batch's model {model!r}"
    if body.get("stream"):
        return "body.stream is true; batch answers are whole, remove it"
    return None


def rejection(check: FileCheck, field: str) -> APIError | None:
    """The 400 for a file that cannot run, or None when it can."""
    if check.requests > MAX_REQUESTS:
        return APIError(
            400,
            f"The input file has {check.requests:,} requests; a batch takes at most "
            f"{MAX_REQUESTS:,}. Split it into several batches.",
            param=field,
            code="too_many_requests",
        )
    if check.requests == 0:
        return APIError(400, "The input file has no requests.", param=field, code="empty_file")
    if not check.problems:
        return None
    listed = "; ".join(f"line {n}: {why}" for n, why in check.problems)
    more = f", the first {SHOWN_PROBLEMS} shown" if check.problem_lines > SHOWN_PROBLEMS else ""
    return APIError(
        400,
        f"The input file has {check.problem_lines} lines that cannot run{more}: {listed}. "
        "Fix them and submit again.",
        param=field,
        code="invalid_batch_file",
        extra={"lines": [{"line": n, "reason": why} for n, why in check.problems]},
    )


def check_file(path: Path, model: str, urls: Sequence[str], field: str) -> FileCheck:
    """Read and check an input file; raise the 400 a user can act on."""
    try:
        with open(path, "rb") as handle:
            check = check_lines(handle, model, urls)
    except FileNotFoundError:
        raise APIError(400, f"'{field}' {path} does not exist.", param=field) from None
    except IsADirectoryError:
        raise APIError(400, f"'{field}' {path} is a folder, not a file.", param=field) from None
    except PermissionError:
        raise APIError(400, f"'{field}' {path} cannot be read by the service.") from None
    error = rejection(check, field)
    if error is not None:
        raise error
    return check
