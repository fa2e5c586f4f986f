"""The data plane under huge and hostile traffic, with the session's shared router, real
vLLM and Infinity: no one request cuts the line other users' requests ride.

A tokenizer answer of about 17 MB and an embedding body of about 10 MB cross while another
user's stream runs to its end; a client that stops reading a long stream holds back only
its own, with the router's memory flat. The same on the paced fake node, with the bounds
tripped exactly, is test_dataplane_bounds.py.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.dataplane_e2e import (
    CHAT,
    EMBEDDINGS,
    both_models_connected,
    connected_servers,
    long_chat,
    post,
    shared_log,
    timed_stream,
    via,
)
from tests.e2e_router import MINILM, TINY, RunningRouter
from tests.waiting import wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
TOKENIZE = "/resource_server/local/vllm/v1/tokenize"


@pytest.fixture(scope="module")
def router(e2e_router: RunningRouter) -> RunningRouter:
    """The shared router, with both local models' servers up and dialled in."""
    return both_models_connected(e2e_router)


def log_of(router: RunningRouter) -> Path:
    return shared_log(router)


def connected_at(router: RunningRouter, model: str) -> list[float]:
    return [s["connected_at"] for s in connected_servers(router.url, router.key, model)]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for {pid}")


def test_huge_answers_and_bodies_leave_another_users_stream_whole(router: RunningRouter) -> None:
    lines = {TINY: connected_at(router, TINY), MINILM: connected_at(router, MINILM)}
    with ThreadPoolExecutor(1) as pool:
        # Another user's stream, long enough to run across both huge requests.
        stream = pool.submit(
            timed_stream, router.url, router.key, CHAT, long_chat(TINY, 200), timeout_s=300
        )
        # About 17 MB back: a 5 MB prompt's token ids.
        prompt = "hello world " * (5 * 1024 * 1024 // 12)
        tokens = post(router.url, router.key, TOKENIZE, {"model": TINY, "prompt": prompt})
        assert tokens.status_code == 200, tokens.text[:500]
        assert len(tokens.content) > 12 * 1024 * 1024 and tokens.json()["count"] > 1_000_000
        assert via(log_of(router), tokens) == "connection"
        # About 10 MB up (the router's bound is 10 MiB): Infinity's answer, whatever it says
        # of so long an input, is its own, and the line is not cut.
        body = {"model": MINILM, "input": ["word " * (10_000_000 // 5 // 8)] * 8}
        embedded = post(router.url, router.key, EMBEDDINGS, body)
        assert embedded.status_code < 500, embedded.text[:500]
        streamed = stream.result(timeout=300)
    assert streamed.status == 200 and streamed.events[-1] == "[DONE]", streamed.events[-3:]
    assert len(streamed.json_events()) >= 100
    # The same lines throughout: neither huge request closed one.
    assert {model: connected_at(router, model) for model in lines} == lines


def test_a_client_that_stops_reading_holds_back_only_its_own_stream(router: RunningRouter) -> None:
    before = rss_mb(router.process.pid)
    stop = threading.Event()
    got: list[int] = []

    def stuck_reader() -> None:
        # Many long streams, each read a little and then left unread with its socket open.
        with httpx.Client(timeout=120) as client:
            # 20 log-probabilities a token: about 1.5 KB an event, 240 events.
            body = {**long_chat(TINY, 240), "logprobs": True, "top_logprobs": 20}
            with client.stream(
                "POST",
                router.url + CHAT,
                json=body,
                headers={"Authorization": f"Bearer {router.key}"},
            ) as response:
                got.append(response.status_code)
                next(response.iter_raw())
                stop.wait(60)

    readers = [threading.Thread(target=stuck_reader) for _ in range(4)]
    for reader in readers:
        reader.start()
    try:
        # Every unread stream has begun; its server runs on as far as its window allows.
        wait_until(lambda: len(got) == 4, "the four unread streams beginning", timeout_s=120)
        began = time.monotonic()
        other = timed_stream(router.url, router.key, CHAT, long_chat(TINY, 50), timeout_s=120)
        assert other.status == 200 and other.events[-1] == "[DONE]"
        assert time.monotonic() - began < 60
        assert rss_mb(router.process.pid) - before < 50
    finally:
        stop.set()
        for reader in readers:
            reader.join(timeout=30)
    assert got == [200] * 4
