"""The data plane on the local cluster: the session's shared router, real vLLM and Infinity.

Once a model's server is up it dials the router (``/node/v1/connect``); warm requests and
streams then ride that connection, and a stream's events reach the client as vLLM writes
them. Also here: the router refusing dials with a credential it did not mint for that
endpoint and server. What stops servers or routers is in test_dataplane_faults_e2e.py.
"""

from __future__ import annotations

import secrets
import socket
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from node_runtime import wire

from inference_bundle.router.dataplane.connections import server_label
from tests.dataplane_e2e import (
    CHAT,
    COMPLETIONS,
    EMBEDDINGS,
    LONG_TOKENS,
    access_record,
    assert_streamed_as_generated,
    both_models_connected,
    connected_servers,
    dial,
    dial_file,
    dial_headers,
    embedding,
    long_chat,
    metric,
    post,
    router_metrics,
    server_metrics,
    server_state,
    shared_log,
    short_chat,
    timed_stream,
    via,
    wait_connected,
)
from tests.e2e_router import MINILM, SHARED_ROUTER, TINY, RunningRouter, stop_router
from tests.remote_node import start_router_on

# The shared router may start vLLM and Infinity cold here (up to its wait_s, 300 s each).
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
TINY_ALIAS = "local/tiny-llama-previous"


@pytest.fixture(scope="module")
def router(e2e_router: RunningRouter) -> RunningRouter:
    """The shared router, with both local models' servers up and dialled in."""
    return both_models_connected(e2e_router)


def log_of(router: RunningRouter) -> Path:
    return shared_log(router)


def test_a_warm_chat_stream_reaches_the_client_as_it_is_generated(router: RunningRouter) -> None:
    stream = timed_stream(router.url, router.key, CHAT, long_chat(TINY))
    assert_streamed_as_generated(stream, LONG_TOKENS)
    chunks = stream.json_events()
    assert {c["model"] for c in chunks} == {TINY}
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    record = access_record(log_of(router), stream.request_id)
    assert (record["via"], record["status"], record["stream"]) == ("connection", 200, True)


def test_a_warm_completions_stream_reaches_the_client_as_it_is_generated(
    router: RunningRouter,
) -> None:
    metrics_token = router.root / ".state" / SHARED_ROUTER / "metrics-token"
    before = metric(router_metrics(router.url, metrics_token), "router_request_paths_total")
    body = {
        "model": TINY,
        "prompt": "Once upon a time",
        "max_tokens": LONG_TOKENS,
        "ignore_eos": True,
        "stream": True,
    }
    stream = timed_stream(router.url, router.key, COMPLETIONS, body)
    assert_streamed_as_generated(stream, LONG_TOKENS)
    assert all(c["object"] == "text_completion" for c in stream.json_events())
    assert access_record(log_of(router), stream.request_id)["via"] == "connection"
    after = router_metrics(router.url, metrics_token)
    assert metric(after, "router_request_paths_total", via="connection") >= 1
    assert metric(after, "router_request_paths_total") == before + 1


def test_the_sdk_streams_with_and_without_a_usage_chunk(router: RunningRouter) -> None:
    client = router.client()
    asked: dict[str, Any] = {
        "model": TINY,
        "messages": [{"role": "user", "content": "hello"}],
        "max_tokens": 16,
        "temperature": 0,
        "extra_body": {"ignore_eos": True},
    }
    with_usage = list(
        client.chat.completions.create(**asked, stream=True, stream_options={"include_usage": True})
    )
    *tokens, usage = with_usage
    assert usage.choices == [] and usage.usage is not None
    assert usage.usage.completion_tokens == 16
    assert all(c.usage is None for c in tokens)
    text = "".join(c.choices[0].delta.content or "" for c in tokens)
    without = list(client.chat.completions.create(**asked, stream=True))
    assert all(c.usage is None and c.choices for c in without)
    assert "".join(c.choices[0].delta.content or "" for c in without) == text
    whole = client.chat.completions.create(**asked)
    assert whole.choices[0].message.content == text  # temperature 0: the same tokens
    # The SDK hangs up as soon as it reads [DONE], often before the server's end of the
    # answer reaches the router: such a stream was delivered whole and is logged 200.
    for _ in range(6):
        raw = client.chat.completions.with_raw_response.create(**asked, stream=True)
        assert "".join(c.choices[0].delta.content or "" for c in raw.parse()) == text
        record = access_record(log_of(router), raw.headers["x-request-id"])
        assert (record["status"], record["via"]) == (200, "connection")


