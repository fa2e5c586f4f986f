"""The test tree says which tests are slow: a module whose tests start a model server, an
engine, a scheduler or a second router is marked slow and named *_e2e.py."""

from __future__ import annotations

from pathlib import Path

TESTS = Path(__file__).resolve().parent


def test_slow_modules_are_named_e2e_and_e2e_modules_are_slow() -> None:
    misnamed = []
    for module in sorted(TESTS.rglob("test_*.py")):
        if module == Path(__file__).resolve():
            continue
        slow = "pytest.mark.slow" in module.read_text()
        if slow != module.stem.endswith("_e2e"):
            misnamed.append(str(module.relative_to(TESTS)))
    assert misnamed == []
