"""The service: one object that owns the bus, the call model and the PBX adapter.

``Service`` is shared by ``callbridge serve``, ``callbridge demo`` and the tests, so what the tests
start is what production runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from callbridge.bus import Bus, Lagged, Subscription
from callbridge.console import format_change
from callbridge.settings import Settings
from cti.ami.client import AMIClient
from cti.asterisk import AsteriskCTI
from cti.model import AgentConfig, CallModel, QueueConfig

log = logging.getLogger("callbridge.calls")


class Service:
    def __init__(self, settings: Settings, *, bus: Bus | None = None) -> None:
        self.settings = settings
        self.bus = bus or Bus()
        self.model = CallModel(
            agents=[AgentConfig(a.id, a.name, a.interfaces) for a in settings.agents],
            queues=[QueueConfig(q.name, q.wrapup) for q in settings.queues],
        )
        self.client = AMIClient(settings.ami)
        self.cti = AsteriskCTI(self.client, self.model, self.bus.publish, name=settings.pbx_name)
        self._log_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        subscription = self.bus.subscribe(name="call-log")
        self._log_task = asyncio.create_task(self._log_changes(subscription), name="call-log")
        await self.cti.start()

    async def stop(self) -> None:
        await self.cti.stop()
        task, self._log_task = self._log_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def __aenter__(self) -> Service:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _log_changes(self, subscription: Subscription) -> None:
        """One INFO line per call, agent or queue lifecycle change."""
        with subscription:
            async for event in subscription:
                if isinstance(event, Lagged):
                    log.warning("call log fell behind; %d changes not logged", event.dropped)
                    continue
                line = format_change(event)
                if line is not None:
                    log.info("%s", line, extra=_log_context(event))


def _log_context(event: object) -> dict[str, str]:
    """Ids for structured logs: the call, the agent and the queue the change is about."""
    call = getattr(event, "call", None)
    agent = getattr(event, "agent", None)
    queue = getattr(event, "queue", None)
    context = {}
    if call is not None:
        context["call_id"] = call.id
        if call.agent:
            context["agent_id"] = call.agent
        if call.queue:
            context["queue"] = call.queue
    if agent is not None and not isinstance(agent, str):
        context["agent_id"] = agent.id
    if queue is not None and not isinstance(queue, str):
        context["queue"] = queue.name
    return context