def test_a_stream_under_an_alias_is_named_as_asked(router: RunningRouter) -> None:
    stream = timed_stream(router.url, router.key, CHAT, long_chat(TINY_ALIAS, max_tokens=8))
    assert stream.status == 200 and stream.events[-1] == "[DONE]"
    chunks = stream.json_events()
    # vLLM may put several tokens in one chunk when it runs ahead of its API server.
    assert len(chunks) >= 2 and {c["model"] for c in chunks} == {TINY_ALIAS}
    assert access_record(log_of(router), stream.request_id)["via"] == "connection"


def test_embeddings_ride_the_connection(router: RunningRouter) -> None:
    [server] = connected_servers(router.url, router.key, MINILM)
    assert server["server"] == server_label(server_state(router.root, MINILM).server_id)
    answers = [post(router.url, router.key, EMBEDDINGS, embedding(MINILM)) for _ in range(3)]
    assert all(a.status_code == 200 for a in answers)
    assert [len(d["embedding"]) for d in answers[0].json()["data"]] == [384, 384]
    assert [via(log_of(router), a) for a in answers] == ["connection"] * 3
    [after] = connected_servers(router.url, router.key, MINILM)
    assert after["requests"] >= server["requests"] + 3


def test_jobs_show_each_models_connected_server(router: RunningRouter) -> None:
    jobs = httpx.get(
        router.url + "/resource_server/local/jobs",
        headers={"Authorization": f"Bearer {router.key}"},
        timeout=60,
    )
    assert jobs.status_code == 200, jobs.text
    connected = {
        job["model"]: [s["server"] for s in job["connected_servers"]]
        for job in jobs.json()["running"]
    }
    for model in (TINY, MINILM):
        server_id = server_state(router.root, model).server_id
        assert connected.get(model) == [server_label(server_id)], jobs.json()


def test_a_client_that_hangs_up_stops_the_generation(router: RunningRouter) -> None:
    port = server_state(router.root, TINY).port
    # The tiny model makes a token in about a millisecond; 20 log-probabilities a token slow
    # it down (240 tokens took 28 s on a busy 2-core machine), so that a hang-up after a few
    # events comes long before the end.
    body = {**long_chat(TINY, 240), "logprobs": True, "top_logprobs": 20}
    before = server_metrics(port)
    left = timed_stream(router.url, router.key, CHAT, body, on_event=lambda n, _: n < 4)
    assert len(left.events) == 4 and "[DONE]" not in left.events
    deadline = time.monotonic() + 5
    while metric(now := server_metrics(port), "vllm:num_requests_running") > 0:
        assert time.monotonic() < deadline, "vLLM still generates for a client that left"
        time.sleep(0.05)
    # Aborted at vLLM: not run to its length, and far fewer tokens made than asked for.
    finished, made = "vllm:request_success_total", "vllm:generation_tokens_total"
    assert metric(now, finished, finished_reason="length") == metric(
        before, finished, finished_reason="length"
    )
    assert metric(now, made) - metric(before, made) < 240 / 2
    record = access_record(log_of(router), left.request_id)
    # A client that left is no server error: 499, out of the error counts and list.
    assert (record["via"], record["status"]) == ("connection", 499)


# --- The credential: the router's node route, dialled by hand -------------------------------


