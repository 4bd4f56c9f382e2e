"""The screen-pop pipeline: call changes from the bus, through the tracker and the assembler, to
the agents' sockets.

One task takes the changes in bus order and runs the tracker on them, never awaiting. When it
falls so far behind that the bus drops changes (``Lagged``), it does not guess: it reads every
call it has pops for, and every live call, from the call model and gives the tracker those
snapshots, so pops of calls whose changes were dropped are shown, updated or retracted all the
same. A new pop's
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

from callbridge.bus import DEFAULT_QUEUE_SIZE, Bus, Lagged, Subscription
from cti.model import Call, CallChanged, CallModel, CallState
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

_BEFORE_A_RING = frozenset({CallState.ROUTING, CallState.QUEUED, CallState.IVR})

_YIELD_EVERY = 32
"""Changes the pipeline takes in a row without a turn of the event loop when none starts a
delivery (see ``PopPipeline._run``)."""


class PopPipeline:
    def __init__(
        self,
        bus: Bus,
        store: CustomerStore,
        hub: PopHub,
        *,
        wrapup: WrapupService | None = None,
        webhooks: Webhooks | None = None,
        model: CallModel | None = None,
        clock: Callable[[], float] = time.time,
        max_assembling: int = 64,
        queue_size: int = DEFAULT_QUEUE_SIZE,
        mask_ivr_input: bool = False,
    ) -> None:
        """``model``: where to read the calls from after the bus dropped changes; ``queue_size``:
        how many changes the bus keeps for this pipeline before it drops the oldest;
        ``mask_ivr_input``: the tracker's Rule 9."""
        self.tracker = PopTracker(mask_ivr_input=mask_ivr_input)
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
        self._model = model
        self._queue_size = queue_size
        self._pops_of_call: dict[str, set[str]] = {}
        """Live pop ids per call id, from the commands: the calls a resync must look at."""
        self._call_of_pop: dict[str, str] = {}
        self._prefetched: set[str] = set()
        """Live calls whose caller was looked up early."""

    async def start(self) -> None:
        subscription = self._bus.subscribe(CallChanged, maxsize=self._queue_size, name="screen-pops")
        self._task = asyncio.create_task(self._run(subscription), name="screen-pops")

    async def stop(self) -> None:
        task, self._task = self._task, None
        tasks = [t for t in (task, *self._chains.values()) if t is not None]
        self._chains.clear()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _run(self, subscription: Subscription) -> None:
        unyielded = 0
        async for event in subscription:
            now = self._clock()
            if isinstance(event, Lagged):
                self._resync(event.dropped, now)
                continue
            started = self._apply_now(event, now)
            unyielded += 1
            if started or unyielded >= _YIELD_EVERY:
                # Let the deliveries just started run before the next change (a burst of changes
                # otherwise starts every lookup before the first one's answer is published). Most
                # changes start none (a call's Newstate, bridge, queue facts): those need no turn
                # of the loop, but a long backlog of them still yields now and then.
                unyielded = 0
                await asyncio.sleep(0)

    def _resync(self, dropped: int, now: float) -> None:
        if self._model is None:
            log.warning("screen-pops fell %d call changes behind; pops may be stale", dropped)
            return
        call_ids = set(self._pops_of_call) | {call.id for call in self._model.live_calls()}
        lost = 0
        for call_id in call_ids:
            call = self._model.get_call(call_id)
            if call is None:
                lost += 1
                continue
            self._apply_now(CallChanged(call, "resync"), now)
        log.warning(
            "screen-pops fell %d call changes behind; pops resynced from the call model (%d calls%s)",
            dropped,
            len(call_ids) - lost,
            f", {lost} gone from its history" if lost else "",
        )

    def _apply_now(self, event: CallChanged, now: float) -> int:
        """The tracker's commands for ``event``, each started on its way; nothing awaited.
        Returns how many deliveries were started."""
        self._prefetch(event.call)
        commands = self.tracker.apply(event, now)
        started = 0
        for command in commands:
            self._count(command)
            self._tell_wrapup(command, now)
            before = self._chains.get(command.pop_id)
            if before is None:
                # Nothing of this pop in flight (its show was published long ago): an update
                # or a retract needs no lookup, so it is published now, in bus order, without
                # a task of its own (two per call); so is a show whose caller's early lookup is
                # in (Rule 5 of ``screenpop.assembly``): a turn of the loop less on its way.
                if not isinstance(command, ShowPop):
                    self._publish_now(command, None, None)
                    continue
                payload = self.assembler.assemble_now(command)
                if payload is not None:
                    self._publish_now(command, payload, now)
                    continue
            started += 1
            chain = asyncio.create_task(self._deliver(command, now, before), name=f"pop-{command.pop_id}")
            self._chains[command.pop_id] = chain
            chain.add_done_callback(self._chain_done(command.pop_id))
        if self.wrapup is not None:
            try:
                self.wrapup.observe_call(event.call, now)
            except Exception:
                log.exception("call %s: the wrap-up desk missed a change", event.call.id)
        return started

    def _prefetch(self, call: Call) -> None:
        """An inbound call that has not rung an agent yet (in the dialplan, an IVR or a queue):
        look its caller up now (``PopAssembler.prefetch``), so the ring's pop does not wait for
        the store. A call that ends without taking the answer (self-service in the IVR, an
        abandon) lets it go."""
        if call.state is CallState.ENDED:
            if call.id in self._prefetched:
                self._prefetched.discard(call.id)
                if call.caller_num:
                    self.assembler.forget(call.caller_num)
        elif (
            call.state in _BEFORE_A_RING
            and call.direction == "inbound"
            and call.caller_num
            and call.id not in self._prefetched
        ):
            if len(self._prefetched) > 10_000:  # ends the bus dropped: forget rather than grow
                self._prefetched.clear()
            self._prefetched.add(call.id)
            self.assembler.prefetch(call.caller_num)

    def _count(self, command: PopCommand) -> None:
        if isinstance(command, ShowPop):
            self._pops_of_call.setdefault(command.call_id, set()).add(command.pop_id)
            self._call_of_pop[command.pop_id] = command.call_id
        elif isinstance(command, RetractPop):
            call_id = self._call_of_pop.pop(command.pop_id, None)
            if call_id is None:
                return
            pops = self._pops_of_call.get(call_id)
            if pops is not None:
                pops.discard(command.pop_id)
                if not pops:
                    del self._pops_of_call[call_id]

    def _chain_done(self, pop_id: str) -> Callable[[asyncio.Task[None]], None]:
        def done(task: asyncio.Task[None]) -> None:
            if self._chains.get(pop_id) is task:
                del self._chains[pop_id]

        return done

    async def _deliver(self, command: PopCommand, now: float, before: asyncio.Task[None] | None) -> None:
        """Publish ``command`` after the pop's earlier delivery; a show is assembled first."""
        if before is not None and not before.done():
            # ``wait``, not ``gather``: lighter, and it never raises the earlier delivery's error
            # (``_deliver`` logs its own) nor its cancellation into this one.
            await asyncio.wait((before,))
        payload: dict[str, Any] | None = None
        try:
            if isinstance(command, ShowPop):
                async with self._slots:
                    payload = await self.assembler.assemble(command)
            await self.hub.publish(command, payload, t0=now if isinstance(command, ShowPop) else None)
        except Exception:
            log.exception("pop %s for agent %s not delivered", command.pop_id, command.agent_id)
        self._published(command, payload)

    def _publish_now(self, command: PopCommand, payload: dict[str, Any] | None, t0: float | None) -> None:
        """What ``_deliver`` does, for a command whose payload is at hand and nothing to wait for."""
        try:
            self.hub.publish_now(command, payload, t0=t0)
        except Exception:
            log.exception("pop %s for agent %s not delivered", command.pop_id, command.agent_id)
        self._published(command, payload)

    def _published(self, command: PopCommand, payload: dict[str, Any] | None) -> None:
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
