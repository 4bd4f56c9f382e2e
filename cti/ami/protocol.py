"""Sans-IO AMI client connection: actions in, bytes out; bytes in, events and results out.

Rules:

Rule 1. Every action we send carries an ActionID made here (``<prefix>-<n>``) unless the caller
        gives one; responses are matched on it, never on order, because Asterisk interleaves
        events of unrelated calls and security events with responses.
Rule 2. A response with ``EventList: start`` opens a list: events carrying the same ActionID are
        gathered until one has ``EventList: Complete``; then one ``ActionResult`` holds the response
        and the list. Any other response completes its action at once.
Rule 3. Events that carry an ActionID but belong to no open list (``OriginateResponse``) are
        events like any other.
Rule 4. ``connection_lost()`` forgets every pending action and returns their ids: the transport
        layer fails them. Nothing is ever re-sent from here.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from cti.ami.codec import (
    DEFAULT_MAX_LINE,
    DEFAULT_MAX_MESSAGE,
    Banner,
    MessageReader,
    ProtocolViolation,
    format_action,
)
from cti.ami.message import Message, MessageKind


@dataclass(frozen=True, slots=True)
class ActionResult:
    """The outcome of one action: its response and, for list actions, the gathered events."""

    action_id: str
    action: str
    response: Message
    events: tuple[Message, ...] = ()
    complete: Message | None = None

    @property
    def ok(self) -> bool:
        return self.response.name.lower() in ("success", "follows", "goodbye")

    @property
    def message(self) -> str:
        return self.response.get("Message", "") or ""


@dataclass(frozen=True, slots=True)
class UnmatchedResponse:
    """A response whose ActionID we never sent (or none at all)."""

    response: Message


AMIEvent = Message | Banner | ActionResult | UnmatchedResponse | ProtocolViolation


@dataclass(slots=True)
class _Pending:
    action: str
    response: Message | None = None
    events: list[Message] = field(default_factory=list)


class AMIClientProtocol:
    """The client side of one AMI connection, without I/O."""

    def __init__(
        self,
        *,
        id_prefix: str = "cb",
        max_message: int = DEFAULT_MAX_MESSAGE,
        max_line: int = DEFAULT_MAX_LINE,
    ) -> None:
        self._reader = MessageReader(expect_banner=True, max_message=max_message, max_line=max_line)
        self._prefix = id_prefix
        self._ids = itertools.count(1)
        self._pending: dict[str, _Pending] = {}
        self._lists: dict[str, _Pending] = {}
        self._out = bytearray()
        self._events: list[AMIEvent] = []
        self.banner: Banner | None = None

    # --- sending ---------------------------------------------------------------------------------

    def send_action(
        self,
        name: str,
        fields: Mapping[str, str | Sequence[str]] | Sequence[tuple[str, str]] = (),
        *,
        action_id: str | None = None,
    ) -> str:
        """Queue an action for sending; returns its ActionID."""
        if action_id is None:
            action_id = f"{self._prefix}-{next(self._ids)}"
        elif action_id in self._pending:
            raise ValueError(f"ActionID {action_id!r} is already in flight")
        data = format_action(name, fields, action_id)
        self._pending[action_id] = _Pending(name)
        self._out += data
        return action_id

    def data_to_send(self) -> bytes:
        data = bytes(self._out)
        self._out.clear()
        return data

    @property
    def pending(self) -> list[str]:
        return list(self._pending)

    # --- receiving -------------------------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        items = self._reader.feed(data)
        if not items:
            return
        events = self._events
        pending = self._pending
        lists = self._lists
        event = MessageKind.EVENT
        for item in items:
            if type(item) is not Message:
                if type(item) is Banner:
                    self.banner = item
                events.append(item)
                continue
            kind = item.kind
            if kind is event:
                if lists and "ActionID" in item.text:
                    action_id = item.get("ActionID")
                    entry = lists.get(action_id) if action_id is not None else None
                    if entry is not None and action_id is not None:
                        if (item.get("EventList") or "").lower() == "complete":
                            del lists[action_id]
                            del pending[action_id]
                            assert entry.response is not None
                            events.append(
                                ActionResult(
                                    action_id, entry.action, entry.response, tuple(entry.events), item
                                )
                            )
                        else:
                            entry.events.append(item)
                        continue
                events.append(item)
            elif kind is MessageKind.RESPONSE:
                action_id = item.get("ActionID")
                entry = pending.get(action_id) if action_id is not None else None
                if entry is None or action_id is None or entry.response is not None:
                    events.append(UnmatchedResponse(item))
                elif (item.get("EventList") or "").lower() == "start":
                    entry.response = item
                    lists[action_id] = entry
                else:
                    del pending[action_id]
                    events.append(ActionResult(action_id, entry.action, item))
            else:
                events.append(ProtocolViolation("the PBX sent an Action", 0, item.text[:80]))

    def events_received(self) -> list[AMIEvent]:
        events = self._events
        self._events = []
        return events

    def connection_lost(self) -> list[str]:
        """Forget the connection; return the ActionIDs that will never get an answer."""
        lost = list(self._pending)
        self._pending.clear()
        self._lists.clear()
        self._out.clear()
        self._reader = MessageReader(
            expect_banner=True, max_message=self._reader.max_message, max_line=self._reader.max_line
        )
        self.banner = None
        return lost
