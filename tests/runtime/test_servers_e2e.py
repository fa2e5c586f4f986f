"""The runtime against real vLLM and Infinity servers (started once per session, shared)."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import node_runtime
import pytest
from node_runtime import ServerSpec, ServerStartError, procs
from node_runtime.server_files import ServerPaths, read_state

from tests.otlp_receiver import OTLPReceiver, ReceivedSpan
from tests.waiting import wait_until

from .conftest import chat, processes_mentioning
from .local_backends import Spec, infinity_spec, vllm_spec
from .test_units import run_serialized_serve

# Tests start vLLM and Infinity servers (cold calls wait up to 600 s on a loaded machine).
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def _state(spec: Spec) -> Any:
    return read_state(ServerPaths.for_model(spec["state_dir"], spec["name"]))


def test_16_concurrent_first_calls_start_exactly_one_server(
    chat_first_calls: list[dict[str, Any]],
) -> None:
    assert [e["status"] for e in chat_first_calls] == [200] * 16
    assert sorted(e["server"] for e in chat_first_calls) == ["reused"] * 15 + ["started"]
    assert {e["runtime_version"] for e in chat_first_calls} == {node_runtime.__version__}
    for envelope in chat_first_calls:
        assert envelope["body"]["usage"]["completion_tokens"] == 4


def test_chat_is_deterministic_at_temperature_zero(
    chat_spec: Spec, chat_first_calls: list[dict[str, Any]]
) -> None:
    one = node_runtime.handle(chat_spec, chat("tiny-chat", "same prompt", max_tokens=8))
    two = node_runtime.handle(chat_spec, chat("tiny-chat", "same prompt", max_tokens=8))
    assert one["server"] == two["server"] == "reused"
    assert one["body"]["choices"][0]["message"] == two["body"]["choices"][0]["message"]
    assert one["body"]["usage"]["completion_tokens"] == 8
    assert one["timings"]["start_wait_s"] < 1.0


def test_completions_and_models(chat_spec: Spec, chat_first_calls: list[dict[str, Any]]) -> None:
    body = {"model": "tiny-chat", "prompt": ["a", "b c"], "max_tokens": 3}
    done = node_runtime.handle(
        chat_spec, {"method": "POST", "path": "/v1/completions", "body": body}
    )
    assert done["status"] == 200
    assert len(done["body"]["choices"]) == 2
    models = node_runtime.handle(chat_spec, {"method": "GET", "path": "/v1/models", "body": None})
    assert [m["id"] for m in models["body"]["data"]] == ["tiny-chat"]


def test_vllms_own_span_joins_the_routers_trace_under_the_nodes(
    chat_spec: Spec, chat_first_calls: list[dict[str, Any]], vllm_traces: OTLPReceiver
) -> None:
    """With vLLM's tracing on, a traced request is one trace: the router's span, the
    node's beneath it, and vLLM's own beneath the node's (from the traceparent it was sent)."""
    trace_id, router_span = os.urandom(16).hex(), os.urandom(8).hex()
    asked = {
        "traceparent": f"00-{trace_id}-{router_span}-01",
        "export_to": f"{vllm_traces.url}/v1/traces",
    }
    prompt = "a prompt no span may carry"
    request = {**chat(chat_spec["name"], prompt), "trace": asked}
    assert node_runtime.handle(chat_spec, request)["status"] == 200

    def by_service() -> dict[str, ReceivedSpan] | None:
        spans = {s.service: s for s in vllm_traces.traces().get(trace_id, [])}
        return spans if {"inference-node", "vllm"} <= set(spans) else None

    spans = wait_until(by_service, lambda: f"vLLM's span in {vllm_traces.traces()}", 30)
    node, vllm = spans["inference-node"], spans["vllm"]
    assert (node.name, node.parent_id) == ("node.task", router_span)
    assert (vllm.name, vllm.parent_id) == ("llm_request", node.span_id)
    assert vllm.attributes["gen_ai.usage.prompt_tokens"] > 0
    assert prompt not in json.dumps([node.attributes, vllm.attributes], default=str)


