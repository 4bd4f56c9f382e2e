"""Rules the captures do not exercise, on messages built with ``Message.from_pairs``.

The lab has no SIP phones, so no ``Hold``/``Unhold`` from a phone, no consultation call and no
``AttendedTransfer``; these sequences follow Asterisk's documented events with PJSIP-style
channel names. Also: the cost rule (ignored events are never parsed), a model started mid-call,
late agent declaration and the bounded history.
"""

from __future__ import annotations

import pytest

from callbridge.captures import load_capture
from cti.ami.codec import MessageReader
from cti.ami.message import Message
from cti.model import AgentConfig, AgentStatus, CallChanged, CallModel, CallState, ModelChange

from .conftest import ReplayFactory, message_times

L = "1700000000.0"  # the call's Linkedid
TRUNK, ALICE, BOB = "PJSIP/trunk-00000001", "PJSIP/1001-00000002", "PJSIP/1002-00000003"
UIDS = {TRUNK: L, ALICE: "1700000000.1", BOB: "1700000000.2"}


def event(name: str, **fields: str) -> Message:
    return Message.from_pairs([("Event", name), *fields.items()])


def channel(name: str, prefix: str = "", **extra: str) -> dict[str, str]:
    return {f"{prefix}Channel": name, f"{prefix}Uniqueid": UIDS[name], f"{prefix}Linkedid": L, **extra}


def hangup(name: str, cause: str = "16") -> Message:
    return Message.from_pairs(
        [("Event", "Hangup"), *channel(name).items(), ("Cause", cause), ("Cause-txt", "Normal Clearing")]
    )


def call_changes(changes: list[ModelChange]) -> list[tuple[str, CallState]]:
    return [(c.change, c.call.state) for c in changes if isinstance(c, CallChanged)]


@pytest.fixture
def connected() -> CallModel:
    """An inbound trunk call answered by alice (PJSIP/1001); bob is PJSIP/1002."""
    model = CallModel(
        agents=[AgentConfig("alice", "Alice", ["PJSIP/1001"]), AgentConfig("bob", "Bob", ["PJSIP/1002"])]
    )
    trunk = channel(
        TRUNK, CallerIDNum="+15551234567", CallerIDName="Pat Doe", Context="from-pstn", Exten="8005550100"
    )
    steps = [
        event("Newchannel", **trunk, ChannelStateDesc="Ring"),
        event("Newchannel", **channel(ALICE, ChannelStateDesc="Down", Context="agents", Exten="1001")),
        event("DialBegin", **trunk, **channel(ALICE, "Dest"), DialString="1001"),
        event("DialEnd", **trunk, **channel(ALICE, "Dest"), DialStatus="ANSWER"),
    ]
    changes = [c for i, msg in enumerate(steps) for c in model.apply(msg, float(i))]
    assert call_changes(changes) == [
        ("new", CallState.ROUTING),
        ("ringing_agent", CallState.RINGING),
        ("answered", CallState.CONNECTED),
    ]
    call = model.get_call(L)
    assert call is not None
    assert (call.caller_num, call.caller_name, call.dialed, call.agent) == (
        "+15551234567",
        "Pat Doe",
        "8005550100",
        "alice",
    )
    return model


def test_hold_and_unhold_events(connected: CallModel) -> None:
    assert call_changes(connected.apply(event("Hold", **channel(ALICE), MusicClass="default"), 10.0)) == [
        ("held", CallState.HELD)
    ]
    assert connected.apply(event("Hold", **channel(ALICE)), 11.0) == [], "already held"
    assert call_changes(connected.apply(event("Unhold", **channel(ALICE)), 12.0)) == [
        ("unheld", CallState.CONNECTED)
    ]
    call = connected.get_call(L)
    assert call is not None and call.hold_count == 1 and not call.held


