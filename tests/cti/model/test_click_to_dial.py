"""Click-to-dial (AMI Originate with the agent's device as Channel): the agent's outbound call.

The captures are the lab's: ``Local/agent1@agents`` rings (the ``;2`` half is the agent's handset,
it answers after 2 s), then the ``;1`` half runs the ``customers`` context, whose dialplan plays
the customer's phone (Ringing, Wait, Answer; or Busy). The PJSIP sequences follow what a real
PBX sends when the agent's channel runs ``Dial(PJSIP/trunk/<number>)``.
"""

from __future__ import annotations

import pytest

from cti.ami.message import Message
from cti.model import AgentConfig, AgentStatus, Call, CallChanged, CallModel, CallState

from .conftest import ReplayFactory
from .test_rules import call_changes, event

ALICE = AgentConfig("agent1", "Alice", ["Local/agent1@agents/n", "Local/agent1@agents"])
DECLARED = {"declared": [ALICE], "learnt": []}
"""The agent declared up front (the service), or learnt from the QueueMemberStatus that follows
the ring (a bare model replaying the capture): the same call either way."""


def flow(calls: list[Call]) -> list[CallState]:
    """The call's states in order, repeats collapsed."""
    states: list[CallState] = []
    for call in calls:
        if not states or states[-1] is not call.state:
            states.append(call.state)
    return states


@pytest.mark.parametrize("agents", DECLARED, ids=list(DECLARED))
def test_answered(replay: ReplayFactory, agents: str) -> None:
    """Alice answers her device after 2 s, the customer 3 s later, and hangs up 5 s after that."""
    result = replay("click_to_dial_answered", agents=DECLARED[agents])
    call = result.only_call()
    assert call.direction == "outbound"
    assert (call.agent, call.agents, call.agent_interface) == ("agent1", ("agent1",), "Local/agent1@agents")
    assert call.remote_num == call.dialed == "+14155550188"
    assert call.customer_id == "C-100188"
    assert call.originate_id == "click_to_dial_answered-0002"
    assert call.answered_at is not None and call.answered_at == call.customer_answered_at
    assert call.answered_at - call.started_at == pytest.approx(5.0, abs=0.1)
    assert (call.hangup_cause, call.hangup_cause_text, call.ended_by) == (16, "Normal Clearing", "customer")
    assert flow(result.calls())[-4:] == [
        CallState.RINGING,
        CallState.DIALING,
        CallState.CONNECTED,
        CallState.ENDED,
    ]
    ringing = result.calls("ringing_agent")[0]
    assert (ringing.direction, ringing.ringing_agents) == ("outbound", ("agent1",))
    assert ringing.customer_id == "C-100188", "the Originate's variables, in DialBegin's DestChanVariable"
    assert result.calls("dialing")[0].ringing_agents == ()
    connected = result.calls("answered")[0]
    assert connected.state is CallState.CONNECTED and connected.remote_num == "+14155550188"
    statuses = [c.agent.status for c in result.agent_changes("agent1") if c.change == "status"]
    # ON_CALL twice: the customer's answer counts an answered call.
    assert statuses == [AgentStatus.RINGING, AgentStatus.ON_CALL, AgentStatus.ON_CALL, AgentStatus.READY]
    agent = result.model.agent("agent1")
    assert agent is not None and agent.answered_calls == 1


@pytest.mark.parametrize("agents", DECLARED, ids=list(DECLARED))
def test_busy(replay: ReplayFactory, agents: str) -> None:
    """The dialplan plays Busy() for 10 s; Asterisk hangs up both halves with cause 0."""
    result = replay("click_to_dial_busy", agents=DECLARED[agents])
    call = result.only_call()
    assert (call.direction, call.agent, call.remote_num) == ("outbound", "agent1", "+14155550144")
    assert (call.hangup_cause, call.hangup_cause_text, call.dial_status) == (17, "User busy", "BUSY")
    assert not call.answered and call.customer_answered_at is None and call.agents == ()
    assert flow(result.calls())[-3:] == [CallState.RINGING, CallState.DIALING, CallState.ENDED]
    dialing = result.calls("dialing")[-1]
    assert dialing.agent == "agent1" and dialing.remote_num == "+14155550144"


def test_no_answer_the_agent_gives_up(replay: ReplayFactory) -> None:
    """+14155550143 rings forever; Alice's handset hangs up after 8 s of ringback."""
    result = replay("click_to_dial_noanswer", agents=[ALICE])
    call = result.only_call()
    assert (call.direction, call.agent, call.remote_num) == ("outbound", "agent1", "+14155550143")
    assert (call.hangup_cause, call.ended_by, call.dial_status) == (16, "agent", None)
    assert not call.answered
    assert CallState.CONNECTED not in flow(result.calls())


# --- a PJSIP agent whose channel dials a trunk ---------------------------------------------------

