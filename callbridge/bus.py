"""The in-process event bus: typed events, publish never blocks, every subscriber has its own queue.

The interface is two calls, ``publish(event)`` and ``subscribe(*types)``, so that a broker (Redis
streams, NATS) can stand behind it when one host is not enough: events are frozen dataclasses of
plain values.

A subscriber that does not keep up loses the oldest events, not the newest, and learns how many
it lost (a ``Lagged`` item) so it can re-read the state it mirrors; the AMI reader and the other
subscribers never wait for it.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

DEFAULT_QUEUE_SIZE = 10_000


@dataclass(frozen=True, slots=True)
class Lagged:
    """Delivered to a subscriber in place of ``dropped`` events it was too slow to take."""

    dropped: int


class Subscription:
    """An async iterator over the events one subscriber asked for."""

    def __init__(self, bus: Bus, types: tuple[type, ...], maxsize: int, name: str) -> None:
        self._bus = bus
        self._types = types
        self._items: collections.deque[object] = collections.deque()
        self._maxsize = maxsize
        self._dropped = 0
        self._waiter: asyncio.Future[None] | None = None
        self._closed = False
        self.name = name

    def wants(self, event: object) -> bool:
        return not self._types or isinstance(event, self._types)

    def _put(self, event: object) -> None:
        if len(self._items) >= self._maxsize:
            self._items.popleft()
            if not self._dropped:
                log.warning("bus subscriber %s is lagging; dropping its oldest events", self.name)
            self._dropped += 1
        self._items.append(event)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def get_nowait(self) -> object | None:
        """The next item, or None if there is none right now."""
        if self._dropped:
            dropped, self._dropped = self._dropped, 0
            return Lagged(dropped)
        if self._items:
            return self._items.popleft()
        return None

    async def get(self) -> object:
        while True:
            item = self.get_nowait()
            if item is not None:
                return item
            if self._closed:
                raise StopAsyncIteration
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    def __aiter__(self) -> AsyncIterator[Any]:
        return self

    async def __anext__(self) -> Any:
        return await self.get()

    def close(self) -> None:
        self._closed = True
        self._bus._unsubscribe(self)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Bus:
    """Publish/subscribe of typed events within one process."""

    def __init__(self) -> None:
        self._subscriptions: list[Subscription] = []
        self._routes: dict[type, tuple[Subscription, ...]] = {}
        """Per event class, the subscriptions that want it, in subscription order: the model
        publishes a dozen changes per call, so ``isinstance`` is not asked again each time.
        Cleared whenever a subscription comes or goes."""

    def publish(self, event: object) -> None:
        kind = type(event)
        route = self._routes.get(kind)
        if route is None:
            route = self._routes[kind] = tuple(s for s in self._subscriptions if s.wants(event))
        for subscription in route:
            subscription._put(event)

    def subscribe(
        self, *types: type, maxsize: int = DEFAULT_QUEUE_SIZE, name: str = "subscriber"
    ) -> Subscription:
        """Events of the given types (all events if none), from now on."""
        subscription = Subscription(self, types, maxsize, name)
        self._subscriptions.append(subscription)
        self._routes.clear()
        return subscription

    def _unsubscribe(self, subscription: Subscription) -> None:
        if subscription in self._subscriptions:
            self._subscriptions.remove(subscription)
            self._routes.clear()
