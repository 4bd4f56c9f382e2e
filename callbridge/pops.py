"""The screen-pop pipeline: call changes from the bus, through the tracker and the assembler, to
the agents' sockets.

One task takes the changes in bus order and runs the tracker on them, never awaiting. A new pop's
customer lookup runs in a task of its own, so many pops are assembled at once and a slow lookup
delays only its own pop; the pop's updates and retract wait for it (chained per pop id), so each
pop's show, updates and retract reach the hub in the order the PBX reported them. At most
``max_assembling`` lookups run at once; past that, a new pop waits for a free slot. The wrap-up
desk and the webhooks are told of each command after the hub, without awaiting: their own tasks
do the network work, so neither can delay a pop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from callbridge.bus import Bus, Lagged, Subscription
from cti.model import CallChanged
from customers.store import CustomerStore
from screenpop import (
    PopAssembler,
    PopCommand,
    PopHub,
    PopTracker,
    RetractPop,
    ShowPop,
    UpdatePop,
    Webhooks,
    WrapupService,
)

log = logging.getLogger(__name__)


class PopPipeline:
    def __init__(
        self,
        bus: Bus,
        store: CustomerStore,
        hub: PopHub,
        *,
        wrapup: WrapupService | None = None,
        webhooks: Webhooks | None = None,
        clock: Callable[[], float] = time.time,
        max_assembling: int = 64,
    ) -> None:
        self.tracker = PopTracker()
        self.assembler = PopAssembler(store)
        self.hub = hub
        self.wrapup = wrapup
        self.webhooks = webhooks
        self._bus = bus
        self._clock = clock
        self._task: asyncio.Task[None] | None = None
        self._chains: dict[str, asyncio.Task[None]] = {}
        """Per pop id, the last delivery not done yet (its show still being assembled)."""
        self._slots = asyncio.Semaphore(max_assembling)

    async def start(self) -> None:
        subscription = self._bus.subscribe(CallChanged, name="screen-pops")
        self._task = asyncio.create_task(self._run(subscription), name="screen-pops")

    async def stop(self) -> None:
        task, self._task = self._task, None
        tasks = [t for t in (task, *self._chains.values()) if t is not None]
        self._chains.clear()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _run(self, subscription: Subscription) -> None:
        async for event in subscription:
            if isinstance(event, Lagged):
                log.warning("screen-pops fell %d call changes behind; pops may be stale", event.dropped)
                continue
            now = self._clock()
            for command in self.tracker.apply(event, now):
                self._tell_wrapup(command, now)
                before = self._chains.get(command.pop_id)
                if before is None and not isinstance(command, ShowPop):
                    await self._deliver(command, now, None)
                    continue
                chain = asyncio.create_task(self._deliver(command, now, before), name=f"pop-{command.pop_id}")
                self._chains[command.pop_id] = chain
                chain.add_done_callback(self._chain_done(command.pop_id))
            if self.wrapup is not None:
                try:
                    self.wrapup.observe_call(event.call, now)
                except Exception:
                    log.exception("call %s: the wrap-up desk missed a change", event.call.id)

    def _chain_done(self, pop_id: str) -> Callable[[asyncio.Task[None]], None]:
        def done(task: asyncio.Task[None]) -> None:
            if self._chains.get(pop_id) is task:
                del self._chains[pop_id]

        return done

    async def _deliver(self, command: PopCommand, now: float, before: asyncio.Task[None] | None) -> None:
        """Publish ``command`` after the pop's earlier delivery; a show is assembled first."""
        if before is not None:
            await asyncio.gather(before, return_exceptions=True)
        payload: dict[str, Any] | None = None
        try:
            if isinstance(command, ShowPop):
                async with self._slots:
                    payload = await self.assembler.assemble(command)
            await self.hub.publish(command, payload, t0=now if isinstance(command, ShowPop) else None)
        except Exception:
            log.exception("pop %s for agent %s not delivered", command.pop_id, command.agent_id)
        customer = payload.get("customer") if payload is not None else None
        if self.wrapup is not None and isinstance(customer, Mapping) and isinstance(customer.get("id"), str):
            self.wrapup.customer_found(command.pop_id, customer["id"])
        self._tell_webhooks(command, payload)

    def _tell_wrapup(self, command: PopCommand, now: float) -> None:
        """In bus order, before any await: the desk's record of a pop exists before the call's
        later changes (``observe_call``) reach it; the customer follows with the payload."""
        if self.wrapup is not None:
            try:
                self.wrapup.observe(command, None, now)
            except Exception:
                log.exception("pop %s: the wrap-up desk missed it", command.pop_id)

    def _tell_webhooks(self, command: PopCommand, payload: Mapping[str, Any] | None) -> None:
        if self.webhooks is not None:
            try:
                self.webhooks.publish(*webhook_event(command, payload))
            except Exception:
                log.exception("pop %s: not sent to the webhooks", command.pop_id)


def webhook_event(command: PopCommand, payload: Mapping[str, Any] | None) -> tuple[str, dict[str, Any]]:
    """The webhook event name and data of one pop command (docs/webhooks.md)."""
    if isinstance(command, ShowPop):
        return "pop", {
            "pop_id": command.pop_id,
            "agent_id": command.agent_id,
            "call_id": command.call_id,
            "facts": command.facts,
            "payload": dict(payload) if payload is not None else None,
        }
    if isinstance(command, UpdatePop):
        data: dict[str, Any] = {
            "pop_id": command.pop_id,
            "agent_id": command.agent_id,
            "reason": str(command.reason),
            "facts": command.facts,
        }
        if payload is not None:
            data["payload"] = dict(payload)
        return "update", data
    assert isinstance(command, RetractPop)
    return "retract", {"pop_id": command.pop_id, "agent_id": command.agent_id, "reason": str(command.reason)}
