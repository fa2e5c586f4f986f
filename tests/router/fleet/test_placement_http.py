"""The placement over HTTP, with a scripted endpoint a cluster: the one base URL goes where
the model is hot, moves off a failing cluster, honours a pin, and every answer names its
cluster in X-Inference-Cluster (router.api.failover)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

from inference_bundle.router.api.failover import CLUSTER_HEADER
from inference_bundle.router.errors import APIError
from inference_bundle.router.executors.pool import ExecutorPool
from inference_bundle.router.fleet.placement import FAILURE_BACKOFF_S
from inference_bundle.router.routes import Route
from tests.router.conftest import (
    FunctionFailed,
    Harness,
    ScriptedEndpoint,
    chat_answer,
    envelope,
)
from tests.router.warm_fakes import Clock

pytestmark = pytest.mark.anyio
TINY = "local/tiny-llama"
MINILM = "sentence-transformers/all-MiniLM-L6-v2"
HELLO = {"model": TINY, "messages": [{"role": "user", "content": "hi"}]}
V1_CHAT = "/v1/chat/completions"


def on(cluster: str) -> str:
    return f"/resource_server/{cluster}/vllm/v1/chat/completions"


class TwoClusters:
    """The router over local and local-slurm, an endpoint each, a placement clock to move."""

    def __init__(self, harness: Harness) -> None:
        self.h = harness
        self.endpoints = {"local": ScriptedEndpoint(), "local-slurm": ScriptedEndpoint()}
        service = harness.service
        service.pool = ExecutorPool(lambda route, _replica: self.endpoints[route.cluster])
        service.dispatcher.pool = service.pool
        self.clock = Clock(0.0)
        service.placement.clock = self.clock

    async def post(
        self, path: str = V1_CHAT, body: dict[str, Any] = HELLO, pin: str | None = None
    ) -> httpx.Response:
        """POST ``body``; ``pin`` goes in the X-Inference-Cluster header."""
        pinned = {} if pin is None else {CLUSTER_HEADER: pin}
        return await self.h.client.post(path, json=body, headers={**self.h.auth, **pinned})

    def sent(self) -> dict[str, int]:
        return {cluster: len(e.submitted) for cluster, e in self.endpoints.items()}

    def fail(self, cluster: str) -> None:
        def failing(spec: dict[str, Any], request: dict[str, Any]) -> dict[str, Any]:
            raise FunctionFailed("ServerStartError: the interpreter is not an executable")

        self.endpoints[cluster].handler = failing


@pytest.fixture
async def two(make_harness: Callable[..., Harness]) -> AsyncIterator[TwoClusters]:
    h = make_harness(clusters=["local", "local-slurm"])
    async with h.client:
        yield TwoClusters(h)


def error_of(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    assert {"message", "type", "param", "code"} <= set(error)
    return error


async def test_the_one_base_url_goes_where_the_model_is_ready(two: TwoClusters) -> None:
    warmed = await two.post(on("local-slurm"))
    assert warmed.status_code == 200 and warmed.headers[CLUSTER_HEADER] == "local-slurm"
    answers = [await two.post() for _ in range(2)]
    assert [a.headers[CLUSTER_HEADER] for a in answers] == ["local-slurm"] * 2
    assert two.sent() == {"local": 0, "local-slurm": 3}


async def test_a_cold_model_goes_to_the_first_cluster_and_says_so(two: TwoClusters) -> None:
    answer = await two.post()
    assert answer.status_code == 200 and answer.headers[CLUSTER_HEADER] == "local"
    # A model one cluster serves goes there, as before, and is named too.
    body = {"model": MINILM, "input": "x"}
    embedded = await two.post("/v1/embeddings", body)
    assert embedded.headers[CLUSTER_HEADER] == "local"


async def test_a_failing_cluster_moves_the_request_and_is_passed_over(two: TwoClusters) -> None:
    await two.post(on("local-slurm"))
    two.fail("local-slurm")
    moved = await two.post()
    assert moved.status_code == 200, moved.text
    assert moved.headers[CLUSTER_HEADER] == "local"
    assert two.sent() == {"local": 1, "local-slurm": 2}  # the failed try, then local
    # Passed over while its backoff lasts: local-slurm sees no more requests.
    assert (await two.post()).headers[CLUSTER_HEADER] == "local"
    two.clock.now += FAILURE_BACKOFF_S - 1
    assert (await two.post()).headers[CLUSTER_HEADER] == "local"
    assert two.sent() == {"local": 3, "local-slurm": 2}


async def test_after_its_backoff_a_cluster_is_tried_again(two: TwoClusters) -> None:
    two.fail("local")
    assert (await two.post()).headers[CLUSTER_HEADER] == "local-slurm"
    two.endpoints["local"].handler = ScriptedEndpoint().handler  # it recovered
    two.clock.now += FAILURE_BACKOFF_S
    # local's failed start left it stopped; local-slurm is ready.
    assert (await two.post()).headers[CLUSTER_HEADER] == "local-slurm"
    assert (await two.post(on("local"))).status_code == 200  # a request there answers
    assert (await two.post()).headers[CLUSTER_HEADER] == "local"


async def test_when_every_cluster_fails_the_error_names_the_last_tried(two: TwoClusters) -> None:
    two.fail("local")
    two.fail("local-slurm")
    response = await two.post()
    error = error_of(response, 502)
    assert error["code"] == "function_failed"
    assert response.headers[CLUSTER_HEADER] == "local-slurm"
    assert two.sent() == {"local": 1, "local-slurm": 1}


async def test_an_error_that_is_no_failure_does_not_move(two: TwoClusters) -> None:
    vllm_error = {"error": {"message": "too long", "type": "BadRequestError", "param": None}}
    two.endpoints["local"].handler = lambda spec, request: envelope(400, vllm_error)
    response = await two.post()
    assert response.status_code == 400 and response.headers[CLUSTER_HEADER] == "local"
    assert two.sent() == {"local": 1, "local-slurm": 0}


async def test_a_pinned_cluster_is_used_and_never_moved(two: TwoClusters) -> None:
    await two.post(on("local"))
    pinned = await two.post(pin="local-slurm")
    assert pinned.status_code == 200 and pinned.headers[CLUSTER_HEADER] == "local-slurm"
    two.fail("local-slurm")
    failed = await two.post(pin="local-slurm")
    assert error_of(failed, 502)["code"] == "function_failed"
    assert failed.headers[CLUSTER_HEADER] == "local-slurm"
    # Under a cluster's own URL, the same: no move.
    there = await two.post(on("local-slurm"))
    assert error_of(there, 502)["code"] == "function_failed"
    assert two.sent() == {"local": 1, "local-slurm": 3}


async def test_a_pin_to_a_cluster_that_does_not_serve_the_model_is_a_404(
    two: TwoClusters,
) -> None:
    body = {"model": MINILM, "input": "x"}
    response = await two.post("/v1/embeddings", body, pin="local-slurm")
    error = error_of(response, 404)
    assert error["code"] == "model_not_found" and error["param"] == CLUSTER_HEADER
    assert error["message"] == (
        f"The model '{MINILM}' is not served on 'local-slurm', the cluster the "
        f"{CLUSTER_HEADER} header pins. It is served on: local. Pin one of those, or leave "
        "the header out and the router chooses."
    )
    unknown = error_of(await two.post(pin="nowhere"), 404)
    assert unknown["code"] == "cluster_not_found" and unknown["param"] == CLUSTER_HEADER
    assert unknown["message"].startswith(f"{CLUSTER_HEADER}: Unknown cluster 'nowhere'.")
    conflict = error_of(await two.post(on("local"), pin="local-slurm"), 400)
    assert conflict["code"] == "cluster_conflict"
    assert two.sent() == {"local": 0, "local-slurm": 0}


async def test_a_stream_names_its_cluster(two: TwoClusters) -> None:
    await two.post(on("local-slurm"))
    body = {**HELLO, "stream": True}
    async with two.h.client.stream("POST", V1_CHAT, json=body, headers=two.h.auth) as stream:
        assert stream.headers[CLUSTER_HEADER] == "local-slurm"
        text = "".join([part async for part in stream.aiter_text()])
    assert text.endswith("data: [DONE]\n\n") and '"error"' not in text


async def test_a_stream_that_fails_ends_with_its_error_and_passes_its_cluster_over(
    two: TwoClusters,
) -> None:
    await two.post(on("local-slurm"))
    two.fail("local-slurm")
    body = {**HELLO, "stream": True}
    async with two.h.client.stream("POST", V1_CHAT, json=body, headers=two.h.auth) as stream:
        # The stream began at once (the model had no connection): it stays with its cluster.
        assert stream.headers[CLUSTER_HEADER] == "local-slurm"
        events = [part async for part in stream.aiter_text()]
    error = json.loads("".join(events).split("data: ")[1])["error"]
    assert error["code"] == "function_failed"
    assert (await two.post()).headers[CLUSTER_HEADER] == "local"


class OneConnected:
    """A data plane where only local-slurm's server is connected."""

    def pick(
        self, route: Route, avoid: frozenset[str] = frozenset(), session: str | None = None
    ) -> object | None:
        return object() if route.cluster == "local-slurm" else None

    def dial(self, route: Route) -> dict[str, Any]:
        return {}

    async def wait_for(self, route: Route) -> None:
        return None

    def vouch(self, route: Route, envelope: dict[str, Any]) -> None:
        pass


