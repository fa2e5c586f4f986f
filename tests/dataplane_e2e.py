"""What the data plane's slow tests measure and read: streams with arrival times, the access
log's path of a request, the connected servers a router lists, a server's own metrics, and
dials of the router's node route made by hand.
"""

from __future__ import annotations

import asyncio
import json
import re
import ssl
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from node_runtime import wire
from node_runtime.server_files import ServerPaths, ServerState, read_state

from inference_bundle.config.catalog import load_catalog
from inference_bundle.rendering.specs import server_spec
from inference_bundle.router.dataplane.connections import server_label
from tests.e2e_router import MINILM, SHARED_ROUTER, TINY, RunningRouter
from tests.waiting import wait_until

CHAT = "/resource_server/local/vllm/v1/chat/completions"
COMPLETIONS = "/resource_server/local/vllm/v1/completions"
EMBEDDINGS = "/resource_server/local/infinity/v1/embeddings"
# Long enough to see a stream arrive over time; the tiny model's context is 256 tokens.
LONG_TOKENS = 200


@dataclass(frozen=True)
class TimedStream:
    """A streamed answer as the client saw it: each event's payload and arrival time."""

    status: int
    request_id: str
    events: list[str]  # the SSE data payloads, "[DONE]" included
    arrivals: list[float]  # seconds from the request to each event's arrival
    reads: int  # network reads that completed at least one event
    total_s: float

    def json_events(self) -> list[dict[str, Any]]:
        """The events that are JSON (all but [DONE])."""
        return [json.loads(e) for e in self.events if e != "[DONE]"]


def long_chat(model: str, max_tokens: int = LONG_TOKENS) -> dict[str, Any]:
    """A streamed chat that writes exactly ``max_tokens`` tokens."""
    return {
        "model": model,
        "messages": [{"role": "user", "content": "Tell me a long story."}],
        "max_tokens": max_tokens,
        "ignore_eos": True,  # vLLM's: no early end, so the length is known
        "temperature": 0,
        "stream": True,
    }


def timed_stream(
    url: str,
    key: str,
    path: str,
    body: dict[str, Any],
    verify: ssl.SSLContext | bool = True,
    on_event: Callable[[int, str], bool] | None = None,
    timeout_s: float = 120,
) -> TimedStream:
    """POST a stream and time each event's arrival; ``on_event(n, data)`` returning False
    hangs up there (the client leaves mid-stream)."""
    events: list[str] = []
    arrivals: list[float] = []
    reads = 0
    buffer = b""
    with httpx.Client(verify=verify, timeout=timeout_s) as client:
        began = time.monotonic()
        with client.stream(
            "POST", url + path, json=body, headers={"Authorization": f"Bearer {key}"}
        ) as response:
            request_id = response.headers.get("x-request-id", "")
            if response.status_code != 200:
                response.read()
                events.append(response.text)
                arrivals.append(time.monotonic() - began)
            else:
                leave = False
                for chunk in response.iter_raw():
                    now = time.monotonic() - began
                    buffer += chunk
                    *complete, buffer = buffer.split(b"\n\n")
                    reads += bool(complete)
                    for block in complete:
                        for line in block.splitlines():
                            if line.startswith(b"data: "):
                                events.append(line[6:].decode())
                                arrivals.append(now)
                                if on_event is not None and not on_event(len(events), events[-1]):
                                    leave = True
                    if leave:
                        break
        total = time.monotonic() - began
    return TimedStream(response.status_code, request_id, events, arrivals, reads, total)


def assert_streamed_as_generated(stream: TimedStream, tokens: int) -> None:
    """The events came spread over the generation, not in a burst at its end."""
    assert stream.status == 200, stream.events
    assert stream.events[-1] == "[DONE]"
    # Up to one event per token: vLLM's stream interval is 1, but a token that completes no
    # character waits for the next one, and vLLM merges the deltas its reader has not yet
    # taken (on a busy machine, a fifth of the events or more; 158 of 200 seen in CI).
    assert len(stream.events) >= tokens // 2, len(stream.events)
    first, last = stream.arrivals[0], stream.arrivals[-1]
    assert first < stream.total_s / 2, (first, stream.total_s)
    assert last - first > stream.total_s / 4, (first, last, stream.total_s)
    # A burst comes in a handful of reads; as generated, most events in one of their own.
    assert stream.reads >= tokens // 10, (stream.reads, len(stream.events))


