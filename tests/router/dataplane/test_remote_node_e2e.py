"""A remote node: the local cluster's jobs in their own network and UTS namespace.

The router runs here, in the root namespace; the endpoint's worker pools, and so the model
servers they start, run in netns ``bundle-rnode`` under hostname ``node-rnode``, joined by a
veth pair (tests/remote_node.py). The node reaches the router and the engine's interchange;
the router's host cannot reach the model servers. MiniLM starts in the background while the
first tests wait for the tiny vLLM.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from node_runtime.server_files import ServerPaths, read_state

from tests.dataplane_e2e import (
    CHAT,
    EMBEDDINGS,
    LONG_TOKENS,
    access_record,
    assert_streamed_as_generated,
    embedding,
    long_chat,
    post,
    short_chat,
    timed_stream,
    via,
    wait_connected,
)
from tests.e2e_router import MINILM, TINY
from tests.remote_node import (
    RemoteNode,
    alive,
    connects,
    get_from_node,
    hostname_of,
    namespace_exists,
    namespace_link,
    network_namespace,
    remote_node,
)

# A cold vLLM and a cold Infinity start in the node (each up to the router's wait_s, 540 s).
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
TAG = "rnode"


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RemoteNode]:
    # The node dials the router where it listens: the root side of the veth.
    deployment = remote_node(
        tmp_path_factory.mktemp("remote-node"), TAG, extra_settings=dial_where_it_listens
    )
    running = next(deployment)
    with ThreadPoolExecutor(1) as pool:
        minilm = pool.submit(
            post, running.router.url, running.router.key, EMBEDDINGS, embedding(MINILM)
        )
        yield running
        minilm.exception(timeout=600)  # its tests waited for it, or it ends before the teardown
    pids = running.namespace.pids()
    deployment.close()  # its teardown: the router, the node's servers, the namespace
    # At the end nothing of the node is left.
    assert not namespace_exists(running.namespace.name)
    assert not any(alive(pid) for pid in pids), pids


def dial_where_it_listens(router_url: str) -> dict[str, Any]:
    return {"data_plane": {"dial_url": router_url}}


def chat(node: RemoteNode) -> Any:
    return node.router.client().chat.completions.create(
        model=TINY,
        messages=[{"role": "user", "content": "hello"}],
        max_tokens=4,
        temperature=0,
    )


def test_the_node_reaches_the_router(node: RemoteNode) -> None:
    assert node.router.url.startswith(f"http://{node.namespace.root_ip}:")
    assert get_from_node(node.namespace, node.router.url + "/health") == "200"


def test_chat_runs_on_the_node(node: RemoteNode) -> None:
    answer = chat(node)
    assert answer.model == TINY
    assert answer.choices[0].message.content is not None

    server = node.server(TINY)
    # The server is in the node's network namespace, not this one.
    assert namespace_link(server.pid, "net") == f"net:[{node.namespace.inode()}]"
    assert namespace_link(server.pid, "net") != namespace_link(os.getpid(), "net")
    # ... and has the node's hostname, in a UTS namespace of its own.
    assert namespace_link(server.pid, "uts") != namespace_link(os.getpid(), "uts")
    assert hostname_of(server.pid) == node.namespace.hostname


def test_the_router_cannot_reach_the_server(node: RemoteNode) -> None:
    chat(node)  # the server runs (cold start in the test above, or here if run alone)
    port = node.server(TINY).port
    # It answers on the node's loopback: the check below is not vacuous.
    assert get_from_node(node.namespace, f"http://127.0.0.1:{port}/health") == "200"
    assert not connects("127.0.0.1", port)
    assert not connects(node.namespace.node_ip, port)


def test_embeddings_run_on_the_node(node: RemoteNode) -> None:
    client = node.router.client("/resource_server/local/infinity/v1")
    vectors = client.embeddings.create(model=MINILM, input=["one", "two"])
    assert [len(d.embedding) for d in vectors.data] == [384, 384]
    server = node.server(MINILM)
    assert namespace_link(server.pid, "net") == f"net:[{node.namespace.inode()}]"
    assert hostname_of(server.pid) == node.namespace.hostname


def test_the_nodes_servers_dial_the_router(node: RemoteNode) -> None:
    chat(node)
    node.router.client("/resource_server/local/infinity/v1").embeddings.create(
        model=MINILM, input="warm"
    )  # both servers run (cold here if this test runs alone)
    url, key = node.router.url, node.router.key
    for model in (TINY, MINILM):
        server_id = node.server(model).server_id
        [server] = wait_connected(url, key, model, server_id=server_id)
        assert server["host"] == node.namespace.hostname
        written = dial_file_on(node, model)
        assert written["url"] == url


def test_warm_requests_on_the_node_ride_its_connection(node: RemoteNode) -> None:
    url, key = node.router.url, node.router.key
    wait_connected(url, key, TINY)
    wait_connected(url, key, MINILM)
    answers = [
        post(url, key, CHAT, short_chat(TINY)),
        post(url, key, EMBEDDINGS, embedding(MINILM)),
    ]
    assert [a.status_code for a in answers] == [200, 200]
    assert [via(router_log(node), a) for a in answers] == ["connection", "connection"]


def test_a_stream_from_the_node_reaches_the_client_as_it_is_generated(node: RemoteNode) -> None:
    wait_connected(node.router.url, node.router.key, TINY)
    stream = timed_stream(node.router.url, node.router.key, CHAT, long_chat(TINY))
    assert_streamed_as_generated(stream, LONG_TOKENS)
    assert access_record(router_log(node), stream.request_id)["via"] == "connection"


def router_log(node: RemoteNode) -> Path:
    return node.root / ".state" / "remote.log"


def dial_file_on(node: RemoteNode, model: str) -> dict[str, Any]:
    """The dial.json the node runtime wrote beside the model's server on the node."""
    folder = next(
        f
        for f in node.state_dir.glob("*")
        if (state := read_state(ServerPaths(f))) and state.name == model
    )
    written = json.loads((folder / "dial.json").read_text())
    latest: dict[str, Any] = list(written["dials"].values())[-1]  # one per router, latest last
    return latest


def test_a_namespace_takes_its_processes_with_it() -> None:
    with network_namespace("rgone") as namespace:
        started = namespace.run(["sh", "-c", "sleep 600 >/dev/null 2>&1 & echo $!"])
        sleeper = int(started.stdout)
        assert namespace.pids() == [sleeper]
        assert namespace_exists(namespace.name)
    assert not namespace_exists(namespace.name)
    assert not alive(sleeper)
