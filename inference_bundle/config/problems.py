"""Operator-facing validation problems: one sentence each, naming the file and the field."""

from __future__ import annotations

import types
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo


@dataclass(frozen=True, order=True)
class Problem:
    """One thing wrong in one file, with what to do about it."""

    file: str
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}: {self.field}: {self.message}"


class ConfigError(Exception):
    """Raised with every problem found, so an operator fixes them all in one pass."""

    def __init__(self, problems: Iterable[Problem]) -> None:
        self.problems = sorted(set(problems))
        super().__init__("\n".join(str(p) for p in self.problems))


class CatalogError(ConfigError):
    """The catalog (endpoint files), a cluster profile, or what renders from them is wrong."""


class SettingsError(ConfigError):
    """A router settings file (config/router/<deployment>.yaml) is wrong."""


class RegistryError(ConfigError):
    """A cluster's registry (config/registry/<cluster>.yaml) is missing or wrong."""


def display_path(path: Path, root: Path) -> str:
    """The path as an operator would type it from the repository root."""
    try:
        return str(path.resolve().relative_to(root.resolve()))
    except ValueError:
        return str(path)


def one_of(values: Sequence[str]) -> str:
    """Quoted values as pydantic lists a Literal's: 'a', 'b' or 'c'."""
    quoted = [repr(v) for v in values]
    return quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " or " + quoted[-1]


def problems_from_validation(error: ValidationError, file: str, schema: Any) -> list[Problem]:
    """Turn pydantic's errors into one-line problems naming the field as the operator wrote it.

    ``schema`` is what was validated: a model class, or a discriminated union of models.
    A union's tag never shows in the field (pydantic puts it in the error's location), an
    unknown field's message lists the fields valid in its model, and a model's
    ``missing_sentence`` replaces the generic one for its required fields.
    """
    problems = []
    for err in error.errors():
        where = _locate(schema, err["loc"])
        field = ".".join(where.shown) or "(top level)"
        kind = err["type"]
        if kind in ("union_tag_invalid", "union_tag_not_found") and where.union is not None:
            tag_field = ".".join([*where.shown, where.union.discriminator])
            if kind == "union_tag_not_found":
                message = "required field is missing; add it"
            else:
                got = err["input"].get(where.union.discriminator)
                message = f"must be {one_of(list(where.union.members))} (got {got!r})"
            problems.append(Problem(file, tag_field, message))
            continue
        if kind == "extra_forbidden":
            # A field's YAML name is its alias where it has one (``from``, a Python keyword).
            fields = where.holder.model_fields.items() if where.holder else []
            known = ", ".join(sorted(info.alias or name for name, info in fields))
            message = f"unknown field; valid fields here are: {known}"
        elif (sentence := _missing_sentence(where, err)) is not None:
            message = sentence
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


def _missing_sentence(where: _Located, err: Any) -> str | None:
    """The holder's own sentence for a required field left out, empty or null."""
    sentence = getattr(where.holder, "missing_sentence", None)
    if where.holder is None or not where.shown or not isinstance(sentence, str):
        return None
    info = where.holder.model_fields.get(where.shown[-1])
    unset = err["type"] == "missing" or err.get("input") in (None, "")
    return sentence if info is not None and info.is_required() and unset else None


@dataclass(frozen=True)
class _Union:
    """A discriminated union: the field that tags it and its members by tag."""

    discriminator: str
    members: dict[str, type[BaseModel]]


@dataclass
class _Located:
    """Where an error's location points: the field path shown, its model, a pending union."""

    shown: list[str] = field(default_factory=list)
    holder: type[BaseModel] | None = None
    union: _Union | None = None


def _locate(schema: Any, loc: Sequence[int | str]) -> _Located:
    """Follow pydantic's location through ``schema``, dropping the tags of unions."""
    where = _Located()
    annotation, where.union = _unwrap(schema, None)
    for part in map(str, loc):
        if where.union is not None:
            annotation, where.union = where.union.members.get(part), None
            continue
        model = _model_of(annotation)
        where.shown.append(part)
        where.holder = model
        if model is not None and part in model.model_fields:
            info = model.model_fields[part]
            annotation, where.union = _unwrap(info.annotation, info.discriminator)
        elif model is not None:
            annotation = None
        else:  # a key of a mapping or an index of a list
            annotation = _item_type(annotation)
    return where


def _unwrap(annotation: Any, discriminator: Any) -> tuple[Any, _Union | None]:
    """The annotation without ``Annotated``, and the union it is when a discriminator tags it."""
    if get_origin(annotation) is Annotated:
        annotation, *extras = get_args(annotation)
        for extra in extras:
            if isinstance(extra, FieldInfo) and extra.discriminator is not None:
                discriminator = extra.discriminator
    if not isinstance(discriminator, str):
        return annotation, None
    members = {
        tag: member
        for member in get_args(annotation)
        for tag in get_args(member.model_fields[discriminator].annotation)
    }
    return annotation, _Union(discriminator, members)


def _without_none(annotation: Any) -> list[Any]:
    if get_origin(annotation) in (Union, types.UnionType):
        return [a for a in get_args(annotation) if a is not type(None)]
    return [annotation]


def _model_of(annotation: Any) -> type[BaseModel] | None:
    """The model an annotation holds: itself, or the one model of an optional."""
    models = [
        a for a in _without_none(annotation) if isinstance(a, type) and issubclass(a, BaseModel)
    ]
    return models[0] if len(models) == 1 else None


def _item_type(annotation: Any) -> Any:
    """The value type of a mapping or list annotation; None for anything else."""
    for candidate in _without_none(annotation):
        if get_origin(candidate) in (dict, list):
            return get_args(candidate)[-1]
    return None