L = "1700000100.0"
PHONE, TRUNK = "PJSIP/1001-00000010", "PJSIP/trunk-00000011"
UIDS = {PHONE: L, TRUNK: "1700000100.1"}
NUMBER = "+14155550188"


def leg(name: str, prefix: str = "", **extra: str) -> dict[str, str]:
    return {f"{prefix}Channel": name, f"{prefix}Uniqueid": UIDS[name], f"{prefix}Linkedid": L, **extra}


@pytest.fixture
def dialing() -> CallModel:
    """alice (PJSIP/1001) clicked, answered her phone, and the dialplan dials the trunk."""
    model = CallModel(agents=[AgentConfig("alice", "Alice", ["PJSIP/1001"])])
    steps = [
        event("Newchannel", **leg(PHONE, ChannelStateDesc="Down", Context="default", Exten="s")),
        event("DialBegin", **leg(PHONE, "Dest"), DialString="1001"),
        event("Newstate", **leg(PHONE, ChannelStateDesc="Up")),
        event("DialEnd", **leg(PHONE, "Dest"), DialStatus="ANSWER"),
        event("OriginateResponse", ActionID="c2d-1", Response="Success", **leg(PHONE), Exten=NUMBER),
        event("Newchannel", **leg(TRUNK, ChannelStateDesc="Down", Context="from-trunk", Exten="s")),
        event("DialBegin", **leg(PHONE), **leg(TRUNK, "Dest"), DialString=f"trunk/{NUMBER}"),
    ]
    changes = [c for i, msg in enumerate(steps) for c in model.apply(msg, float(i))]
    assert call_changes(changes) == [
        ("new", CallState.ROUTING),
        ("ringing_agent", CallState.RINGING),
        ("dialing", CallState.DIALING),
        ("originate", CallState.DIALING),
    ]
    call = model.get_call(L)
    assert call is not None
    assert (call.direction, call.agent, call.remote_num, call.caller_num) == (
        "outbound",
        "alice",
        NUMBER,
        None,
    )
    alice = model.agent("alice")
    assert alice is not None and (alice.status, alice.call_id) == (AgentStatus.ON_CALL, L)
    return model


def hangup(name: str, cause: str, text: str) -> Message:
    return Message.from_pairs(
        [("Event", "Hangup"), *leg(name).items(), ("Cause", cause), ("Cause-txt", text)]
    )


def test_the_trunk_answers(dialing: CallModel) -> None:
    answer = event("DialEnd", **leg(PHONE), **leg(TRUNK, "Dest"), DialStatus="ANSWER")
    assert call_changes(dialing.apply(answer, 10.0)) == [("answered", CallState.CONNECTED)]
    dialing.apply(event("HangupRequest", **leg(TRUNK)), 20.0)
    dialing.apply(hangup(TRUNK, "16", "Normal Clearing"), 20.0)
    ended = dialing.apply(hangup(PHONE, "16", "Normal Clearing"), 20.1)
    call = next(c.call for c in ended if isinstance(c, CallChanged))
    assert (call.state, call.answered_at, call.customer_answered_at) == (CallState.ENDED, 10.0, 10.0)
    assert (call.agents, call.dial_status, call.ended_by) == (("alice",), "ANSWER", "customer")


def test_the_trunk_is_busy(dialing: CallModel) -> None:
    busy = event("DialEnd", **leg(PHONE), **leg(TRUNK, "Dest"), DialStatus="BUSY")
    assert dialing.apply(busy, 10.0) == []
    dialing.apply(hangup(TRUNK, "17", "User busy"), 10.0)
    changes = dialing.apply(hangup(PHONE, "16", "Normal Clearing"), 10.1)
    call = next(c.call for c in changes if isinstance(c, CallChanged) and c.change == "ended")
    assert (call.hangup_cause, call.hangup_cause_text, call.dial_status) == (17, "User busy", "BUSY")
    assert not call.answered


def test_the_agent_does_not_answer_their_device() -> None:
    model = CallModel(agents=[AgentConfig("alice", "Alice", ["PJSIP/1001"])])
    model.apply(event("Newchannel", **leg(PHONE, ChannelStateDesc="Down", Context="default", Exten="s")), 0.0)
    model.apply(event("DialBegin", **leg(PHONE, "Dest"), DialString="1001"), 0.0)
    no_answer = event("DialEnd", **leg(PHONE, "Dest"), DialStatus="NOANSWER")
    assert call_changes(model.apply(no_answer, 30.0)) == [("ring_no_answer", CallState.ROUTING)]
    changes = model.apply(hangup(PHONE, "19", "User alerting, no answer"), 30.0)
    call = next(c.call for c in changes if isinstance(c, CallChanged))
    assert (call.state, call.agent, call.hangup_cause) == (CallState.ENDED, None, 19)
    alice = model.agent("alice")
    assert alice is not None and alice.call_id is None


