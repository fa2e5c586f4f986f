"""Fixtures for the node runtime's tests: real vLLM and Infinity servers, started once.

The backends come from `make backends` (.venvs/vllm, .venvs/infinity, .state/models).
Each server is started once per session and stopped at its end, leaving no process behind.
"""

from __future__ import annotations

import concurrent.futures
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import node_runtime
import pytest
from node_runtime import procs
from node_runtime.server_files import ServerPaths
from node_runtime.spec import ServerSpec

from tests.otlp_receiver import OTLPReceiver, otlp_receiver
from tests.waiting import wait_until

from .local_backends import (
    Spec,
    infinity_spec,
    vllm_spec,
)


def chat(model: str, content: Any = "hello", **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": content}]}
    body.update({"max_tokens": 4, "temperature": 0.0, **extra})
    return {"method": "POST", "path": "/v1/chat/completions", "body": body}


def processes_mentioning(text: str) -> list[int]:
    """PIDs of live processes whose command line contains text."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = Path(entry.path, "cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if text.encode() in cmdline and procs.is_alive(int(entry.name)):
            found.append(int(entry.name))
    return found


@pytest.fixture(scope="session")
def state_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("node-state")


def stop_checked(spec: Spec) -> None:
    """Stop the spec's server and check that none of its processes is left."""
    node_runtime.stop_server(node_runtime.ServerSpec.from_dict(spec))
    root = ServerPaths.for_model(spec["state_dir"], spec["name"]).root

    def leftovers() -> list[int]:
        named = processes_mentioning(f"--served-model-name {spec['name']} ")
        return named + processes_mentioning(str(root))

    # The watchdog exits a moment after its SIGTERM.
    wait_until(
        lambda: not leftovers(),
        lambda: f"the exit of {spec['name']}'s processes (left: {leftovers()})",
    )


@pytest.fixture(scope="session")
def vllm_traces() -> Iterator[OTLPReceiver]:
    """The collector the shared chat server's own spans go to (vLLM's tracing is on)."""
    with otlp_receiver() as running:
        yield running


@pytest.fixture(scope="session")
def chat_spec(state_dir: Path, vllm_traces: OTLPReceiver) -> Iterator[Spec]:
    """The shared tiny chat server, with vLLM's own tracing on, as an operator turns it on
    (README, "Traces"); its spans are sent every 0.2 s instead of every 5."""
    spec = vllm_spec("tiny-chat", state_dir)
    spec["args"] += ["--otlp-traces-endpoint", f"{vllm_traces.url}/v1/traces"]
    spec["env"].update(
        {
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf",
            "OTEL_SERVICE_NAME": "vllm",
            "OTEL_BSP_SCHEDULE_DELAY": "200",
        }
    )
    yield spec
    stop_checked(spec)


@pytest.fixture(scope="session")
def chat_first_calls(chat_spec: Spec) -> list[dict[str, Any]]:
    """The envelopes of 16 concurrent first calls for the cold chat model."""
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        futures = [
            pool.submit(node_runtime.handle, chat_spec, chat(chat_spec["name"], f"hi {i}"))
            for i in range(16)
        ]
        return [f.result(timeout=600) for f in futures]


@pytest.fixture(scope="session")
def embed_specs(state_dir: Path) -> Iterator[tuple[Spec, Spec]]:
    """MiniLM served by Infinity and by vLLM's pooling runner (started on first use)."""
    specs = (
        infinity_spec("minilm-infinity", state_dir),
        vllm_spec("minilm-vllm", state_dir, task="embed"),
    )
    yield specs
    for spec in specs:
        stop_checked(spec)


@pytest.fixture
def node_tmp(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The node's temp folder, this test's alone (here and in the watchdogs it starts)."""
    folder = Path(tempfile.mkdtemp(prefix="rtf-", dir="/tmp"))
    monkeypatch.setenv("TMPDIR", str(folder))
    monkeypatch.setattr(tempfile, "tempdir", None)  # gettempdir() reads TMPDIR again
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def started(node_tmp: Path) -> Iterator[list[Spec]]:
    """The specs of the servers a test started: stopped after it, if they still run."""
    specs: list[Spec] = []
    yield specs
    for spec in specs:
        node_runtime.stop_server(ServerSpec.from_dict(spec))
