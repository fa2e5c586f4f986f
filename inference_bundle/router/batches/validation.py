"""Checks a batch passes before anything runs: the model, the paths, every line of the file."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from inference_bundle.config.operations import batch_paths
from inference_bundle.router import jsonsafe
from inference_bundle.router.errors import APIError
from inference_bundle.router.routes import Route

MAX_REQUESTS = 150_000
SHOWN_PROBLEMS = 20


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
    """The request urls a batch line may use for this model (its kind's batch operations)."""
    return batch_paths(route.entry.endpoint.kind)


@dataclass(frozen=True)
class FileCheck:
    """The outcome of reading an input file: how many requests, and what is wrong."""

    requests: int
    problems: list[tuple[int, str]]  # the first SHOWN_PROBLEMS
    problem_lines: int
    url: str | None  # the url every line uses, or None when they differ


def check_lines(
    lines: Iterable[bytes], model: str, urls: Sequence[str], aliases: Sequence[str] = ()
) -> FileCheck:
    """Check every line; keep the first problems, count the requests (blank lines skipped).

    A line may name the model by one of its aliases: the job sends the server its served
    name, and the answer names the model as the line did.
    """
    problems: list[tuple[int, str]] = []
    seen: set[str] = set()
    used: set[str] = set()
    requests = bad = 0
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        requests += 1
        reason = _line_problem(raw, (model, *aliases), urls, seen, used)
        if reason is not None:
            bad += 1
            if len(problems) < SHOWN_PROBLEMS:
                problems.append((number, reason))
    return FileCheck(requests, problems, bad, next(iter(used)) if len(used) == 1 else None)


def _line_problem(
    raw: bytes, names: Sequence[str], urls: Sequence[str], seen: set[str], used: set[str]
) -> str | None:
    model = names[0]
    try:
        # UTF-8, bounded nesting, no lone surrogate: what the job and every reader can take
        line = jsonsafe.parse(raw)
    except jsonsafe.JSONProblem as problem:
        return f"the line {problem}"
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
    if body.get("model") not in names:
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


def check_file(
    path: Path, model: str, urls: Sequence[str], field: str, aliases: Sequence[str] = ()
) -> FileCheck:
    """Check a batch's stored input (the service's own copy); raise the 400 a user can act on."""
    with open(path, "rb") as handle:
        check = check_lines(handle, model, urls, aliases)
    error = rejection(check, field)
    if error is not None:
        raise error
    return check
