"""Operator-facing validation problems: one sentence each, naming the file and the field."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError


@dataclass(frozen=True, order=True)
class Problem:
    """One thing wrong in one file, with what to do about it."""

    file: str
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}: {self.field}: {self.message}"


class CatalogError(Exception):
    """Raised with every problem found, so an operator fixes them all in one pass."""

    def __init__(self, problems: Iterable[Problem]) -> None:
        self.problems = sorted(set(problems))
        super().__init__("\n".join(str(p) for p in self.problems))


def display_path(path: Path, root: Path) -> str:
    """The path as an operator would type it from the repository root."""
    try:
        return str(path.resolve().relative_to(root.resolve()))
    except ValueError:
        return str(path)


def problems_from_validation(
    error: ValidationError, file: str, valid_fields: dict[str, list[str]]
) -> list[Problem]:
    """Turn pydantic's errors into one-line problems.

    ``valid_fields`` maps a dotted parent ("" for the top level) to the field names it
    accepts, so an unknown field's message can list the right ones.
    """
    problems = []
    for err in error.errors():
        loc = [str(part) for part in err["loc"]]
        field = ".".join(loc) or "(top level)"
        kind = err["type"]
        if kind == "extra_forbidden":
            parent = ".".join(loc[:-1])
            known = ", ".join(valid_fields.get(parent, []))
            message = f"unknown field; valid fields here are: {known}"
        elif kind == "missing":
            message = "required field is missing; add it"
        elif kind == "literal_error":
            message = f"must be {err.get('ctx', {}).get('expected', 'one of the listed values')}"
            message += f" (got {err['input']!r})"
        else:
            message = err["msg"].removeprefix("Value error, ")
            if kind not in ("value_error", "assertion_error") and "input" in err:
                message += f" (got {err['input']!r})"
        problems.append(Problem(file, field, message))
    return problems
