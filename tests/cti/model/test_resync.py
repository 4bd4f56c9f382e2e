"""After a reconnect: the model rebuilt from CoreShowChannels + QueueStatus (the ``actions`` capture).

In that capture two calls are up when the lists are taken: Jane Doe talking to Alice (support) and
"DAVIS ROBERT" waiting in billing, where Eve is paused for "Training".
"""

from __future__ import annotations

import pytest

from callbridge.captures import load_capture
from cti.ami.codec import MessageReader
from cti.ami.message import Message
from cti.model import GONE_AFTER_RESYNC, AgentStatus, Call, CallChanged, CallModel, CallState, ModelChange

from .conftest import Replay, ReplayFactory, list_items, message_times

CORE_SHOW_CHANNELS = "actions-0008"
QUEUE_STATUS = "actions-0011"


@pytest.fixture(scope="module")
def lists() -> tuple[list[Message], list[Message]]:
    items = list_items("actions")
    channels = items[CORE_SHOW_CHANNELS]
    queue_status = items[QUEUE_STATUS]
    assert [m.name for m in channels] == ["CoreShowChannel"] * 6
    assert {m.name for m in queue_status} == {"QueueParams", "QueueMember", "QueueEntry"}
    return channels, queue_status


def _until_lists(replay: ReplayFactory) -> Replay:
    """The event stream up to the moment the CoreShowChannels list was read."""
    return replay("actions", stop=lambda m: m.name == "CoreShowChannel")


def _facts(call: Call) -> tuple[object, ...]:
    live_legs = sorted(leg.uniqueid for leg in call.legs if not leg.ended)
    return (
        call.id,
        call.state,
        call.direction,
        call.caller_num,
        call.caller_name,
        call.dialed,
        call.queue,
        call.queue_position,
        call.agent,
        call.agent_interface,
        call.ringing_agents,
        live_legs,
    )


def test_resync_of_a_fresh_model_gives_the_streamed_calls(
    replay: ReplayFactory, lists: tuple[list[Message], list[Message]]
) -> None:
    streamed = _until_lists(replay)
    now = streamed.messages[-1][0]
    expected = sorted((_facts(c) for c in streamed.model.live_calls()), key=str)
    assert [(f[1], f[6]) for f in expected] == [
        (CallState.CONNECTED, "support"),
        (CallState.QUEUED, "billing"),
    ]

    fresh = CallModel()
    changes = fresh.resync(*lists, now)
    assert sorted((_facts(c) for c in fresh.live_calls()), key=str) == expected
    assert sorted(c.call.id for c in changes if isinstance(c, CallChanged)) == sorted(
        str(f[0]) for f in expected
    )
    assert all(c.change == "resync" for c in changes if isinstance(c, CallChanged))

    jane = next(c for c in fresh.live_calls() if c.caller_name == "Jane Doe")
    assert jane.agents == ("agent1",) and jane.answered_at is None, "the answer itself was not seen"
    assert jane.started_at == pytest.approx(now - 3)  # Duration: 00:00:03
    davis = next(c for c in fresh.live_calls() if c.caller_name == "DAVIS ROBERT")
    assert davis.queued_at == pytest.approx(now - 1)  # QueueEntry Wait: 1

    alice, eve = fresh.agent("agent1"), fresh.agent("agent5")
    assert alice is not None and eve is not None
    assert (alice.status, alice.call_id) == (AgentStatus.ON_CALL, jane.id)
    assert (eve.status, eve.paused_reason, eve.paused_queues) == (
        AgentStatus.PAUSED,
        "Training",
        ("billing",),
    )
    assert set(eve.queues) == {"billing", "callcenter"}
    billing = fresh.queue("billing")
    assert billing is not None
    assert billing.waiting == (davis.id,) and billing.strategy == "ringall"
    assert {q.name for q in fresh.queues()} == {"billing", "support", "callcenter", "sales"}


