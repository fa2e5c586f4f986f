"""Admission by capacity: places on a model's servers, the queue for them, and its bounds."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, replace
from typing import Any, cast

import pytest

from inference_bundle.config.catalog import load_catalog
from inference_bundle.config.frameworks import vllm_flags
from inference_bundle.config.queue_settings import QueueSettings
from inference_bundle.router.dispatch.admission import FREE, Admission, Asker, Slot
from inference_bundle.router.errors import APIError
from inference_bundle.router.routes import Route, RouteTable
from tests.router.conftest import ROOT
from tests.waiting import until

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(30)]


@dataclass
class FakeRoute:
    endpoint_name: str = "local-tiny-chat"
    model: str = "local/tiny-llama"
    places: int = 2  # a server's


ROUTE = cast(Route, FakeRoute())


class Servers:
    def __init__(self, count: int = 1) -> None:
        self.count = count

    def __call__(self, endpoint: str) -> int:
        return self.count


def admission(servers: Servers | None = None, **settings: Any) -> Admission:
    return Admission(QueueSettings(**settings), servers or Servers())


async def waiting(admission: Admission, who: str, *, groups: tuple[str, ...] = ()) -> Any:
    """Start ``who``'s request; it waits (asserted) until let go."""
    task = asyncio.create_task(admission.enter(ROUTE, Asker(who, groups)))
    await asyncio.sleep(0)
    assert not task.done()
    return task


async def test_places_go_at_once_then_requests_wait_for_one_to_free() -> None:
    gate = admission()
    first = await gate.enter(ROUTE, Asker("a"))
    await gate.enter(ROUTE, Asker("a"))
    assert gate.would_wait(ROUTE.endpoint_name)
    third = await waiting(gate, "a")
    assert gate.waiting(ROUTE.endpoint_name) == 1
    first.release()
    first.release()  # once only
    slot: Slot = await asyncio.wait_for(third, 1)
    assert slot.waited_s >= 0 and gate.waiting(ROUTE.endpoint_name) == 0
    assert gate.gate(ROUTE).in_use == 2


async def test_the_light_user_goes_before_the_heavy_users_backlog() -> None:
    gate = admission()
    held = [await gate.enter(ROUTE, Asker("heavy", request_id=f"h{i}")) for i in range(2)]
    heavy = [await waiting(gate, "heavy") for _ in range(20)]
    light = await waiting(gate, "light")
    held.pop().release()
    await asyncio.wait_for(light, 1)  # the next place, not after twenty
    assert not any(t.done() for t in heavy)
    held.pop().release()
    await asyncio.wait_for(asyncio.shield(heavy[0]), 1)  # then the backlog, in order
    for task in heavy:
        task.cancel()


async def test_a_higher_class_overtakes_and_group_weights_apply() -> None:
    settings = {"classes": {"groups": {"physics": 1}}}
    gate = admission(Servers(1), **settings)
    held = [await gate.enter(ROUTE, Asker("low")) for _ in range(2)]
    low = await waiting(gate, "low")
    high = await waiting(gate, "vip", groups=("physics",))
    held[0].release()
    await asyncio.wait_for(high, 1)
    assert not low.done()
    assert gate.describe(ROUTE.endpoint_name, lambda u: True)["by_class"] == {"0": 1}
    low.cancel()


async def test_past_a_users_bound_and_the_models_bound_a_429_names_it() -> None:
    gate = admission(max_waiting_per_user=2, max_waiting=3)
    for _ in range(2):
        await gate.enter(ROUTE, Asker("a"))
    mine = [await waiting(gate, "a") for _ in range(2)]
    with pytest.raises(APIError) as refused:
        await gate.enter(ROUTE, Asker("a"))
    err = refused.value
    assert (err.status, err.code, err.extra["limit"]) == (
        429,
        "model_saturated",
        "queue.max_waiting_per_user",
    )
    assert "queue.max_waiting_per_user is 2" in err.message
    assert int(err.headers["Retry-After"]) >= 1
    other = await waiting(gate, "b")  # another user still has room
    with pytest.raises(APIError) as full:
        await gate.enter(ROUTE, Asker("c"))
    assert full.value.extra["limit"] == "queue.max_waiting" and "is 3" in full.value.message
    assert gate.describe(ROUTE.endpoint_name, lambda u: True)["refused"] == 2
    for task in (*mine, other):
        task.cancel()


