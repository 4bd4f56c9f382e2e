"""The screen-pop pipeline: call changes from the bus, through the tracker and the assembler, to
the agents' sockets.

One task takes the changes in bus order, so a pop's show, updates and retract reach the hub in
the order the PBX reported them; the only await is the customer lookup of a new pop. The
wrap-up desk and the webhooks are told of each command after the hub, without awaiting: their
own tasks do the network work, so neither can delay a pop.
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
    ) -> None:
        self.tracker = PopTracker()
        self.assembler = PopAssembler(store)
        self.hub = hub
        self.wrapup = wrapup
        self.webhooks = webhooks
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
                payload: dict[str, Any] | None = None
                try:
                    payload = await self.assembler.assemble(command) if isinstance(command, ShowPop) else None
                    await self.hub.publish(command, payload, t0=now if isinstance(command, ShowPop) else None)
                except Exception:
                    log.exception("pop %s for agent %s not delivered", command.pop_id, command.agent_id)
                self._tell_others(command, payload, now)
            if self.wrapup is not None:
                try:
                    self.wrapup.observe_call(event.call, now)
                except Exception:
                    log.exception("call %s: the wrap-up desk missed a change", event.call.id)

    def _tell_others(self, command: PopCommand, payload: Mapping[str, Any] | None, now: float) -> None:
        if self.wrapup is not None:
            try:
                self.wrapup.observe(command, payload, now)
            except Exception:
                log.exception("pop %s: the wrap-up desk missed it", command.pop_id)
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