def test_resync_of_an_up_to_date_model_changes_no_call(
    replay: ReplayFactory, lists: tuple[list[Message], list[Message]]
) -> None:
    streamed = _until_lists(replay)
    now = streamed.messages[-1][0]
    before = {c.id: c for c in streamed.model.live_calls()}
    changes = streamed.model.resync(*lists, now)
    assert not [c for c in changes if isinstance(c, CallChanged) and c.change == "ended"]
    after = {c.id: c for c in streamed.model.live_calls()}
    assert {k: _facts(v) for k, v in after.items()} == {k: _facts(v) for k, v in before.items()}
    # What only the events could tell survives.
    for call_id, call in after.items():
        assert call.started_at == before[call_id].started_at
        assert call.queued_at == before[call_id].queued_at
        assert call.answered_at == before[call_id].answered_at
        assert call.originate_id == before[call_id].originate_id

    fresh = CallModel()
    fresh.resync(*lists, now)
    for agent in fresh.agents():
        mine = streamed.model.agent(agent.id)
        assert mine is not None
        assert (mine.status, mine.call_id, mine.queues, mine.paused_queues, mine.paused_reason) == (
            agent.status,
            agent.call_id,
            agent.queues,
            agent.paused_queues,
            agent.paused_reason,
        )


def test_resync_with_no_channels_ends_every_call(replay: ReplayFactory) -> None:
    streamed = _until_lists(replay)
    now = streamed.messages[-1][0]
    live = {c.id for c in streamed.model.live_calls()}
    assert len(live) == 2
    changes = streamed.model.resync([], [], now)
    ended = [c.call for c in changes if isinstance(c, CallChanged)]
    assert {c.id for c in ended} == live
    assert all(c.state is CallState.ENDED and c.end_reason == GONE_AFTER_RESYNC for c in ended)
    assert all(c.hangup_cause is None for c in ended)
    assert streamed.model.live_calls() == []
    assert all(a.call_id is None and a.status is AgentStatus.LOGGED_OUT for a in streamed.model.agents())
    assert streamed.model.queues() == []
    # The ended calls are kept for inspection.
    assert {c.id for c in streamed.model.ended_calls()} == live


def _assert_calls_ended_normally(model: CallModel) -> None:
    assert model.live_calls() == []
    by_name = {c.caller_name: c for c in model.ended_calls()}
    jane, davis = by_name["Jane Doe"], by_name["DAVIS ROBERT"]
    assert jane.end_reason == davis.end_reason == "hangup"
    assert jane.agents == ("agent1",) and jane.queue == "support" and jane.hangup_cause == 16
    assert davis.abandoned and davis.queue == "billing" and not davis.answered
    alice = model.agent("agent1")
    assert alice is not None and alice.status is AgentStatus.READY


def test_events_after_a_resync_end_the_calls_normally(
    replay: ReplayFactory, lists: tuple[list[Message], list[Message]]
) -> None:
    """A resync in the middle of the calls, then the remaining events: no ghost, same outcome."""
    done: list[float] = []

    def resync_once(msg: Message, now: float) -> list[ModelChange]:
        if done or msg.name != "CoreShowChannel":
            return []
        done.append(now)
        return result_model.resync(*lists, now)

    result_model = CallModel()
    replay("actions", model=result_model, before=resync_once)
    assert done
    _assert_calls_ended_normally(result_model)


def test_reconnect_with_nothing_known_before(lists: tuple[list[Message], list[Message]]) -> None:
    """We were away for everything before the lists: the model starts from the resync alone."""
    times = message_times("actions")
    model = CallModel()
    reader = MessageReader()
    index = 0
    resynced = False
    for item in reader.feed(load_capture("actions").stream_in()):
        if not isinstance(item, Message):
            continue
        now = times[index]
        index += 1
        if not resynced:
            if item.name != "CoreShowChannel":
                continue
            model.resync(*lists, now)
            resynced = True
        model.apply(item, now)
    assert resynced
    _assert_calls_ended_normally(model)