async def test_a_wait_past_max_queue_wait_s_is_a_503() -> None:
    gate = admission(max_queue_wait_s=0.3)
    for _ in range(2):
        await gate.enter(ROUTE, Asker("a"))
    with pytest.raises(APIError) as late:
        await gate.enter(ROUTE, Asker("b"))
    assert (late.value.status, late.value.code) == (503, "queue_timeout")
    assert "queue.max_queue_wait_s is 0.3" in late.value.message
    assert gate.waiting(ROUTE.endpoint_name) == 0


async def test_a_client_that_leaves_leaves_the_queue_at_once() -> None:
    gate = admission()
    held = [await gate.enter(ROUTE, Asker("a")) for _ in range(2)]
    leaving = await waiting(gate, "b")
    staying = await waiting(gate, "c")
    leaving.cancel()
    await until(lambda: gate.waiting(ROUTE.endpoint_name) == 1, "one left waiting", 1)
    held[0].release()
    await asyncio.wait_for(staying, 1)
    assert gate.gate(ROUTE).in_use == 2


async def test_a_server_that_joins_takes_the_queue_and_none_lets_all_go() -> None:
    servers = Servers(1)
    gate = admission(servers)
    for _ in range(2):
        await gate.enter(ROUTE, Asker("a"))
    tasks = [await waiting(gate, "b") for _ in range(3)]
    servers.count = 2
    gate.wake(ROUTE.endpoint_name)
    await until(lambda: sum(t.done() for t in tasks) == 2, "two let go to the new server", 2)
    servers.count = 0  # no server left: the last goes the way a cold model's requests go
    await until(lambda: all(t.done() for t in tasks), "all let go", 3)


async def test_a_waiting_stream_is_told_its_place() -> None:
    gate = admission()
    for _ in range(2):
        await gate.enter(ROUTE, Asker("a"))
    notes: list[str] = []

    async def tell(note: str) -> None:
        notes.append(note)

    task = asyncio.create_task(gate.enter(ROUTE, Asker("b"), tell))
    await until(lambda: notes, "a note")
    assert notes[0].startswith("local/tiny-llama is full; place 1 of 1 waiting")
    task.cancel()


async def test_reported_tokens_charge_the_users_share() -> None:
    gate = admission(prompt_weight=1, completion_weight=2)
    slot = await gate.enter(ROUTE, Asker("a", request_id="r1", prompt_tokens=10))
    await gate.enter(ROUTE, Asker("b", request_id="r2", prompt_tokens=10))
    gate.charge("r1", prompt=12, completion=100)  # 10 at the start, 2 + 200 now
    gate.charge("r1", prompt=12, completion=100)  # once only
    counters = gate.gate(ROUTE).queue.counters
    assert counters == {"a": 212.0, "b": 10.0}  # r1's estimate, then the rest
    shares = gate.describe(ROUTE.endpoint_name, lambda user: user == "a")["shares"]
    assert shares == {"a": round(212 / 222, 3), "others": round(10 / 222, 3)}
    slot.release()


async def test_off_every_request_goes_at_once() -> None:
    gate = admission(enabled=False)
    slots = [await gate.enter(ROUTE, Asker("a")) for _ in range(10)]
    assert all(slot is FREE for slot in slots) and not gate.would_wait(ROUTE.endpoint_name)


def test_a_servers_places_are_its_max_num_seqs_or_its_frameworks_default() -> None:
    local, sophia = load_catalog(ROOT, "local"), load_catalog(ROOT, "sophia")
    table = RouteTable([local, sophia])
    assert table.lookup("local/tiny-llama", "local").places == 128  # vLLM's, without GPUs
    gpu = table.lookup("argonne-private/AuroraGPT-7B", "sophia")
    assert gpu.places == 256  # vLLM's on an A100 node
    assert table.lookup("nvidia/NV-Embed-v2", "sophia").places == 32  # Infinity's batch
    endpoint = gpu.entry.endpoint
    bounded = endpoint.model_copy(
        update={"server_args": endpoint.server_args.model_copy(update={"max_num_seqs": 48})}
    )
    assert replace(gpu, entry=replace(gpu.entry, endpoint=bounded)).places == 48
    flags = vllm_flags(bounded, sophia.profile)
    assert flags[flags.index("--max-num-seqs") + 1] == "48"