def access_record(log: Path, request_id: str, timeout_s: float = 20) -> dict[str, Any]:
    """The router's access-log line of ``request_id`` (written as the answer ends)."""

    def look() -> dict[str, Any] | None:
        for line in log.read_text(errors="replace").splitlines():
            if request_id in line and line.startswith("{"):
                record: dict[str, Any] = json.loads(line)
                if record.get("request_id") == request_id:
                    return record
        return None

    return wait_until(look, f"an access-log line for {request_id} in {log}", timeout_s, 0.2)


def via(log: Path, response: httpx.Response) -> str:
    """The path the request of ``response`` took, as the access log says."""
    return str(access_record(log, response.headers["x-request-id"])["via"])


def post(
    url: str, key: str, path: str, body: dict[str, Any], verify: ssl.SSLContext | bool = True
) -> httpx.Response:
    """A whole (unstreamed) request; the answer's status is checked by the caller."""
    return httpx.post(
        url + path,
        json=body,
        headers={"Authorization": f"Bearer {key}"},
        verify=verify,
        timeout=600,
    )


def short_chat(model: str) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


def embedding(model: str) -> dict[str, Any]:
    return {"model": model, "input": ["one", "two"]}


def connected_servers(
    url: str, key: str, model: str, verify: ssl.SSLContext | bool = True
) -> list[dict[str, Any]]:
    """The ``connected_servers`` that /list-endpoints shows for ``model``."""
    listed = httpx.get(
        url + "/resource_server/list-endpoints",
        headers={"Authorization": f"Bearer {key}"},
        verify=verify,
        timeout=30,
    )
    listed.raise_for_status()
    for cluster in listed.json()["clusters"].values():
        for framework in cluster["frameworks"].values():
            for entry in framework["models"]:
                if entry["id"] == model:
                    servers: list[dict[str, Any]] = entry["connected_servers"]
                    return servers
    raise AssertionError(f"{model} is not listed: {listed.text}")


def wait_connected(
    url: str,
    key: str,
    model: str,
    verify: ssl.SSLContext | bool = True,
    timeout_s: float = 60,
    server_id: str | None = None,
) -> list[dict[str, Any]]:
    """The connected servers of ``model`` once there is one (``server_id``'s, if given)."""
    seen: list[dict[str, Any]] = []

    def look() -> list[dict[str, Any]] | None:
        servers = connected_servers(url, key, model, verify)
        seen[:] = servers
        labels = {s["server"] for s in servers}
        if servers and (server_id is None or server_label(server_id) in labels):
            return servers
        return None

    return wait_until(
        look, lambda: f"a server of {model} dialling in (connected: {seen})", timeout_s, 0.3
    )


def both_models_connected(router: RunningRouter) -> RunningRouter:
    """``router`` once both local models' servers are up and dialled in to it."""
    for path, body in ((CHAT, short_chat(TINY)), (EMBEDDINGS, embedding(MINILM))):
        answer = post(router.url, router.key, path, body)
        assert answer.status_code == 200, answer.text
    wait_connected(router.url, router.key, TINY)
    wait_connected(router.url, router.key, MINILM)
    return router


def shared_log(router: RunningRouter) -> Path:
    """The session's shared router's log (its access log among it)."""
    return router.root / ".state" / f"{SHARED_ROUTER}.log"


def server_paths(root: Path, model: str) -> ServerPaths:
    """The folder of ``model``'s interactive server on this host, under a scratch root."""
    catalog = load_catalog(root, "local")
    [entry] = [e for e in catalog.entries if e.endpoint.model == model]
    spec = server_spec(entry, catalog.profile)
    return ServerPaths.for_model(spec.state_dir, spec.name)


def server_state(root: Path, model: str) -> ServerState:
    """The recorded server of ``model`` (AssertionError if none runs)."""
    state = read_state(server_paths(root, model))
    assert state is not None, f"no server of {model} is recorded under {root}"
    return state