def test_an_answer_in_the_dialplan_before_the_dial_is_not_the_customer() -> None:
    """``Answer()`` with no ``Ringing()`` before it is housekeeping: the Dial still decides."""
    model = CallModel(agents=[AgentConfig("alice", "Alice", ["PJSIP/1001"])])
    model.apply(event("Newchannel", **leg(PHONE, ChannelStateDesc="Down", Context="default", Exten="s")), 0.0)
    model.apply(event("DialBegin", **leg(PHONE, "Dest"), DialString="1001"), 0.0)
    model.apply(event("DialEnd", **leg(PHONE, "Dest"), DialStatus="ANSWER"), 1.0)
    answer = event(
        "Newexten",
        **leg(PHONE, ChannelStateDesc="Up"),
        Context="customers",
        Exten=NUMBER,
        Application="Answer",
    )
    assert call_changes(model.apply(answer, 1.1)) == [("dialing", CallState.DIALING)]
    call = model.get_call(L)
    assert call is not None and call.remote_num == NUMBER and call.answered_at is None


def core_show(name: str, state: str, bridge: str = "", **extra: str) -> Message:
    return event(
        "CoreShowChannel", **leg(name), ChannelStateDesc=state, BridgeId=bridge, Duration="00:00:10", **extra
    )


def test_a_resync_while_the_trunk_rings_keeps_the_call_dialing(dialing: CallModel) -> None:
    rows = [core_show(PHONE, "Up", Context="customers", Exten=NUMBER), core_show(TRUNK, "Ringing")]
    dialing.resync(rows, [], 20.0)
    call = dialing.get_call(L)
    assert call is not None
    assert (call.state, call.direction, call.agent, call.remote_num) == (
        CallState.DIALING,
        "outbound",
        "alice",
        NUMBER,
    )
    alice = dialing.agent("alice")
    assert alice is not None and (alice.status, alice.call_id) == (AgentStatus.ON_CALL, L)
    answer = event("DialEnd", **leg(PHONE), **leg(TRUNK, "Dest"), DialStatus="ANSWER")
    assert call_changes(dialing.apply(answer, 21.0)) == [("answered", CallState.CONNECTED)]


def test_a_resync_finds_the_customer_answered_while_we_were_away(dialing: CallModel) -> None:
    rows = [core_show(PHONE, "Up", "bridge-1"), core_show(TRUNK, "Up", "bridge-1")]
    changes = dialing.resync(rows, [], 20.0)
    assert call_changes(changes) == [("resync", CallState.CONNECTED)]
    call = dialing.get_call(L)
    assert call is not None
    assert (call.agent, call.agents, call.answered_at, call.customer_answered_at) == (
        "alice",
        ("alice",),
        20.0,
        20.0,
    )


def test_a_resync_while_the_agents_device_rings() -> None:
    model = CallModel(agents=[AgentConfig("alice", "Alice", ["PJSIP/1001"])])
    model.apply(event("Newchannel", **leg(PHONE, ChannelStateDesc="Down", Context="default", Exten="s")), 0.0)
    model.apply(event("DialBegin", **leg(PHONE, "Dest"), DialString="1001"), 0.0)
    assert call_changes(model.resync([core_show(PHONE, "Ringing")], [], 5.0)) == [
        ("resync", CallState.RINGING)
    ]
    alice = model.agent("alice")
    assert alice is not None and (alice.status, alice.call_id) == (AgentStatus.RINGING, L)
    call = model.get_call(L)
    assert call is not None and (call.state, call.ringing_agents) == (CallState.RINGING, ("alice",))
    assert call_changes(model.apply(event("DialEnd", **leg(PHONE, "Dest"), DialStatus="ANSWER"), 6.0)) == [
        ("dialing", CallState.DIALING)
    ]


def test_a_resync_keeps_a_lab_call_connected(replay: ReplayFactory) -> None:
    """In the lab the agent's own ``;1`` half plays the customer: no bridge shows the answer."""
    result = replay("click_to_dial_answered", agents=[ALICE], stop=lambda m: m.get("Application") == "Hangup")
    (call,) = result.model.live_calls()
    assert call.state is CallState.CONNECTED
    rows = [
        event(
            "CoreShowChannel",
            Channel=leg_.channel,
            Uniqueid=leg_.uniqueid,
            Linkedid=call.id,
            ChannelStateDesc="Up",
            Context=leg_.context,
            Exten=leg_.exten,
            Duration="00:00:09",
        )
        for leg_ in call.legs
    ]
    result.model.resync(rows, [], 10.0)
    after = result.model.get_call(call.id)
    assert after is not None
    assert (after.state, after.agent, after.answered_at) == (CallState.CONNECTED, "agent1", call.answered_at)
