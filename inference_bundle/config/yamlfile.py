"""Strict YAML loading: syntax errors and duplicate keys become problems, not tracebacks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from inference_bundle.config.problems import CatalogError, ConfigError, Problem


class _StrictLoader(yaml.SafeLoader):
    """A SafeLoader that refuses a key given twice in one mapping (PyYAML keeps the last)."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None,
                None,
                f"key {key!r} appears twice (first on line {seen[key] + 1}); keep one",
                key_node.start_mark,
            )
        seen[key] = key_node.start_mark.line
    return loader.construct_mapping(node)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def load_mapping(
    path: Path, shown_as: str, error: type[ConfigError] = CatalogError
) -> dict[str, Any]:
    """Load one YAML file that must hold a mapping; raise ``error`` naming the file."""
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_StrictLoader)  # noqa: S506
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark
        where = f"line {mark.line + 1}" if mark is not None else "(file)"
        raise error([Problem(shown_as, where, f"invalid YAML: {err.problem}")]) from None
    except (OSError, UnicodeDecodeError) as err:
        raise error([Problem(shown_as, "(file)", f"cannot be read: {err}")]) from None
    if not isinstance(data, dict):
        kind = "empty" if data is None else type(data).__name__
        raise error(
            [Problem(shown_as, "(top level)", f"expected a mapping of fields, found {kind}")]
        )
    return data
