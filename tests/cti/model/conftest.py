"""Replaying real Asterisk captures through the real codec into a ``CallModel``.

Every message gets the time its capture recorded for it (the ``.jsonl`` record), so a replay does
not depend on how the bytes were cut into reads: the captured TCP chunks and any re-chunking
must give the same changes.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import pytest

from callbridge.captures import load_capture, load_messages
from cti.ami.codec import MessageReader
from cti.ami.message import Message, MessageKind
from cti.model import AgentChanged, AgentConfig, Call, CallChanged, CallModel, ModelChange, QueueChanged

# Login-only sessions: no call, no queue, nothing for the model.
LOGIN_ONLY = ("actions_login_failed", "actions_login_md5")
MODEL_CAPTURES = (
    "queue_answered",
    "queue_ring_noanswer_then_answer",
    "queue_abandon",
    "direct_dial",
    "originate_answered",
    "originate_noanswer",
    "originate_busy",
    "originate_congestion",
    "blind_transfer",
    "blind_transfer_action",
    "hold_moh",
    "ivr_agi",
    "ivr_agi_hangup",
    "ivr_async_agi",
    "ivr_queue_answered",
    "load_50",
    "queue_member_admin",
    "actions",
    "click_to_dial_answered",
    "click_to_dial_busy",
    "click_to_dial_noanswer",
)


@dataclass
class Replay:
    model: CallModel
    changes: list[tuple[float, ModelChange]] = field(default_factory=list)
    messages: list[tuple[float, Message]] = field(default_factory=list)

    def calls(self, change: str | None = None) -> list[Call]:
        return [c.call for _, c in self.changes if isinstance(c, CallChanged) and change in (None, c.change)]

    def call_events(self) -> list[CallChanged]:
        return [c for _, c in self.changes if isinstance(c, CallChanged)]

    def when(self, change: str, nth: int = 0) -> float:
        """Time of the ``nth`` call change named ``change``."""
        return [t for t, c in self.changes if isinstance(c, CallChanged) and c.change == change][nth]

    def agent_changes(self, agent_id: str) -> list[AgentChanged]:
        return [c for _, c in self.changes if isinstance(c, AgentChanged) and c.agent.id == agent_id]

    def queue_changes(self, name: str) -> list[QueueChanged]:
        return [c for _, c in self.changes if isinstance(c, QueueChanged) and c.queue.name == name]

    def only_call(self) -> Call:
        ended = self.model.ended_calls()
        assert len(ended) == 1, [c.id for c in ended]
        return ended[0]


def message_times(name: str) -> list[float]:
    return [r["t"] for r in load_messages(name) if r["dir"] == "in" and "msg" in r]


def list_items(name: str) -> dict[str, list[Message]]:
    """The events of each list action in a capture (``CoreShowChannel``, ``QueueMember`` ...) by ActionID."""
    items: dict[str, list[Message]] = {}
    reader = MessageReader()
    for item in reader.feed(load_capture(name).stream_in()):
        if not isinstance(item, Message) or item.kind is not MessageKind.EVENT or not item.action_id:
            continue
        # List items carry their action's ActionID; the list's end has "EventList: Complete".
        if item.get("EventList") is None and item.name != "OriginateResponse":
            items.setdefault(item.action_id, []).append(item)
    return items


def captured_chunks(name: str) -> list[bytes]:
    return [c.data for c in load_capture(name).chunks if c.direction == "in" and c.data is not None]


def random_chunks(name: str, seed: int) -> list[bytes]:
    """The same bytes cut at random places: single bytes, splits inside lines and UTF-8, big reads."""
    data = load_capture(name).stream_in()
    rng = random.Random(seed)
    chunks = []
    pos = 0
    while pos < len(data):
        size = rng.choice((1, 2, 3, rng.randint(4, 64), rng.randint(64, 1500), rng.randint(1500, 9000)))
        chunks.append(data[pos : pos + size])
        pos += size
    return chunks


def replay_messages(
    name: str,
    chunks: Iterable[bytes],
    model: CallModel,
    stop: Callable[[Message], bool] | None = None,
    before: Callable[[Message, float], list[ModelChange]] | None = None,
) -> Iterator[tuple[float, Message, list[ModelChange]]]:
    """Feed the chunks to a real ``MessageReader`` and each message to the model, with its time.

    ``before(message, now)`` runs before each message is applied (a resync, say); what it returns
    is reported with that message's changes.
    """
    times = message_times(name)
    reader = MessageReader()
    index = 0
    for chunk in chunks:
        for item in reader.feed(chunk):
            if not isinstance(item, Message):
                continue
            now = times[index]
            index += 1
            if stop is not None and stop(item):
                return
            early = before(item, now) if before is not None else []
            yield now, item, early + model.apply(item, now)
    assert index == len(times), f"{name}: read {index} messages, the capture has {len(times)}"


ReplayFactory = Callable[..., Replay]


@pytest.fixture
def replay() -> ReplayFactory:
    def run(
        name: str,
        *,
        seed: int | None = None,
        agents: Iterable[AgentConfig] = (),
        model: CallModel | None = None,
        stop: Callable[[Message], bool] | None = None,
        before: Callable[[Message, float], list[ModelChange]] | None = None,
    ) -> Replay:
        chunks = captured_chunks(name) if seed is None else random_chunks(name, seed)
        result = Replay(model if model is not None else CallModel(agents=agents))
        for now, msg, changes in replay_messages(name, chunks, result.model, stop, before):
            result.messages.append((now, msg))
            result.changes.extend((now, change) for change in changes)
        return result

    return run