def ensure_or_chat(spec: dict[str, Any], request: dict[str, Any]) -> dict[str, Any]:
    """A stream's first task only ensures the server (no body); then the request itself."""
    return chat_answer(spec, request) if request.get("body") else envelope(200, None)


async def test_a_connected_stream_that_breaks_on_opening_moves(
    two: TwoClusters, monkeypatch: pytest.MonkeyPatch
) -> None:
    await two.post(on("local-slurm"))
    dispatcher = two.h.service.dispatcher
    real = dispatcher.stream
    opened: list[str] = []

    async def stream(route: Route, request: dict[str, Any], on_wait: Any, asker: Any = None) -> Any:
        opened.append(route.cluster)
        if route.cluster == "local-slurm":
            raise APIError(502, "it stopped answering", type="server_error", code="server_gone")
        return await real(route, request, on_wait, asker)

    two.endpoints["local"].handler = ensure_or_chat
    monkeypatch.setattr(dispatcher, "plane", OneConnected())
    monkeypatch.setattr(dispatcher, "stream", stream)
    body = {**HELLO, "stream": True}
    async with two.h.client.stream("POST", V1_CHAT, json=body, headers=two.h.auth) as answer:
        assert answer.headers[CLUSTER_HEADER] == "local"
        text = "".join([part async for part in answer.aiter_text()])
    assert text.endswith("data: [DONE]\n\n") and '"error"' not in text
    assert opened == ["local-slurm", "local"]
    assert two.sent() == {"local": 2, "local-slurm": 1}  # an ensure task, then the request


async def test_a_wait_past_wait_s_names_its_cluster(
    make_harness: Callable[..., Harness],
) -> None:
    h = make_harness(clusters=["local", "local-slurm"], wait_s=0.2)
    async with h.client:
        two = TwoClusters(h)
        two.endpoints["local"].delay_s = 1.0
        two.endpoints["local"].held = False
        response = await two.post()
    assert error_of(response, 503)["code"] == "model_not_ready"
    assert response.headers[CLUSTER_HEADER] == "local"
    assert two.sent() == {"local": 1, "local-slurm": 0}  # still starting there: no move
