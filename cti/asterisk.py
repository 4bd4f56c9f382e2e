"""The Asterisk adapter: AMI events into the call model, model changes onto the bus.

On every (re)connect it resyncs: it asks the PBX for ``CoreShowChannels`` and ``QueueStatus``
and hands both lists to ``CallModel.resync``, which ends the calls the PBX no longer has (a
restarted Asterisk has none) and rebuilds agents and queues. Events that arrive while the lists
are being fetched are held and applied after the snapshot, in order: a ``Hangup`` that came in
meanwhile still ends its call, a ``Newchannel`` already in the snapshot only updates it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from cti.ami.client import AMIClient, Connected, Disconnected, LifecycleEvent, LoginFailed
from cti.ami.codec import AMIError
from cti.ami.message import Message
from cti.model import CallModel

log = logging.getLogger(__name__)

Publish = Callable[[object], None]
TICK_INTERVAL = 0.5


@dataclass(frozen=True, slots=True)
class PBXConnected:
    """The adapter has a logged-in link to the PBX."""

    pbx: str
    session: int


@dataclass(frozen=True, slots=True)
class PBXDisconnected:
    pbx: str
    reason: str
    failed_actions: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class PBXLoginFailed:
    pbx: str
    reason: str


@dataclass(frozen=True, slots=True)
class PBXResynced:
    """The model was rebuilt from the PBX's own lists after a (re)connect."""

    pbx: str
    session: int
    channels: int
    calls: int
    ended_calls: int
    agents: int
    queues: int


class AsteriskCTI:
    """Feeds one Asterisk's AMI stream into a ``CallModel`` and publishes the model's changes."""

    def __init__(
        self,
        client: AMIClient,
        model: CallModel,
        publish: Publish,
        *,
        name: str = "asterisk",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.client = client
        self.model = model
        self.name = name
        self._publish = publish
        self._clock = clock
        self._held: list[Message] | None = None
        self._resync_task: asyncio.Task[None] | None = None
        self._tick_task: asyncio.Task[None] | None = None
        client.add_listener(self._on_item)

    async def start(self) -> None:
        self._tick_task = asyncio.create_task(self._tick(), name="model-tick")
        await self.client.start()

    async def stop(self) -> None:
        tasks = [t for t in (self._resync_task, self._tick_task) if t is not None]
        self._resync_task = self._tick_task = None
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.client.stop()

    async def _tick(self) -> None:
        """Time passing changes the model too: wrap-up ends without any event from the PBX."""
        while True:
            await asyncio.sleep(TICK_INTERVAL)
            for change in self.model.tick(self._clock()):
                self._publish(change)

    def _on_item(self, item: Message | LifecycleEvent) -> None:
        if type(item) is Message:
            if self._held is not None:
                self._held.append(item)
                return
            # ``_apply`` inlined: this runs for every event of the PBX.
            try:
                changes = self.model.apply(item, self._clock())
            except Exception:
                log.exception("call model failed on %s: %.300r", item.name, item.text)
                return
            for change in changes:
                self._publish(change)
        elif isinstance(item, Connected):
            self._held = []
            self._publish(PBXConnected(self.name, item.session))
            self._resync_task = asyncio.create_task(self._resync(item.session), name="ami-resync")
        elif isinstance(item, Disconnected):
            self._held = None
            self._publish(PBXDisconnected(self.name, item.reason, item.failed_actions))
        elif isinstance(item, LoginFailed):
            self._publish(PBXLoginFailed(self.name, item.reason))

    def _apply(self, message: Message) -> None:
        try:
            changes = self.model.apply(message, self._clock())
        except Exception:
            log.exception("call model failed on %s: %.300r", message.name, message.text)
            return
        for change in changes:
            self._publish(change)

    async def _resync(self, session: int) -> None:
        try:
            channels = await self.client.send_action("CoreShowChannels")
            queues = await self.client.send_action("QueueStatus")
        except AMIError as exc:
            # A dropped link clears the held events itself (Disconnected); an action that timed
            # out on a live link must not lose the events held meanwhile.
            log.warning("resync after connect failed: %s; going on with live events on the last state", exc)
            self._release_held()
            return
        try:
            self._rebuild(session, channels.events, queues.events)
        except Exception:
            log.exception("resync of the call model failed; going on with live events on the last state")
            self._release_held()

    def _release_held(self) -> None:
        held, self._held = self._held or [], None
        for message in held:
            self._apply(message)

    def _rebuild(self, session: int, channels: tuple[Message, ...], queues: tuple[Message, ...]) -> None:
        before = len(self.model.live_calls())
        changes = self.model.resync(list(channels), list(queues), self._clock())
        for change in changes:
            self._publish(change)
        self._release_held()
        calls = len(self.model.live_calls())
        ended = sum(1 for c in changes if getattr(c, "change", "") == "ended")
        event = PBXResynced(
            self.name,
            session,
            len(channels),
            calls,
            ended,
            len(self.model.agents()),
            len(self.model.queues()),
        )
        log.info(
            "resynced from %s (session %d): %d channels, %d live calls (%d before), %d ended as gone, "
            "%d agents, %d queues",
            self.name,
            session,
            event.channels,
            calls,
            before,
            ended,
            event.agents,
            event.queues,
        )
        self._publish(event)