def dial_file(root: Path, model: str, url: str | None = None) -> dict[str, Any]:
    """The dial the node runtime wrote into ``model``'s server's dial.json for the router at
    ``url``, or the last it wrote (one per router URL, the latest last): url, token,
    endpoint, ca_file."""
    written = json.loads((server_paths(root, model).root / "dial.json").read_text())
    dials: dict[str, dict[str, Any]] = written["dials"]
    return dials[url] if url is not None else list(dials.values())[-1]


def pin_server(root: Path, model: str) -> None:
    """Make this test process an anchor of ``model``'s server, so that it outlives a router.

    A server stops once every caller's parent is gone: with the engine executor those are
    the router's worker pools, which end with the router. On a site the jobs (and so the
    server) outlive a router's restart; here a request from a child of this process stands
    for them (the server then lives while this process does, or until it idles out).
    """
    catalog = load_catalog(root, "local")
    [entry] = [e for e in catalog.entries if e.endpoint.model == model]
    spec = server_spec(entry, catalog.profile).to_dict()
    ensure = {"method": "GET", "path": "/v1/models", "body": None, "send": False}
    script = (
        "import json, sys\nfrom node_runtime.proxy import handle\n"
        "print(json.dumps(handle(json.loads(sys.argv[1]), json.loads(sys.argv[2]))))"
    )
    run = subprocess.run(
        [sys.executable, "-c", script, json.dumps(spec), json.dumps(ensure)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout.splitlines()[-1])["status"] == 200, run.stdout


def metric(text: str, name: str, **labels: str) -> float:
    """The sum of a Prometheus metric's samples whose labels include ``labels``."""
    total = 0.0
    pattern = re.compile(rf"^{re.escape(name)}(\{{[^}}]*\}})? (\S+)$")
    for line in text.splitlines():
        matched = pattern.match(line)
        if matched is None:
            continue
        sample = dict(re.findall(r'(\w+)="([^"]*)"', matched.group(1) or ""))
        if all(sample.get(k) == v for k, v in labels.items()):
            total += float(matched.group(2))
    return total


def server_metrics(port: int) -> str:
    """A vLLM server's own /metrics, on this host."""
    answer = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=30)
    answer.raise_for_status()
    return answer.text


def router_metrics(url: str, token_file: Path, verify: ssl.SSLContext | bool = True) -> str:
    """A router's /metrics (with its operators' token)."""
    token = token_file.read_text().strip()
    answer = httpx.get(
        url + "/metrics", headers={"Authorization": f"Bearer {token}"}, verify=verify, timeout=30
    )
    answer.raise_for_status()
    return answer.text


# --- Dialling the router's node route by hand ----------------------------------------------


def dial_headers(token: str, endpoint: str, server_id: str, host: str) -> list[tuple[str, str]]:
    """The handshake headers a node's agent sends."""
    return [
        ("Authorization", f"Bearer {token}"),
        (wire.ENDPOINT_HEADER, endpoint),
        (wire.SERVER_HEADER, server_id),
        (wire.HOST_HEADER, host),
    ]


def dial(
    router_url: str,
    headers: list[tuple[str, str]],
    while_open: Callable[[], Any] | None = None,
    ssl_context: ssl.SSLContext | None = None,
    open_timeout_s: float = 10,
) -> int | None:
    """Dial the router's node route: the refusal's HTTP status, or None if it was accepted
    (then ``while_open()`` runs, in a thread, before hanging up)."""

    async def attempt() -> int | None:
        from websockets.asyncio.client import connect
        from websockets.exceptions import InvalidStatus

        try:
            async with connect(
                wire.websocket_url(router_url),
                additional_headers=headers,
                compression=None,
                open_timeout=open_timeout_s,
                proxy=None,
                ssl=ssl_context,
            ):
                if while_open is not None:
                    await asyncio.to_thread(while_open)
                return None
        except InvalidStatus as refused:
            return int(refused.response.status_code)

    outcome: Awaitable[int | None] = attempt()
    return asyncio.run(asyncio.wait_for(outcome, 60))