def test_backend_errors_keep_status_and_openai_body(
    chat_spec: Spec, chat_first_calls: list[dict[str, Any]]
) -> None:
    body = {"model": "tiny-chat", "prompt": "hello " * 400, "max_tokens": 4}
    envelope = node_runtime.handle(
        chat_spec, {"method": "POST", "path": "/v1/completions", "body": body}
    )
    assert envelope["status"] == 400
    assert "maximum context length is 256" in envelope["body"]["error"]["message"]
    # a text model given an image: vLLM itself answers, so the content reached it
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
    vision = node_runtime.handle(
        chat_spec, chat("tiny-chat", [{"type": "text", "text": "what?"}, image])
    )
    assert vision["status"] == 400
    assert "not a multimodal model" in vision["body"]["error"]["message"]


def test_serialized_entry_point_in_an_isolated_interpreter(
    chat_spec: Spec, chat_first_calls: list[dict[str, Any]], tmp_path: Path
) -> None:
    result = run_serialized_serve(node_runtime.__version__, chat_spec, chat("tiny-chat"), tmp_path)
    assert result.returncode == 0, result.stderr
    envelope = json.loads(result.stdout)
    assert (envelope["status"], envelope["server"]) == (200, "reused")


def test_embeddings_agree_between_infinity_and_vllm_pooling(
    embed_specs: tuple[Spec, Spec],
) -> None:
    texts = ["hello world", "The quick brown fox jumps over the lazy dog.", "Sophia at ALCF"]
    vectors = []
    for spec in embed_specs:
        request = {
            "method": "POST",
            "path": "/v1/embeddings",
            "body": {"model": spec["name"], "input": texts},
        }
        envelope = node_runtime.handle(spec, request)
        assert envelope["status"] == 200, envelope
        vectors.append([d["embedding"] for d in envelope["body"]["data"]])
    infinity, pooling = vectors
    for a, b in zip(infinity, pooling, strict=True):
        assert len(a) == len(b) == 384
        assert math.isclose(sum(x * x for x in a), 1.0, abs_tol=1e-4)
        assert max(abs(x - y) for x, y in zip(a, b, strict=True)) < 1e-4


def test_a_changed_spec_restarts_the_server(embed_specs: tuple[Spec, Spec]) -> None:
    spec = embed_specs[0]
    request = {
        "method": "POST",
        "path": "/v1/embeddings",
        "body": {"model": spec["name"], "input": ["x"]},
    }
    before = node_runtime.handle(spec, request)
    old = _state(spec)
    changed = {**spec, "args": [*spec["args"], "--batch-size", "8"]}
    after = node_runtime.handle(changed, request)
    assert (before["status"], after["status"]) == (200, 200)
    assert after["server"] == "started"
    assert procs.group_members(old.pgid) == []
    assert node_runtime.handle(changed, request)["server"] == "reused"
    # timeouts are not part of the process: updated in place, no restart
    longer = {**changed, "idle_timeout_s": 1800}
    assert node_runtime.handle(longer, request)["server"] == "reused"
    assert _state(spec).idle_timeout_s == 1800


def test_a_dead_watchdog_is_replaced_on_the_next_call(
    chat_spec: Spec, chat_first_calls: list[dict[str, Any]]
) -> None:
    old = _state(chat_spec)
    os.kill(old.watchdog_pid, signal.SIGKILL)
    wait_until(
        lambda: not procs.is_alive(old.watchdog_pid, old.watchdog_ticks),
        "the killed watchdog's exit",
    )
    assert node_runtime.handle(chat_spec, chat("tiny-chat"))["server"] == "reused"
    new = _state(chat_spec)
    assert new.watchdog_pid != old.watchdog_pid
    assert procs.is_alive(new.watchdog_pid, new.watchdog_ticks)


