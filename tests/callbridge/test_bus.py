from __future__ import annotations

import asyncio
from dataclasses import dataclass

from callbridge.bus import Bus, Lagged


@dataclass(frozen=True)
class Ping:
    n: int


@dataclass(frozen=True)
class Other:
    n: int


async def test_subscribers_get_the_types_they_asked_for_in_order() -> None:
    bus = Bus()
    pings = bus.subscribe(Ping)
    everything = bus.subscribe()
    for n in range(3):
        bus.publish(Ping(n))
        bus.publish(Other(n))
    assert [await pings.get() for _ in range(3)] == [Ping(0), Ping(1), Ping(2)]
    assert pings.get_nowait() is None
    assert [await everything.get() for _ in range(6)] == [
        Ping(0),
        Other(0),
        Ping(1),
        Other(1),
        Ping(2),
        Other(2),
    ]


async def test_a_slow_subscriber_loses_its_oldest_events_and_is_told_how_many() -> None:
    bus = Bus()
    slow = bus.subscribe(maxsize=10, name="slow")
    fast = bus.subscribe(maxsize=1000)
    for n in range(25):
        bus.publish(Ping(n))  # never blocks, whoever is behind
    assert await slow.get() == Lagged(15)
    assert [await slow.get() for _ in range(10)] == [Ping(n) for n in range(15, 25)]
    assert [await fast.get() for _ in range(25)] == [Ping(n) for n in range(25)]


async def test_a_waiting_subscriber_wakes_on_publish_and_ends_on_close() -> None:
    bus = Bus()
    sub = bus.subscribe(Ping)
    got: list[object] = []

    async def consume() -> None:
        async for event in sub:
            got.append(event)

    task = asyncio.create_task(consume())
    await asyncio.sleep(0)
    bus.publish(Ping(1))
    await asyncio.sleep(0)
    sub.close()
    await asyncio.wait_for(task, 1)
    assert got == [Ping(1)]
    bus.publish(Ping(2))  # a closed subscription gets nothing more
    assert sub.get_nowait() is None
