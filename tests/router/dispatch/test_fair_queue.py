"""The fair queue's order: classes first, then the user served the fewest weighted tokens."""

from __future__ import annotations

import itertools

from inference_bundle.router.dispatch.fair_queue import FairQueue, Waiter

_clock = itertools.count()


def waiter(user: str, cost: float = 10.0, priority: int = 0, weight: float = 1.0) -> Waiter:
    return Waiter(user, priority, weight, cost, float(next(_clock)))


def drain(queue: FairQueue) -> list[str]:
    order = []
    while (w := queue.pop()) is not None:
        order.append(w.user)
    return order


def test_equal_demand_takes_turns() -> None:
    queue = FairQueue()
    for _ in range(5):
        queue.push(waiter("heavy"))
    for _ in range(5):
        queue.push(waiter("other"))
    assert drain(queue) == ["heavy", "other"] * 5


def test_a_light_user_waits_for_one_request_not_a_backlog() -> None:
    queue = FairQueue()
    for _ in range(64):
        queue.push(waiter("heavy"))
    for _ in range(10):  # the heavy user has been served a while
        queue.pop()
    light = waiter("light")
    queue.push(light)
    assert queue.place(light) == 1
    assert drain(queue)[0] == "light"


def test_time_away_is_not_banked_as_credit() -> None:
    queue = FairQueue()
    queue.charge("idle", 0.0)
    for _ in range(20):
        queue.push(waiter("busy"))
    for _ in range(10):
        queue.pop()  # busy's counter is 100 now; idle's still 0
    for _ in range(10):
        queue.push(waiter("idle"))
    # Lifted to busy's counter on arrival: they take turns, idle does not run ten in a row.
    order = drain(queue)
    assert order[:6].count("idle") == 3, order


def test_a_higher_class_goes_first_whatever_its_counters() -> None:
    queue = FairQueue()
    for _ in range(3):
        queue.push(waiter("low"))
    queue.charge("vip", 1e9)
    for _ in range(2):
        queue.push(waiter("vip", priority=1))
    assert drain(queue) == ["vip", "vip", "low", "low", "low"]


def test_a_weight_of_two_gets_twice_the_turns() -> None:
    queue = FairQueue()
    for _ in range(30):
        queue.push(waiter("double", weight=2.0))
        queue.push(waiter("single"))
    first = drain(queue)[:30]
    assert first.count("double") == 20 and first.count("single") == 10


def test_tokens_served_after_the_fact_move_a_user_back() -> None:
    queue = FairQueue()
    for _ in range(4):
        queue.push(waiter("long", cost=1))
        queue.push(waiter("short", cost=1))
    assert queue.pop().user == "long"  # type: ignore[union-attr]
    queue.charge("long", 1000)  # its answer was long
    assert drain(queue)[:3] == ["short"] * 3


def test_removal_places_and_counts() -> None:
    queue = FairQueue()
    a1, a2, b1 = waiter("a"), waiter("a"), waiter("b", priority=2)
    for w in (a1, a2, b1):
        queue.push(w)
    assert queue.waiting == 3 and queue.by_class() == {0: 2, 2: 1} and queue.by_user("a") == 2
    assert (queue.place(b1), queue.place(a1), queue.place(a2)) == (1, 2, 3)
    assert queue.remove(a1) and not queue.remove(a1)
    assert queue.waiting == 2 and queue.place(a2) == 2
    assert drain(queue) == ["b", "a"] and queue.waiting == 0 and queue.by_class() == {}
