"""The screen-pop pipeline: call changes from the bus, through the tracker and the assembler, to
the agents' sockets.

One task takes the changes in bus order, so a pop's show, updates and retract reach the hub in
the order the PBX reported them; the only await is the customer lookup of a new pop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from callbridge.bus import Bus, Lagged, Subscription
from cti.model import CallChanged
from customers.store import CustomerStore
from screenpop import PopAssembler, PopHub, PopTracker, ShowPop

log = logging.getLogger(__name__)


class PopPipeline:
    def __init__(
        self, bus: Bus, store: CustomerStore, hub: PopHub, *, clock: Callable[[], float] = time.time
    ) -> None:
        self.tracker = PopTracker()
        self.assembler = PopAssembler(store)
        self.hub = hub
        self._bus = bus
        self._clock = clock
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        subscription = self._bus.subscribe(CallChanged, name="screen-pops")
        self._task = asyncio.create_task(self._run(subscription), name="screen-pops")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _run(self, subscription: Subscription) -> None:
        async for event in subscription:
            if isinstance(event, Lagged):
                log.warning("screen-pops fell %d call changes behind; pops may be stale", event.dropped)
                continue
            now = self._clock()
            for command in self.tracker.apply(event, now):
                try:
                    payload = await self.assembler.assemble(command) if isinstance(command, ShowPop) else None
                    await self.hub.publish(command, payload, t0=now if isinstance(command, ShowPop) else None)
                except Exception:
                    log.exception("pop %s for agent %s not delivered", command.pop_id, command.agent_id)