def test_a_server_does_not_outlive_its_callers_parent(state_dir: Path, tmp_path: Path) -> None:
    # The caller's parent stands for the Parsl manager of the scheduler job. (The `exit`
    # keeps a shell from exec'ing python, which would make pytest the parent.)
    spec = infinity_spec("minilm-orphan", state_dir, idle_timeout_s=20)
    request = {
        "method": "POST",
        "path": "/v1/embeddings",
        "body": {"model": "minilm-orphan", "input": ["x"]},
    }
    code = f"import node_runtime; node_runtime.handle({spec!r}, {request!r})"
    manager = subprocess.run(
        ["sh", "-c", f'"{sys.executable}" -I -c "$CODE"; exit $?'],
        env={**os.environ, "CODE": code},
        cwd=tmp_path,
        timeout=120,
        check=True,
    )
    assert manager.returncode == 0
    deadline = time.monotonic() + 10  # well inside the 20 s idle timeout
    while _state(spec) is not None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _state(spec) is None
    events = ServerPaths.for_model(str(state_dir), "minilm-orphan").root / "events.log"
    assert "every caller's parent" in events.read_text()
    assert processes_mentioning("--served-model-name minilm-orphan ") == []


def test_sigkill_between_calls_restarts_and_leaves_no_orphan(
    chat_spec: Spec, chat_first_calls: list[dict[str, Any]]
) -> None:
    old = _state(chat_spec)
    assert len(procs.group_members(old.pgid)) >= 2  # the API server and its EngineCore
    os.kill(old.pid, signal.SIGKILL)
    wait_until(lambda: not procs.is_alive(old.pid, old.pid_ticks), "the killed server's exit")
    envelope = node_runtime.handle(chat_spec, chat("tiny-chat"))
    assert (envelope["status"], envelope["server"]) == (200, "started")
    assert procs.group_members(old.pgid) == []  # the orphaned EngineCore was stopped too
    assert _state(chat_spec).pid != old.pid


def test_idle_server_is_stopped_but_a_long_request_is_not_cut(state_dir: Path) -> None:
    idle_s = 2.0
    spec = infinity_spec("minilm-idle", state_dir, idle_timeout_s=idle_s)
    first = node_runtime.handle(
        spec,
        {
            "method": "POST",
            "path": "/v1/embeddings",
            "body": {"model": "minilm-idle", "input": ["x"]},
        },
    )
    assert first["server"] == "started"
    state = _state(spec)
    count = 16
    while True:  # a request that outlasts the idle timeout, sized to this machine
        long = node_runtime.handle(
            spec,
            {
                "method": "POST",
                "path": "/v1/embeddings",
                "body": {"model": "minilm-idle", "input": ["word " * 200] * count},
            },
        )
        assert (long["status"], long["server"]) == (200, "reused")
        if long["timings"]["latency_s"] > 1.5 * idle_s or count >= 512:
            break
        count *= 4
    assert long["timings"]["latency_s"] > 1.5 * idle_s
    deadline = time.monotonic() + idle_s + 10
    while _state(spec) is not None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _state(spec) is None
    assert procs.group_members(state.pgid) == []
    assert procs.port_is_free(state.port)
    # the watchdog removed the state under the lock and then exits; give its interpreter
    # a moment to shut down on a loaded machine
    deadline = time.monotonic() + 10
    while procs.is_alive(state.watchdog_pid, state.watchdog_ticks) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not procs.is_alive(state.watchdog_pid, state.watchdog_ticks)


def test_a_folder_without_a_model_fails_with_the_log_tail(state_dir: Path, tmp_path: Path) -> None:
    empty = tmp_path / "not-a-model"
    empty.mkdir()
    spec = infinity_spec("broken-weights", state_dir, weights=str(empty), start_timeout_s=60)
    began = time.monotonic()
    with pytest.raises(ServerStartError) as caught:
        node_runtime.handle(spec, chat("broken-weights"))
    assert time.monotonic() - began < 60 + 15
    message = str(caught.value)
    assert "model 'broken-weights' (infinity)" in message
    assert "the server exited while starting" in message
    assert "Last lines of" in message and "not-a-model" in message
    assert processes_mentioning(str(empty)) == []
    assert _state(spec) is None


def test_a_start_past_its_timeout_is_killed_with_its_group(state_dir: Path) -> None:
    spec = vllm_spec("too-slow", state_dir, start_timeout_s=3, stop_grace_s=2)
    began = time.monotonic()
    with pytest.raises(ServerStartError, match="not ready within start_timeout_s=3"):
        node_runtime.ensure_server(ServerSpec.from_dict(spec))
    assert time.monotonic() - began < 3 + 2 + 5 + 2
    assert processes_mentioning("--served-model-name too-slow ") == []
    assert _state(spec) is None
