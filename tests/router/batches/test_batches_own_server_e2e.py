"""A batch's own vLLM server, on the local cluster: a real router, real batch jobs, real vLLM.

The tests run in order over the session's shared router (tests/conftest.py
``batch_router``): chat traffic and a batch with an alias in its lines; a batch whose server
is SIGKILLed mid-file; then the batch's job ends, and the interactive server (same process)
answers at once. The batch job and server may be warm from another batch module: named to
run after them (test_batch_safety_e2e.py, test_batches_e2e.py), it ends that job last.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from node_runtime import procs
from node_runtime.server_files import ServerPaths, ServerState, read_state

from inference_bundle.config.catalog import load_catalog
from inference_bundle.rendering.specs import server_spec
from tests.e2e_router import TINY, RunningRouter

# Two cold vLLM starts, a restart, and the batch job's idle end (30 s + the watchdog's round).
pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]
ALIAS = "local/tiny-llama-previous"  # endpoints/local/tiny-chat.yaml
COLD_S = 600


@pytest.fixture(scope="module")
def root(e2e_root: Path) -> Path:
    return e2e_root


@pytest.fixture(scope="module")
def router(batch_router: RunningRouter) -> RunningRouter:
    return batch_router


@pytest.fixture(scope="module")
def servers(root: Path) -> Callable[[str], ServerState | None]:
    """The tiny model's recorded server of a role on this host (None when none runs)."""
    catalog = load_catalog(root, "local")
    entry = next(e for e in catalog.entries if e.endpoint.name == TINY)
    state_dir = server_spec(entry, catalog.profile).state_dir
    return lambda role: read_state(ServerPaths.for_model(state_dir, TINY, role))


@pytest.fixture(scope="module")
def interactive(router: RunningRouter, servers: Callable[[str], ServerState | None]) -> ServerState:
    """The interactive server after some chat traffic through the router."""
    client = router.client()
    for n in range(3):
        answer = client.chat.completions.create(
            model=TINY, messages=[{"role": "user", "content": f"hi {n}"}], max_tokens=4
        )
        assert answer.choices[0].message.role == "assistant"
    state = servers("interactive")
    assert state is not None
    return state


def _line(n: int, model: str = TINY) -> dict[str, Any]:
    body = {"model": model, "messages": [{"role": "user", "content": f"hi {n}"}]}
    return {
        "custom_id": f"req-{n}",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {**body, "max_tokens": 4, "temperature": 0},
    }


def _submit(router: RunningRouter, lines: list[dict[str, Any]]) -> str:
    client = router.client("/v1")
    data = "".join(json.dumps(line) + "\n" for line in lines).encode()
    uploaded = client.files.create(file=("lines.jsonl", data), purpose="batch")
    batch = client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    return str(batch.id)


def _wait(router: RunningRouter, batch_id: str, done: Callable[[Any], bool], limit_s: float) -> Any:
    client = router.client("/v1")
    deadline = time.monotonic() + limit_s
    while not done(batch := client.batches.retrieve(batch_id)):
        assert time.monotonic() < deadline, batch
        time.sleep(0.5)
    return batch


def _results(router: RunningRouter, file_id: str | None) -> list[dict[str, Any]]:
    if file_id is None:
        return []
    text = router.client("/v1").files.content(file_id).text
    return [json.loads(raw) for raw in text.splitlines() if raw.strip()]


def _finished(batch: Any) -> bool:
    return bool(batch.status in ("completed", "failed", "cancelled"))


def test_a_batch_runs_on_its_own_server_and_answers_under_the_alias_asked_for(
    router: RunningRouter, interactive: ServerState, servers: Callable[[str], Any]
) -> None:
    lines = [_line(n, ALIAS if n % 2 else TINY) for n in range(20)]
    batch = _wait(router, _submit(router, lines), _finished, COLD_S)
    assert batch.status == "completed", batch
    answers = {a["custom_id"]: a["response"] for a in _results(router, batch.output_file_id)}
    assert sorted(answers) == sorted(line["custom_id"] for line in lines)
    for line in lines:
        response = answers[line["custom_id"]]
        assert response["status_code"] == 200, response
        assert response["body"]["model"] == line["body"]["model"]
    assert _results(router, batch.error_file_id) == []

    own = servers("batch")
    assert own is not None and own.role == "batch"
    assert own.pid != interactive.pid and own.port != interactive.port
    assert servers("interactive").pid == interactive.pid


def test_a_batch_whose_server_is_killed_mid_file_answers_every_line_once(
    router: RunningRouter, interactive: ServerState, servers: Callable[[str], Any]
) -> None:
    total = 400
    batch_id = _submit(router, [_line(n) for n in range(total)])
    began = _wait(
        router, batch_id, lambda b: _finished(b) or b.request_counts.completed >= 40, COLD_S
    )
    assert began.status == "in_progress", "the batch ended before its server could be killed"
    killed = servers("batch")
    assert killed is not None
    os.kill(killed.pid, signal.SIGKILL)
    at_kill = router.client("/v1").batches.retrieve(batch_id).request_counts.completed
    assert at_kill < total, "nothing left to answer after the kill"

    batch = _wait(router, batch_id, _finished, COLD_S)
    assert batch.status == "completed", batch
    ids = [a["custom_id"] for a in _results(router, batch.output_file_id)]
    assert len(ids) == len(set(ids)) == total
    assert set(ids) == {f"req-{n}" for n in range(total)}
    assert _results(router, batch.error_file_id) == []
    assert (batch.request_counts.completed, batch.request_counts.failed) == (total, 0)
    again = servers("batch")
    assert again is not None and again.pid != killed.pid  # started again, same folder
    assert not procs.is_alive(killed.pid, killed.pid_ticks)
    assert servers("interactive").pid == interactive.pid


def test_the_batch_jobs_end_leaves_the_interactive_server_warm(
    router: RunningRouter, interactive: ServerState, servers: Callable[[str], Any]
) -> None:
    # The batch twin's block ends once idle (batch_idle_timeout_s: the shared root's
    # BATCH_IDLE_S, 30 s); the batch server's watchdog then finds every anchor gone (a round
    # is at most 30 s).
    deadline = time.monotonic() + 300
    while servers("batch") is not None:
        assert time.monotonic() < deadline, "the batch server outlived its job"
        time.sleep(1)
    now = servers("interactive")
    assert now is not None and now.pid == interactive.pid
    assert procs.is_alive(interactive.pid, interactive.pid_ticks)
    began = time.monotonic()
    answer = router.client().chat.completions.create(
        model=TINY, messages=[{"role": "user", "content": "still there?"}], max_tokens=4
    )
    took = time.monotonic() - began
    assert answer.choices[0].message.role == "assistant"
    assert took < 10, f"the chat request took {took:.1f} s: a cold start?"
    assert servers("interactive").pid == interactive.pid
