"""A model due warm is started by the real router without any request (the local engine,
real vLLM): its schedule covers every hour of every day, so it is due as the router starts.

A router of its own, over a scratch root whose tiny model has the schedule; one vLLM start,
stopped at the end.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.e2e_router import (
    TINY,
    RunningRouter,
    scratch_root,
    start_router,
    stop_router,
    stop_servers,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
ALWAYS = '\nkeep_warm:\n  - {from: "00:00", to: "24:00"}\n'
READY_WITHIN_S = 600


@pytest.fixture(scope="module")
def warm_router(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningRouter]:
    root = scratch_root(tmp_path_factory.mktemp("warm-schedule"))
    endpoint = root / "endpoints" / "local" / "tiny-chat.yaml"
    endpoint.write_text(endpoint.read_text() + ALWAYS)
    router = start_router(root, "warm", wait_s=300)
    try:
        yield router
    finally:
        stop_router(router)
        stop_servers(root)


def tiny_entry(router: RunningRouter) -> dict[str, Any]:
    listed = httpx.get(
        router.url + "/resource_server/list-endpoints",
        headers={"Authorization": f"Bearer {router.key}"},
        timeout=30,
    )
    listed.raise_for_status()
    models = listed.json()["clusters"]["local"]["frameworks"]["vllm"]["models"]
    [tiny] = [m for m in models if m["id"] == TINY]
    return dict(tiny)


def test_a_model_due_warm_starts_without_a_request(warm_router: RunningRouter) -> None:
    deadline = time.monotonic() + READY_WITHIN_S
    seen = []
    while time.monotonic() < deadline:
        tiny = tiny_entry(warm_router)
        seen.append(tiny["state"])
        if tiny["state"] == "ready" and tiny["connected_servers"]:
            break
        time.sleep(2)
    else:
        log = warm_router.log.read_text() if warm_router.log else ""
        raise AssertionError(f"not warm after {READY_WITHIN_S} s: states {seen[-5:]}\n{log}")
    assert "queued" in seen or "starting" in seen  # the router started it, while we watched
    assert warm_router.log is not None
    log = warm_router.log.read_text()
    assert "starting local-tiny-chat for its keep_warm window" in log
    # Nobody sent a request: the router's access log holds only the listings polled here.
    assert "chat/completions" not in log
    # The model the schedule started answers at once, down its server's connection.
    began = time.monotonic()
    answer = warm_router.client().chat.completions.create(
        model=TINY, messages=[{"role": "user", "content": "hi"}], max_tokens=2
    )
    assert answer.usage is not None and answer.usage.completion_tokens >= 1
    assert time.monotonic() - began < 60
    # The access log names requests: the check above could have seen one.
    for _ in range(50):
        if "chat/completions" in warm_router.log.read_text():
            break
        time.sleep(0.1)
    else:
        raise AssertionError("the access log never named the request")