def test_dials_without_a_credential_minted_for_that_endpoint_and_server_are_refused(
    router: RunningRouter,
) -> None:
    # This router's own dials (other modules' routers may have written theirs since).
    tiny, minilm = (
        dial_file(router.root, TINY, router.url),
        dial_file(router.root, MINILM, router.url),
    )
    server_id = server_state(router.root, TINY).server_id
    assert tiny["url"] == router.url and tiny["endpoint"] != minilm["endpoint"]

    def refusal(token: str, endpoint: str, server: str) -> int | None:
        return dial(router.url, dial_headers(token, endpoint, server, "credential-test"))

    assert refusal(secrets.token_urlsafe(32), tiny["endpoint"], server_id) == 403
    assert refusal("", tiny["endpoint"], server_id) == 403
    # MiniLM's credential, for the chat model's endpoint (and its server).
    assert refusal(minilm["token"], tiny["endpoint"], server_id) == 403
    assert refusal(minilm["token"], "local-no-such-endpoint", server_id) == 403
    log = log_of(router).read_text()
    assert "unknown or revoked credential" in log
    assert f"the credential is not for endpoint {tiny['endpoint']!r}" in log


def test_a_copied_dial_file_does_not_let_another_server_in(router: RunningRouter) -> None:
    """What a reader of the node's files has (the credential, the server's id) is refused:
    the credential holds one connection, and a dial must prove the server's key."""
    tiny = dial_file(router.root, TINY, router.url)
    server_id = server_state(router.root, TINY).server_id
    stolen = dial_headers(tiny["token"], tiny["endpoint"], server_id, "credential-test")
    assert dial(router.url, stolen) == 403
    assert dial(router.url, [*stolen, (wire.PROOF_HEADER, "0" * 64)]) == 403
    other = dial_headers(tiny["token"], tiny["endpoint"], "someone-else", "credential-test")
    # Refused at once when the file's credential is the one the server connected with; when
    # a later task wrote a fresher one there (not yet bound to a server), refused once the
    # router has waited its 30 s for a task to vouch for "someone-else" (none does).
    assert dial(router.url, other, open_timeout_s=45) == 403
    log = log_of(router).read_text()
    assert "the dial does not prove the key its server's task reported" in log
    # The real server keeps its one line and answers over it.
    hosts = [s["host"] for s in connected_servers(router.url, router.key, TINY)]
    assert hosts == [socket.gethostname()]
    answer = post(router.url, router.key, CHAT, short_chat(TINY))
    assert answer.status_code == 200 and via(log_of(router), answer) == "connection"


def test_a_second_router_gets_a_connection_of_its_own(
    e2e_root: Path, router: RunningRouter
) -> None:
    """A second router over the same root (a replica): the server dials it too."""
    replica = start_router_on(e2e_root, "replica", "127.0.0.1")
    replica_log = e2e_root / ".state" / "replica.log"
    try:
        # No server dialled this router: the request is a task, which adds the router's
        # dial to the server's dial file; the server then dials it too, keeping its
        # connection to the shared router.
        answer = post(replica.url, replica.key, EMBEDDINGS, embedding(MINILM))
        assert answer.status_code == 200, answer.text
        assert via(replica_log, answer) == "task"
        written = dial_file(e2e_root, MINILM)
        assert written["url"] == replica.url
        server_id = server_state(e2e_root, MINILM).server_id
        wait_connected(replica.url, replica.key, MINILM, server_id=server_id)
        answer = post(replica.url, replica.key, EMBEDDINGS, embedding(MINILM))
        assert answer.status_code == 200 and via(replica_log, answer) == "connection"
    finally:
        stop_router(replica)
    # The shared router's connection was never touched.
    answer = post(router.url, router.key, EMBEDDINGS, embedding(MINILM))
    assert answer.status_code == 200 and via(log_of(router), answer) == "connection"
