"""The engine executor runs source-serialized functions on a rendered endpoint's engine."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from inference_bundle.config.catalog import load_catalog
from inference_bundle.rendering.render import render_catalog, write_rendered
from inference_bundle.router.executors.base import FunctionFailed
from inference_bundle.router.executors.engine import EngineExecutor

ROOT = Path(__file__).resolve().parents[3]
# The module's engine starts its interchange and a block before the first call (120 s).
pytestmark = pytest.mark.timeout(600)


def where_am_i(label: str) -> dict[str, str]:
    import os  # source-serialized: imports live inside the function

    return {"label": label, "state_dir": os.environ.get("INFERENCE_RUNTIME_STATE_DIR", "")}


def fails() -> None:
    raise ValueError("model weights not found")


@pytest.fixture(scope="module")
def executor(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EngineExecutor]:
    out = tmp_path_factory.mktemp("endpoints")
    catalog = load_catalog(ROOT, "local")
    write_rendered(render_catalog(catalog, ROOT / "templates"), out)
    run = EngineExecutor(out / "local-tiny-chat", tmp_path_factory.mktemp("run"))
    yield run
    run.shutdown()


@pytest.mark.slow
def test_function_runs_on_the_rendered_engine(executor: EngineExecutor) -> None:
    answer = executor.submit(where_am_i, "hello").result(timeout=120)
    assert answer["label"] == "hello"
    # The worker ran the rendered worker_init.
    assert answer["state_dir"] == str(ROOT / ".state" / "runtime")


@pytest.mark.slow
def test_remote_error_comes_back_with_its_message(executor: EngineExecutor) -> None:
    with pytest.raises(FunctionFailed, match="model weights not found"):
        executor.submit(fails).result(timeout=120)
