"""An endpoint's request_timeout_s, written in its YAML, bounds its requests end to end: real
router, real vLLM.

The module has a scratch root of its own whose tiny chat model says ``request_timeout_s: 1``
(and takes 512 tokens of context, its weights' most), and a router of its own over it. The
tiny model writes a token in about a millisecond; eight choices of 480 tokens with 20
log-probabilities each took 5 s and more on this 2-core machine (and far more under load,
or as the first such request), so that such an answer cannot come within the bound. Streams
are not bounded once their answer has begun: the module's warm-up is one.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.dataplane_e2e import (
    CHAT,
    access_record,
    metric,
    post,
    server_metrics,
    server_state,
    wait_connected,
)
from tests.e2e_router import (
    TINY,
    RunningRouter,
    scratch_root,
    start_router,
    stop_router,
    stop_servers,
)
from tests.waiting import wait_until

# A cold vLLM on a busy 2-core machine, then a few bounded requests.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
NAME = "bounded"
BOUND_S = 1
SLOW_ANSWER = {
    "model": TINY,
    "messages": [{"role": "user", "content": "Tell me a long story."}],
    "max_tokens": 480,
    "ignore_eos": True,  # vLLM's: no early end
    "n": 8,  # the router's max_n
    "logprobs": True,
    "top_logprobs": 20,
}


@pytest.fixture(scope="module")
def router(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningRouter]:
    root = scratch_root(tmp_path_factory.mktemp("request-timeout"))
    (root / ".state" / "batches").mkdir()  # the profile's batch_input_roots
    tiny = root / "endpoints" / "local" / "tiny-chat.yaml"
    text = tiny.read_text().replace("max_model_len: 256", "max_model_len: 512")
    tiny.write_text(text + f"request_timeout_s: {BOUND_S}\n")
    running = start_router(root, NAME, wait_s=540)
    try:
        yield running
    finally:
        try:
            stop_router(running)
        finally:
            stop_servers(root)


def log_of(router: RunningRouter) -> Path:
    return router.root / ".state" / f"{NAME}.log"


def test_through_a_task_the_node_gives_up_at_the_bound_after_the_start(
    router: RunningRouter,
) -> None:
    """The first request starts the model through a task; the node then bounds the request
    itself (its read of the server's answer) by the spec's request_timeout_s."""
    answer = post(router.url, router.key, CHAT, SLOW_ANSWER)
    answered_at = time.time()
    assert access_record(log_of(router), answer.headers["x-request-id"])["via"] == "task"
    # The node's 504, as the router's over a connection, and its envelope names the server
    # (with its key): the server may dial in at once.
    assert answer.status_code == 504, answer.text
    error = answer.json()["error"]
    assert error["code"] == "timeout" and f"request timeout of {BOUND_S} s" in error["message"]
    # Measured from the server's readiness: the task's own travel and the start before it
    # are no part of the bound.
    asked_s = answered_at - server_state(router.root, TINY).ready_at
    assert BOUND_S <= asked_s < BOUND_S + 10, asked_s
    wait_idle(router)


def test_over_the_connection_the_router_answers_504_at_the_bound(router: RunningRouter) -> None:
    wait_connected(router.url, router.key, TINY)  # the first test's task reported its key
    began = time.monotonic()
    answer = post(router.url, router.key, CHAT, SLOW_ANSWER)
    took = time.monotonic() - began
    # The router's own 504 over the connection, in the same words as the node's.
    assert answer.status_code == 504, answer.text[:300]
    assert BOUND_S <= took < BOUND_S + 5
    error = answer.json()["error"]
    assert (error["code"], error["type"]) == ("timeout", "server_error")
    assert error["message"] == (
        f"The model '{TINY}' did not answer within its request timeout of {BOUND_S} s; "
        "the request was cancelled."
    )
    # Cancelled at vLLM too: it stops generating for the request nobody waits for.
    wait_idle(router, within_s=10)


def wait_idle(router: RunningRouter, within_s: float = 180) -> None:
    """Until vLLM runs no request (one the node gave up on may run to its end)."""
    port = server_state(router.root, TINY).port
    wait_until(
        lambda: metric(server_metrics(port), "vllm:num_requests_running") == 0,
        "vLLM's last request ending",
        timeout_s=within_s,
        every_s=0.1,
    )
