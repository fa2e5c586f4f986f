"""Bounds: a maximum n, a 503's task that sends nothing late, one router per state folder."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from inference_bundle.router.dispatch.task_path import EXPIRY_MARGIN_S
from inference_bundle.router.executors.pool import ExecutorPool
from inference_bundle.router.fleet.states import ModelState
from inference_bundle.router.store.state_folder import lock_state_folder
from tests.e2e_router import free_port
from tests.router.conftest import ROOT, Harness, chat_answer

pytestmark = pytest.mark.anyio
TINY = "local/tiny-llama"
HELLO = [{"role": "user", "content": "hi"}]


async def chat(h: Harness, **extra: Any) -> httpx.Response:
    body = {"model": TINY, "messages": HELLO, **extra}
    return await h.client.post("/v1/chat/completions", json=body, headers=h.auth)


async def test_n_above_the_limit_is_a_400_naming_n(harness: Harness) -> None:
    assert harness.service.settings.limits.max_n == 8
    assert (await chat(harness, n=8)).status_code == 200
    for n in (9, 1000, 0, -1, "2", 2.5, True):
        response = await chat(harness, n=n)
        assert response.status_code == 400, (n, response.text)
        assert response.json()["error"]["param"] == "n"
    assert "limit of 8 choices" in (await chat(harness, n=9)).json()["error"]["message"]
    assert len(harness.endpoint.submitted) == 1


async def test_the_limit_is_a_setting(make_harness: Callable[..., Harness]) -> None:
    h = make_harness(limits={"max_n": 2})
    async with h.client:
        assert (await chat(h, n=2)).status_code == 200
        assert (await chat(h, n=3)).status_code == 400


class HeldEndpoint:
    """An endpoint whose tasks stay queued until released; keeps each task's future."""

    def __init__(self) -> None:
        self.futures: list[Future[Any]] = []
        self.requests: list[tuple[dict[str, Any], dict[str, Any]]] = []

    def submit(self, function: Callable[..., Any], *args: Any) -> Future[Any]:
        _version, spec, request = args
        future: Future[Any] = Future()
        self.futures.append(future)
        self.requests.append((spec, request))
        return future

    def release(self) -> None:
        """Answer every task still pending, as an endpoint would once its job runs."""
        for future, (spec, request) in zip(self.futures, self.requests, strict=True):
            if not future.done():
                future.set_result(chat_answer(spec, request))

    def node_held(self) -> bool:
        return False

    def shutdown(self) -> None:
        pass


async def test_a_503_leaves_its_start_running_and_its_request_expiring(
    make_harness: Callable[..., Harness],
) -> None:
    """The 503 promises the start goes on; the task's request carries when its caller left."""
    h = make_harness(wait_s=0.2)
    held = HeldEndpoint()
    h.service.pool = h.service.dispatcher.pool = ExecutorPool(lambda route, _replica: held)
    async with h.client:
        asked = time.time()
        response = await chat(h)
        assert response.status_code == 503 and response.json()["error"]["state"] == "queued"
        stream = await chat(h, stream=True)  # a stream gives up the same way
        assert '"code":"model_not_ready"' in stream.text
        [(_spec, request), _second] = held.requests
        # The node runtime does not send a request past this (tests/runtime/test_units.py).
        assert asked + 0.2 <= request["expires_at"] <= time.time() + 0.2 + EXPIRY_MARGIN_S
        assert h.service.tracker.status("local-tiny-chat").in_flight == 2
        held.release()  # the job runs: the model is up for the next request
        deadline = time.monotonic() + 5
        while h.service.tracker.status("local-tiny-chat").in_flight:
            assert time.monotonic() < deadline, "the released tasks were not counted finished"
            await asyncio.sleep(0.01)
        assert h.service.tracker.status("local-tiny-chat").state == ModelState.READY
        h.service.dispatcher.wait_s = 5
        task = asyncio.ensure_future(chat(h))
        deadline = time.monotonic() + 5
        while len(held.futures) < 3:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        held.release()
        answer = await task
    assert answer.status_code == 200 and answer.json()["model"] == TINY
    assert h.service.tracker.status("local-tiny-chat").in_flight == 0


@pytest.fixture
def router_config(tmp_path: Path) -> Iterator[Callable[[], Path]]:
    keys = tmp_path / "keys.json"
    keys.write_text('{"version": 1, "keys": []}\n')

    def config() -> Path:
        path = tmp_path / f"router-{free_port()}.yaml"
        data = {
            "clusters": ["local"],
            "executor": "engine",
            "listen": {"host": "127.0.0.1", "port": int(path.stem.split("-")[1])},
            "state_dir": str(tmp_path / "state"),
            "auth": {"mode": "keys", "keys_file": str(keys)},
            # Nothing started ahead: these routers only need to come up.
            "batches": {"prestart_engines": False},
        }
        path.write_text(yaml.safe_dump(data))
        return path

    yield config


def router_command(config: Path) -> list[str]:
    return [sys.executable, "-m", "inference_bundle.router", "--config", str(config)]


@pytest.mark.timeout(180)
def test_a_second_router_on_the_same_state_folder_refuses_to_start(
    router_config: Callable[[], Path], tmp_path: Path
) -> None:
    first_config = router_config()
    port = int(first_config.stem.split("-")[1])
    log = (tmp_path / "first.log").open("wb")
    first = subprocess.Popen(
        [*router_command(first_config), "--root", str(ROOT)],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 90
        while True:
            assert first.poll() is None, (tmp_path / "first.log").read_text()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the first router did not come up"
            time.sleep(0.2)
        second = subprocess.run(
            [*router_command(router_config()), "--root", str(ROOT)],
            capture_output=True,
            text=True,
            timeout=90,
        )
        assert second.returncode == 1
        assert second.stdout == "" and "Traceback" not in second.stderr
        [line] = second.stderr.strip().splitlines()
        assert f"another router (pid {first.pid}) is using this state folder" in line
        assert str(tmp_path / "state") in line and "state_dir" in line
        assert first.poll() is None  # the first one serves on
    finally:
        first.send_signal(signal.SIGTERM)
        first.wait(timeout=60)
        log.close()
    # Its lock ended with it, however it ended.
    lock_state_folder(tmp_path / "state").close()