def test_consultation_then_attended_transfer(connected: CallModel) -> None:
    """alice holds the caller, calls bob (a dial from her leg: Rule 6), then completes the transfer."""
    model = connected
    model.apply(event("Hold", **channel(ALICE)), 10.0)
    model.apply(event("Newchannel", **channel(BOB, ChannelStateDesc="Down")), 11.0)
    ring = model.apply(event("DialBegin", **channel(ALICE), **channel(BOB, "Dest"), DialString="1002"), 11.0)
    assert call_changes(ring) == [], "a dial from the agent's side does not move the call"
    bob = model.agent("bob")
    assert bob is not None and (bob.status, bob.call_id) == (AgentStatus.RINGING, L)
    model.apply(event("DialEnd", **channel(ALICE), **channel(BOB, "Dest"), DialStatus="ANSWER"), 13.0)
    bob = model.agent("bob")
    assert bob is not None and bob.status is AgentStatus.ON_CALL
    call = model.get_call(L)
    assert call is not None and (call.state, call.agent) == (CallState.HELD, "alice")

    transfer = event(
        "AttendedTransfer",
        Result="Success",
        **channel(ALICE, "OrigTransferer"),
        **channel(ALICE, "SecondTransferer"),
        **channel(TRUNK, "Transferee"),
        **channel(BOB, "TransferTarget"),
        DestType="Bridge",
    )
    assert call_changes(model.apply(transfer, 20.0)) == [("transferred", CallState.CONNECTED)]
    # alice leaves: the call stays connected, with bob.
    leave = model.apply(hangup(ALICE), 20.5)
    assert call_changes(leave) == []
    alice = model.agent("alice")
    # Free again; in no queue, so logged out (Rule 8), not ready.
    assert alice is not None and alice.call_id is None and alice.status is AgentStatus.LOGGED_OUT
    assert model.apply(hangup(TRUNK), 30.0) == []
    ended = call_changes(model.apply(hangup(BOB), 30.0))
    assert ended[-1] == ("ended", CallState.ENDED)
    call = model.get_call(L)
    assert call is not None
    assert call.agents == ("alice", "bob")
    (only,) = call.transfers
    assert (only.kind, only.from_agent, only.to_agent, only.detected_by) == (
        "attended",
        "alice",
        "bob",
        "AttendedTransfer",
    )
    assert call.ended_by == "customer" and call.hangup_cause == 16


def test_agent_hangs_up_first(connected: CallModel) -> None:
    connected.apply(event("HangupRequest", **channel(ALICE)), 20.0)
    assert call_changes(connected.apply(hangup(ALICE), 20.0)) == [("agent_left", CallState.ROUTING)]
    changes = connected.apply(hangup(TRUNK), 20.1)
    call = next(c.call for c in changes if isinstance(c, CallChanged))
    assert call.state is CallState.ENDED and call.ended_by == "agent" and call.agent == "alice"


@pytest.mark.parametrize(
    "name", ["VarSet", "Newexten", "DeviceStateChange", "Cdr", "NewConnectedLine", "LocalBridge"]
)
def test_ignored_events_are_not_parsed(name: str) -> None:
    """Rule 10: the name decides; headers of events nobody needs are never parsed."""
    msg = event(name, **channel(TRUNK), Variable="X", Value="1", Application="Wait")
    assert CallModel().apply(msg, 0.0) == []
    assert msg._fields is None  # the Message parses lazily; nothing asked it to


def test_responses_and_unknown_events_change_nothing() -> None:
    model = CallModel()
    assert model.apply(Message.from_pairs([("Response", "Success"), ("ActionID", "1")]), 0.0) == []
    assert model.apply(event("FooBar", **channel(TRUNK)), 0.0) == []
    assert model.live_calls() == []


def test_model_started_in_the_middle_of_a_call(replay: ReplayFactory) -> None:
    """Events of channels never seen (no Newchannel) adopt them: the call is followed to its end."""
    times = message_times("queue_answered")
    model = CallModel()
    changes: list[ModelChange] = []
    index = 0
    for item in MessageReader().feed(load_capture("queue_answered").stream_in()):
        if isinstance(item, Message):
            now = times[index]
            index += 1
            if now > 1.0:  # we connect while Jane Doe's call is ringing Alice
                changes += model.apply(item, now)
    assert model.live_calls() == []
    (call,) = model.ended_calls()
    assert (call.caller_num, call.caller_name) == ("+14155550123", "Jane Doe")
    assert call.agents == ("agent1",) and call.queue == "support" and call.hangup_cause == 16
    assert [c.change for c in changes if isinstance(c, CallChanged)] == [
        "new",
        "caller",
        "answered",
        "agent_identified",
        "ended",
    ]


