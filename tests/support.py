"""Helpers shared by the tests that watch the bus."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from callbridge.bus import Lagged, Subscription
from cti.model import CallChanged, CallState


async def until(sub: Subscription, predicate: Callable[[Any], bool], timeout: float = 20) -> list[Any]:
    """Take bus events until one satisfies ``predicate``; return all taken, that one last."""
    taken: list[Any] = []
    async with asyncio.timeout(timeout):
        async for event in sub:
            assert not isinstance(event, Lagged)
            taken.append(event)
            if predicate(event):
                return taken
    raise AssertionError("bus closed")


def call_in(state: CallState, **facts: object) -> Callable[[Any], bool]:
    """A predicate: a ``CallChanged`` whose call is in ``state`` with these attribute values."""

    def check(event: Any) -> bool:
        if not isinstance(event, CallChanged) or event.call.state is not state:
            return False
        return all(getattr(event.call, k) == v for k, v in facts.items())

    return check
