"""The node's envelope and the router's parser agree field by field; a bad one is a 502."""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import node_runtime.backend
import node_runtime.proxy
import pytest
from node_runtime.dialout.node_key import make_node_key
from node_runtime.server import ServerHandle

from inference_bundle.config.catalog import load_catalog
from inference_bundle.rendering.specs import server_spec
from inference_bundle.router.node_envelope import (
    Envelope,
    EnvelopeError,
    NodeReport,
    Timings,
)
from tests.router.conftest import ROOT, Harness

CHAT = "/resource_server/local/vllm/v1/chat/completions"
TINY = "local/tiny-llama"
ASK = {"method": "POST", "path": "/v1/chat/completions", "body": {"model": TINY}}
ENSURE = {"method": "GET", "path": "/v1/models", "body": None, "send": False}
# Each way the node's handle() ends, with what its server does (None: it is not reached).
CASES: dict[str, tuple[dict[str, Any], BaseException | None]] = {
    "answered": (ASK, None),
    "ensured only": (ENSURE, None),
    "expired": ({**ASK, "expires_at": 1.0}, None),
    "too slow": (ASK, TimeoutError("timed out")),
    "no answer": (ASK, ConnectionResetError("reset")),
    "a stream refused": ({**ASK, "body": {"model": TINY, "stream": True}}, None),
}


@pytest.fixture
def node(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """The node runtime's real handle() around a server that is up: its key written, its
    answers scripted."""
    make_node_key(tmp_path, "s-1")
    server = ServerHandle(1, "s-1", True, 0.25, str(tmp_path))

    @contextlib.contextmanager
    def use_server(spec: Any) -> Iterator[ServerHandle]:
        yield server

    monkeypatch.setattr(node_runtime.proxy, "use_server", use_server)
    yield


def node_envelope(
    monkeypatch: pytest.MonkeyPatch, request: dict[str, Any], fails: BaseException | None
) -> dict[str, Any]:
    def call(
        port: int, method: str, path: str, body: Any, timeout_s: float, headers: Any = None
    ) -> tuple[int, Any]:
        if fails is not None:
            raise fails
        return 200, {"object": "chat.completion"}

    monkeypatch.setattr(node_runtime.backend, "call", call)
    catalog = load_catalog(ROOT, "local")
    [entry] = [e for e in catalog.entries if e.endpoint.name == TINY]
    return node_runtime.proxy.handle(server_spec(entry, catalog.profile), request)


def wire(envelope: Envelope) -> dict[str, Any]:
    """The typed envelope in the node's shape: a flag at its default and no node are absent,
    as the node writes them."""
    fields = dataclasses.asdict(envelope)
    for name, default in (("sent", True), ("expired", False), ("node", None)):
        if fields[name] == default:
            del fields[name]
    if envelope.node is not None and envelope.node.key is None:
        del fields["node"]["key"]
    return fields


def test_the_parser_reads_every_envelope_the_node_writes_field_by_field(
    node: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    written: dict[str, set[str]] = {"envelope": set(), "timings": set(), "node": set()}
    for name, (request, fails) in CASES.items():
        raw = node_envelope(monkeypatch, request, fails)
        assert wire(Envelope.parse(raw)) == raw, name
        written["envelope"] |= set(raw)
        written["timings"] |= set(raw["timings"])
        written["node"] |= set(raw.get("node", {}))
    # Both ways: no field the router reads that the node never writes.
    assert written == {
        "envelope": {f.name for f in dataclasses.fields(Envelope)},
        "timings": {f.name for f in dataclasses.fields(Timings)},
        "node": {f.name for f in dataclasses.fields(NodeReport)},
    }


def test_what_the_router_reads_of_each_case(node: None, monkeypatch: pytest.MonkeyPatch) -> None:
    read = {name: Envelope.parse(node_envelope(monkeypatch, *case)) for name, case in CASES.items()}
    assert read["answered"].status == 200 and read["answered"].node is not None
    assert read["answered"].node.server_id == "s-1" and read["answered"].node.key is not None
    assert read["answered"].timings.start_wait_s == 0.25 and read["answered"].server == "started"
    assert not read["ensured only"].sent and read["ensured only"].body is None
    assert read["expired"].expired and read["expired"].status == 504
    # A server that is up names itself, whatever it answered: the router learns its key.
    assert read["too slow"].status == 504 and read["too slow"].node is not None
    assert read["no answer"].status == 502 and read["no answer"].node is not None
    assert read["a stream refused"].status == 400


def good() -> dict[str, Any]:
    return {
        "runtime_version": "0.7.0",
        "status": 200,
        "body": {},
        "timings": {"start_wait_s": 0, "latency_s": 0.5},
        "server": "reused",
        "node": {"host": "x3005c0s13b0n0", "server_id": "s-1"},
    }


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"status": "200"}, "envelope field 'status' is '200', not an integer"),
        ({"status": True}, "envelope field 'status' is True, not an integer"),
        ({"server": "warm"}, "envelope field 'server' is 'warm', not started or reused"),
        ({"timings": None}, "envelope field 'timings' is NoneType, not a mapping"),
        (
            {"timings": {"start_wait_s": "1", "latency_s": 0}},
            "envelope field 'timings.start_wait_s' is '1', not a number of seconds",
        ),
        ({"node": {"host": "h"}}, "envelope field 'node.server_id' is None, not a string"),
        ({"node": {"host": "h", "server_id": "s", "key": 7}}, "'node.key' is 7, not a string"),
        ({"sent": "no"}, "envelope field 'sent' is 'no', not true or false"),
    ],
)
def test_a_malformed_envelope_names_its_field(change: dict[str, Any], message: str) -> None:
    with pytest.raises(EnvelopeError, match=message):
        Envelope.parse({**good(), **change})


def test_an_envelope_without_a_node_key_vouches_for_nothing() -> None:
    envelope = Envelope.parse(good())
    assert envelope.node == NodeReport("x3005c0s13b0n0", "s-1", None)
    assert envelope.timings == Timings(0.0, 0.5)


@pytest.mark.anyio
async def test_an_envelope_the_router_cannot_read_is_a_502(harness: Harness) -> None:
    harness.endpoint.handler = lambda spec, request: {**good(), "status": "200"}
    began = time.monotonic()
    answer = await harness.client.post(
        CHAT,
        json={"model": TINY, "messages": [{"role": "user", "content": "hi"}]},
        headers=harness.auth,
    )
    assert answer.status_code == 502 and time.monotonic() - began < 5
    error = answer.json()["error"]
    assert error["code"] == "function_failed"
    assert error["message"] == (
        f"The endpoint for '{TINY}' answered in a shape this router cannot read (envelope "
        "field 'status' is '200', not an integer); deploy matching versions of the router and "
        "node runtime."
    )