def test_agent_declared_after_the_ring_is_bound(replay: ReplayFactory) -> None:
    """``add_agent`` while its device rings: the ringing call is now this agent's."""
    result = replay("hold_moh", stop=lambda m: m.name == "DialState")
    (call,) = result.model.live_calls()
    assert call.state is CallState.RINGING and call.agent is None
    changes = result.model.add_agent(AgentConfig("agent1", "Alice", ["Local/agent1hold@agents"]))
    assert [c.change for c in changes if isinstance(c, CallChanged)] == ["ringing_agent"]
    agent = result.model.agent("agent1")
    assert agent is not None and (agent.status, agent.call_id) == (AgentStatus.RINGING, call.id)
    assert result.model.agent_for_device("Local/agent1hold@agents-00000001;1") == "agent1"


def test_history_is_bounded(replay: ReplayFactory) -> None:
    result = replay("load_50", model=CallModel(history=10))
    kept = result.model.ended_calls()
    assert len(kept) == 10
    assert [c.id for c in kept] == [c.id for c in result.calls("ended")][-10:]
    assert result.model.get_call(result.calls("ended")[0].id) is None


def test_originate_through_a_trunk_is_outbound() -> None:
    """``Originate Channel: PJSIP/+15551234567@trunk``: the number is only in the dial string."""
    model = CallModel()
    leg = channel(TRUNK, ChannelStateDesc="Down", CallerIDNum="8005550100", Context="default", Exten="s")
    changes = model.apply(event("Newchannel", **leg), 0.0)
    changes += model.apply(event("DialBegin", **channel(TRUNK, "Dest"), DialString="+15551234567@trunk"), 0.1)
    changes += model.apply(event("Newstate", **{**leg, "ChannelStateDesc": "Up"}), 3.0)
    assert call_changes(changes) == [
        ("new", CallState.ROUTING),
        ("dialing", CallState.DIALING),
        ("customer_answered", CallState.ROUTING),
    ]
    call = model.get_call(L)
    assert call is not None
    assert (call.direction, call.dialed, call.remote_num, call.caller_num) == (
        "outbound",
        "+15551234567",
        "+15551234567",
        "8005550100",
    )
    assert call.customer_answered_at == 3.0


def test_call_from_an_agent_device_is_internal() -> None:
    model = CallModel(agents=[AgentConfig("alice", "Alice", ["PJSIP/1001"])])
    model.apply(
        event("Newchannel", Channel=ALICE, Uniqueid=L, Linkedid=L, CallerIDNum="1001", Exten="2002"), 0.0
    )
    call = model.get_call(L)
    assert call is not None and call.direction == "internal" and call.caller_num == "1001"


def test_set_agent_replaces_the_devices_and_a_moved_device_rings_its_new_agent(replay: ReplayFactory) -> None:
    """An agent moved to another desk: the old device no longer rings them, the new one does."""
    alice = AgentConfig("alice", "Alice", ["Local/agent1@agents/n", "PJSIP/1001"])
    result = replay("direct_dial", agents=[alice])
    model = result.model
    assert model.agent_for_device("PJSIP/1001") == "alice"
    model.set_agent(AgentConfig("alice", "Alice Liddell", ["PJSIP/2001"]), now=10.0)
    agent = model.agent("alice")
    assert agent is not None and agent.name == "Alice Liddell"
    assert agent.interfaces == ("PJSIP/2001",)
    assert model.agent_for_device("PJSIP/1001") is None
    assert model.agent_for_device("Local/agent1@agents-00000001;1") is None
    assert model.agent_for_device("PJSIP/2001-0000002a") == "alice"
    # The call she took before the move is still hers.
    assert result.only_call().agents == ("alice",)
    model.set_agent(AgentConfig("bob", "Bob", ["Local/agent1@agents/n"]), now=11.0)
    assert model.agent_for_device("Local/agent1@agents-00000002;1") == "bob"
