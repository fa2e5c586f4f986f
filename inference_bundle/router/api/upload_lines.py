"""An uploaded batch file read line by line: JSON objects in UTF-8, checked in bounded time.

What a line asks for (its model, url, custom_id) is checked when a batch is created from the
file, against that batch's model; here a file is refused that no batch could ever read.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from inference_bundle.router import jsonsafe
from inference_bundle.router.errors import APIError

SHOWN_PROBLEMS = 20
# A block's blank lines are skipped in one C loop, which holds the interpreter lock: 64 KB
# of newlines keeps it a few milliseconds, under the event loop's budget.
BLOCK = 64 * 1024
_KINDS = {list: "array", str: "string", int: "number", float: "number", bool: "boolean"}


def check_batch_lines(path: Path, time_limit_s: float) -> int:
    """The number of requests in a batch upload; a 400 naming its unreadable lines."""
    deadline = time.monotonic() + time_limit_s
    problems: list[tuple[int, str]] = []
    requests = bad = 0
    with open(path, "rb") as handle:
        for number, raw in _request_lines(handle):
            if time.monotonic() > deadline:
                raise APIError(
                    400,
                    f"The file took longer than {time_limit_s:g} s to check (stopped at line "
                    f"{number:,}); split it into smaller files.",
                    param="file",
                    code="file_check_timeout",
                )
            requests += 1
            reason = _line_problem(raw)
            if reason is not None:
                bad += 1
                if len(problems) < SHOWN_PROBLEMS:
                    problems.append((number, reason))
    if problems:
        listed = "; ".join(f"line {n} {why}" for n, why in problems)
        more = f", the first {SHOWN_PROBLEMS} shown" if bad > SHOWN_PROBLEMS else ""
        raise APIError(
            400,
            f"The file has {bad} lines that are not JSON objects in UTF-8{more}: {listed}. "
            "Each line of a batch file is one request object; fix them and upload again.",
            param="file",
            code="invalid_file",
            extra={"lines": [{"line": n, "reason": why} for n, why in problems]},
        )
    if requests == 0:
        raise APIError(
            400,
            "The file has no requests: every line is blank. Put one request object per line.",
            param="file",
            code="empty_file",
        )
    return requests


def _request_lines(handle: BinaryIO) -> Iterator[tuple[int, bytes]]:
    """(line number, line) of each line that is not blank."""
    # The file is split a block at a time and blank lines are skipped in C (compress over
    # strip): a file of newlines is checked in a fraction of the time a loop over its lines
    # would take, all the while competing with the event loop for the interpreter lock.
    number = 0
    pending: list[bytes] = []  # a line not ended yet, in pieces: joined once, when it ends
    while block := handle.read(BLOCK):
        if not block.strip():
            # Only blank: it ends the line pending, if any, and adds blank lines. Counted
            # in two short C calls: splitting it would hold the interpreter lock for
            # milliseconds at a time, and the event loop's every step waits for it.
            if b"\n" not in block:
                pending.append(block)
                continue
            last = b"".join([*pending, block[: block.find(b"\n")]])
            if last.strip():
                yield number + 1, last
            number += block.count(b"\n")
            pending = [block[block.rfind(b"\n") + 1 :]]
            continue
        cut = block.rfind(b"\n")
        if cut < 0:
            pending.append(block)
            continue
        lines = b"".join([*pending, block[:cut]]).split(b"\n")
        pending = [block[cut + 1 :]]
        for index in itertools.compress(range(len(lines)), map(bytes.strip, lines)):
            yield number + index + 1, lines[index]
        number += len(lines)
    last = b"".join(pending)
    if last.strip():
        yield number + 1, last


def _line_problem(raw: bytes) -> str | None:
    try:
        value = jsonsafe.parse(raw)
    except jsonsafe.JSONProblem as problem:
        return str(problem)
    if value is None:
        return "is null, not an object"
    if not isinstance(value, dict):
        return f"is a JSON {_KINDS.get(type(value), 'value')}, not an object"
    return None
