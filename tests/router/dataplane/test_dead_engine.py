"""A server whose engine died answers no request for the routers: vLLM then answers 500 to
every request and 503 on ``/health`` until its process ends (as when a job's walltime kills
the engine first). The agent withholds those 500s and hangs up, and each router sends what
had no answer to another server. A 500 from a server whose health check passes is an answer,
and goes to the client as it is."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

import pytest

from inference_bundle.router.dataplane.connections import server_label
from tests.router.dataplane_fakes import CHAT, ENDPOINT, Served, chat, connected
from tests.waiting import until

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]


@dataclass
class Engine:
    """An ASGI model server: chat answers while ``alive``; else 500s (and, unless
    ``healthy_when_failing``, 503 on /health, as vLLM's engine-dead answers)."""

    alive: bool = True
    healthy_when_failing: bool = False
    chats: list[str] = field(default_factory=list)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        while (await receive()).get("more_body"):
            pass
        if scope["path"] == "/health":
            healthy = self.alive or self.healthy_when_failing
            await send({"type": "http.response.start", "status": 200 if healthy else 503})
            await send({"type": "http.response.body", "body": b""})
            return
        if scope["path"] != "/v1/chat/completions":
            await send({"type": "http.response.start", "status": 404})
            await send({"type": "http.response.body", "body": b""})
            return
        self.chats.append("answered" if self.alive else "failed")
        if self.alive:
            status, body = 200, {"object": "chat.completion", "choices": []}
        else:
            status, body = 500, {"error": "EngineCore encountered an issue"}
        headers = [(b"content-type", b"application/json")]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": json.dumps(body).encode()})


async def test_a_server_whose_engine_died_hangs_up_and_its_requests_go_elsewhere(
    served: Served,
) -> None:
    dead, live = Engine(), Engine()
    dying = await served.start_node("s-dying", model=dead)
    await served.start_node("s-live", model=live)
    await connected(served.plane, 2)
    dead.alive = False
    # Two random choices spread requests over both: send until the dead one has had one.
    answers = []
    for _ in range(40):
        answers += await asyncio.gather(*(served.client.post(CHAT, json=chat()) for _ in range(4)))
        if dead.chats:
            break
    assert dead.chats, "the dead server was never picked"
    assert [a.status_code for a in answers] == [200] * len(answers), [a.text for a in answers]
    assert len(live.chats) == len(answers)  # each answered once, by the live server
    # It hung up for good: only the live server is left, and it does not dial again.
    await until(lambda: len(served.plane.servers(ENDPOINT)) == 1, "the dead server's hang-up")
    [left] = served.plane.servers(ENDPOINT)
    assert left["server"] == server_label("s-live")
    await asyncio.sleep(1.5)  # the dial file is read every 0.5 s
    assert dying.agent.connection(served.url) is None
    assert len(served.plane.servers(ENDPOINT)) == 1


async def test_a_500_from_a_healthy_server_is_its_answer(served: Served) -> None:
    engine = Engine(alive=False, healthy_when_failing=True)
    await served.start_node("s-1", model=engine)
    await connected(served.plane)
    answer = await served.client.post(CHAT, json=chat())
    assert answer.status_code == 500
    assert "EngineCore" in answer.text
    assert engine.chats == ["failed"]  # not sent again
    assert len(served.plane.servers(ENDPOINT)) == 1  # and the server stays connected
