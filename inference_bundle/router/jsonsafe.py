"""JSON from users, read so that no input ends in a 500: UTF-8, bounded nesting, real text.

Python's json takes a lone UTF-16 surrogate escape ("\\ud800") as text, but such a string
cannot be encoded as UTF-8: answering or storing it fails later, far from the request. It
also recurses once per nesting level, so a deep body raises RecursionError wherever it is
walked again. Both are refused here, where the body is read, with what is wrong and where.
"""

from __future__ import annotations

import json
import re
from typing import Any

# Far deeper than any OpenAI body (a JSON schema in response_format included), far under
# Python's recursion limit, so a value that passes can be encoded again anywhere.
MAX_DEPTH = 128
# A \uD800-\uDBFF escape not followed by a low one, or a \uDC00-\uDFFF escape not after a
# high one. Found escapes are confirmed on the parsed value (an escaped backslash matches
# too), so the scan over the raw text only decides whether to look.
_LONE_ESCAPE = re.compile(
    rb"\\u[dD][89abAB][0-9a-fA-F]{2}(?!\\u[dD][c-fC-F][0-9a-fA-F]{2})"
    rb"|(?<!\\u[dD][89abAB][0-9a-fA-F]{2})\\u[dD][c-fC-F][0-9a-fA-F]{2}"
)


_TOO_DEEP = f"is nested too deeply (more than {MAX_DEPTH} levels)"


class JSONProblem(ValueError):
    """Why a JSON text cannot be taken, as the end of a sentence (``is not valid JSON``)."""


def parse(raw: bytes) -> Any:
    """The JSON value of UTF-8 ``raw``, or JSONProblem saying what is wrong and where."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise JSONProblem(
            f"is not UTF-8 text (byte 0x{raw[err.start]:02x} at offset {err.start})"
        ) from None
    try:
        value = json.loads(text)
    except RecursionError:
        raise JSONProblem(_TOO_DEEP) from None
    except ValueError as err:
        raise JSONProblem(f"is not valid JSON: {err}") from None
    check_value(value, raw)
    return value


def check_value(value: Any, raw: bytes | None = None) -> None:
    """JSONProblem if ``value`` is nested too deeply or holds a lone surrogate."""
    # Each opening bracket adds at most one level: a body with few is shallow, so the walk
    # is paid only by bodies with many (long token arrays, deep documents).
    bracketed = raw is None or raw.count(b"[") + raw.count(b"{") > MAX_DEPTH
    if bracketed and _too_deep(value):
        raise JSONProblem(_TOO_DEEP)
    if raw is None or _LONE_ESCAPE.search(raw):
        where = lone_surrogate(value)
        if where is not None:
            raise JSONProblem(
                f"has a lone UTF-16 surrogate (an unpaired \\ud800-\\udfff escape) in {where}; "
                "send valid Unicode text"
            )


def text_problem(text: str) -> str | None:
    """Why ``text`` cannot be stored or answered (a lone surrogate), or None."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        return f"has a lone UTF-16 surrogate at character {err.start}"
    return None


def lone_surrogate(value: Any) -> str | None:
    """Where in ``value`` a string (or key) is not valid Unicode text, or None."""
    stack: list[tuple[Any, str]] = [(value, "")]
    while stack:
        item, where = stack.pop()
        if isinstance(item, str):
            if text_problem(item) is not None:
                return where or "the value"
        elif isinstance(item, dict):
            for key, child in item.items():
                if text_problem(key) is not None:
                    return f"a key of {where or 'the object'}"
                stack.append((child, f"{where}.{key}" if where else key))
        elif isinstance(item, list):
            stack.extend((child, f"{where}[{i}]") for i, child in enumerate(item))
    return None


def _too_deep(value: Any) -> bool:
    stack: list[tuple[Any, int]] = [(value, 1)] if isinstance(value, dict | list) else []
    while stack:
        item, depth = stack.pop()
        if depth > MAX_DEPTH:
            return True
        children = item.values() if isinstance(item, dict) else item
        stack.extend((c, depth + 1) for c in children if isinstance(c, dict | list))
    return False
