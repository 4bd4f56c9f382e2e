"""The pop tracker on real captures (codec -> ``CallModel`` -> ``PopTracker``) and on built sequences.

Each capture message gets the time its capture recorded, as in ``tests/cti/model``. The lab has
no ringall queue with two agents and no SIP phones, so ringall, attended transfer and plain
``Dial()`` outcomes are built with ``Message.from_pairs`` after Asterisk's documented events.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import pytest

from callbridge.captures import load_capture, load_messages
from cti.ami.codec import MessageReader
from cti.ami.message import Message
from cti.model import AgentConfig, CallChanged, CallModel
from screenpop import PopCommand, PopTracker, RetractPop, ShowPop, UpdatePop


@dataclass
class PopReplay:
    model: CallModel
    tracker: PopTracker = field(default_factory=PopTracker)
    commands: list[tuple[float, PopCommand]] = field(default_factory=list)
    messages: list[tuple[float, Message, list[PopCommand]]] = field(default_factory=list)

    def feed(self, msg: Message, now: float) -> list[PopCommand]:
        out: list[PopCommand] = []
        for change in self.model.apply(msg, now):
            if isinstance(change, CallChanged):
                out += self.tracker.apply(change, now)
        self.messages.append((now, msg, out))
        self.commands += [(now, command) for command in out]
        return out

    def shows(self) -> list[ShowPop]:
        return [c for _, c in self.commands if isinstance(c, ShowPop)]

    def for_agent(self, agent_id: str) -> list[PopCommand]:
        return [c for _, c in self.commands if c.agent_id == agent_id]

    def flow(self, agent_id: str) -> list[tuple[str, str, str]]:
        """(command, pop id, reason) of one agent's commands, in order."""
        return [(type(c).__name__, c.pop_id, str(getattr(c, "reason", ""))) for c in self.for_agent(agent_id)]


def replay(name: str, agents: Iterable[AgentConfig] = ()) -> PopReplay:
    times = [r["t"] for r in load_messages(name) if r["dir"] == "in" and "msg" in r]
    result = PopReplay(CallModel(agents=agents))
    reader = MessageReader()
    index = 0
    for chunk in load_capture(name).chunks:
        if chunk.direction != "in" or chunk.data is None:
            continue
        for item in reader.feed(chunk.data):
            if isinstance(item, Message):
                result.feed(item, times[index])
                index += 1
    assert index == len(times)
    return result


def only_call_id(result: PopReplay) -> str:
    ended = result.model.ended_calls()
    assert len(ended) == 1
    return ended[0].id


def assert_forgotten(result: PopReplay) -> None:
    """Every pop was retracted and nothing is kept once the calls ended (Rules 4, 5, 7)."""
    shown = {c.pop_id for c in result.shows()}
    retracted = [c.pop_id for _, c in result.commands if isinstance(c, RetractPop)]
    assert sorted(retracted) == sorted(shown)
    assert len(result.tracker) == 0 and result.tracker.tracked_calls == 0


# --- captures -----------------------------------------------------------------------------------


def test_queue_answered() -> None:
    """Jane Doe -> 8005550100 -> support -> agent1 Alice answers after 2 s; the caller hangs up."""
    result = replay("queue_answered")
    call_id = only_call_id(result)
    pop_id = f"{call_id}:agent1:1"
    assert [c.agent_id for _, c in result.commands] == ["agent1"] * 3, "nobody else gets a pop"
    assert result.flow("agent1") == [
        ("ShowPop", pop_id, ""),
        ("UpdatePop", pop_id, "answered"),
        ("RetractPop", pop_id, "call_ended"),
    ]
    (t_show, show), (t_answer, answer) = result.commands[:2]
    assert isinstance(show, ShowPop) and isinstance(answer, UpdatePop)
    assert show.call_id == call_id
    facts = show.facts
    assert (facts["caller_num"], facts["caller_name"]) == ("+14155550123", "Jane Doe")
    assert (facts["dialed"], facts["direction"], facts["queue"]) == ("8005550100", "inbound", "support")
    assert facts["remote_num"] == "+14155550123"
    assert (facts["state"], facts["queue_position"], facts["ringing_since"]) == ("ringing", 1, t_show)
    assert facts["wait_time"] == pytest.approx(0.0, abs=0.01), "rung at once"
    assert facts["answered_at"] is None and facts["ivr"] is None
    assert answer.facts["state"] == "answered" and answer.facts["answered_at"] == t_answer
    assert answer.facts["wait_time"] == 2, "Asterisk's HoldTime once answered"
    assert answer.facts["queue_position"] is None
    json.dumps([show.facts, answer.facts])  # plain values only
    assert_forgotten(result)


def test_live_pops_replay_what_is_live() -> None:
    """A second tab at any moment gets the pops shown and not retracted, with their latest facts."""
    result = PopReplay(CallModel())
    name = "queue_ring_noanswer_then_answer"
    times = [r["t"] for r in load_messages(name) if r["dir"] == "in" and "msg" in r]
    messages = [m for m in MessageReader().feed(load_capture(name).stream_in()) if isinstance(m, Message)]
    seen: dict[str, dict[str, ShowPop]] = {}
    for now, msg in zip(times, messages, strict=True):
        for command in result.feed(msg, now):
            pops = seen.setdefault(command.agent_id, {})
            if isinstance(command, ShowPop):
                pops[command.pop_id] = command
            elif isinstance(command, UpdatePop):
                old = pops[command.pop_id]
                pops[command.pop_id] = ShowPop(old.pop_id, old.agent_id, old.call_id, command.facts)
            else:
                del pops[command.pop_id]
        for agent_id in ("noanswer", "agent2", "agent1"):
            assert result.tracker.live_pops(agent_id) == list(seen.get(agent_id, {}).values())
    assert len(result.tracker) == 0


def test_ring_no_answer_then_answer() -> None:
    """sales rings Nora (noanswer) 5 s in vain, then Bob (agent2), who answers."""
    result = replay("queue_ring_noanswer_then_answer")
    call_id = only_call_id(result)
    nora, bob = f"{call_id}:noanswer:1", f"{call_id}:agent2:1"
    assert result.flow("noanswer") == [("ShowPop", nora, ""), ("RetractPop", nora, "ring_no_answer")]
    assert result.flow("agent2") == [
        ("ShowPop", bob, ""),
        ("UpdatePop", bob, "answered"),
        ("RetractPop", bob, "call_ended"),
    ]
    bob_show = result.shows()[1]
    assert bob_show.facts["caller_num"] == "4155550123" and bob_show.facts["queue"] == "sales"
    wait = bob_show.facts["wait_time"]
    assert isinstance(wait, float) and wait == pytest.approx(6.0, abs=0.1), "the wait so far, at his ring"
    assert_forgotten(result)


def test_queue_abandon_rings_nobody() -> None:
    result = replay("queue_abandon")
    assert result.commands == []
    assert result.tracker.tracked_calls == 0


@pytest.mark.parametrize("name", ["ivr_agi", "ivr_agi_hangup", "originate_busy", "queue_member_admin"])
def test_no_agent_rung_no_pop(name: str) -> None:
    result = replay(name)
    assert result.commands == [] and result.tracker.tracked_calls == 0


def test_load_50() -> None:
    """Every AgentCalled gives one pop at that agent; every pop goes by the end; nothing is kept."""
    result = replay("load_50")
    model = result.model
    called = [
        (msg.get("Linkedid"), model.agent_for_device(msg.get("Interface") or ""))
        for _, msg, _ in result.messages
        if msg.name == "AgentCalled"
    ]
    shows = result.shows()
    assert len(called) == 38
    assert [(s.call_id, s.agent_id) for s in shows] == called
    assert len({s.pop_id for s in shows}) == len(shows)
    for _, msg, commands in result.messages:
        if msg.name == "AgentCalled":
            assert [type(c) for c in commands] == [ShowPop], "shown on the AgentCalled itself"
    calls = {c.id: c for c in model.ended_calls()}
    retracts = [c for _, c in result.commands if isinstance(c, RetractPop)]
    by_pop = {s.pop_id: s for s in shows}
    for retract in retracts:
        call = calls[by_pop[retract.pop_id].call_id]
        if call.abandoned:
            assert retract.reason == "caller_hung_up"
        else:
            assert retract.reason == "call_ended" and call.agent == retract.agent_id
    answered = [c for _, c in result.commands if isinstance(c, UpdatePop) and c.reason == "answered"]
    assert len(answered) == 38 == sum(c.answered for c in calls.values())
    # In this trace no abandoned caller was ringing an agent when they gave up.
    assert not {by_pop[r.pop_id].call_id for r in retracts} & {c.id for c in calls.values() if c.abandoned}
    assert_forgotten(result)


@pytest.mark.parametrize("name", ["blind_transfer", "blind_transfer_action"])
def test_blind_transfer(name: str) -> None:
    """Wei Chen talks to agent1, is sent to 2002; Bob (agent2) gets a new pop and answers."""
    result = replay(name)
    call_id = only_call_id(result)
    alice, bob = f"{call_id}:agent1:1", f"{call_id}:agent2:1"
    assert result.flow("agent1") == [
        ("ShowPop", alice, ""),
        ("UpdatePop", alice, "answered"),
        ("RetractPop", alice, "transferred_away"),
    ]
    assert result.flow("agent2") == [
        ("ShowPop", bob, ""),
        ("UpdatePop", bob, "answered"),
        ("RetractPop", bob, "call_ended"),
    ]
    bob_show = result.shows()[1]
    assert bob_show.facts["transferred_from"] == "agent1"
    assert bob_show.facts["caller_num"] == "+13125550188"
    retracted_at = next(t for t, c in result.commands if isinstance(c, RetractPop))
    assert retracted_at == pytest.approx(5.0, abs=0.05)
    assert_forgotten(result)


def test_direct_dial_pops_when_the_device_is_known() -> None:
    """agent1 is only named by queue member events after the DialBegin: the pop comes then."""
    result = replay("direct_dial")
    call_id = only_call_id(result)
    pop_id = f"{call_id}:agent1:1"
    assert result.flow("agent1") == [
        ("ShowPop", pop_id, ""),
        ("UpdatePop", pop_id, "answered"),
        ("RetractPop", pop_id, "call_ended"),
    ]
    facts = result.shows()[0].facts
    # The dialplan's Set(CALLERID(...)) ran before the dial: the pop shows the final caller id.
    assert (facts["caller_num"], facts["caller_name"], facts["dialed"]) == (
        "+14155550123",
        "Jane Doe",
        "2001",
    )
    assert facts["queue"] is None and facts["wait_time"] is None


def test_direct_dial_to_a_declared_agent_pops_on_the_dial_begin() -> None:
    result = replay("direct_dial", agents=[AgentConfig("alice", "Alice", ["Local/agent1@agents/n"])])
    (_, msg, commands), *_ = [m for m in result.messages if m[2]]
    assert msg.name == "DialBegin"
    assert [(type(c).__name__, c.agent_id) for c in commands] == [("ShowPop", "alice")]
    assert [c.agent_id for _, c in result.commands] == ["alice"] * 3


def test_originate_answered_carries_campaign_and_lead() -> None:
    result = replay("originate_answered")
    (show,) = result.shows()
    assert show.agent_id == "agent1"
    facts = show.facts
    assert facts["direction"] == "outbound"
    assert facts["remote_num"] == "+14155550142"
    assert (facts["customer_id"], facts["campaign_id"]) == ("C-100042", "renewals-q3")
    assert facts["caller_num"] == "8005550100", "our own presented number"
    assert facts["variables"] == {
        "CUSTOMER_ID": "C-100042",
        "CAMPAIGN_ID": "renewals-q3",
        "LAB_SCENARIO": "originate_answered",
    }
    assert [str(getattr(c, "reason", "")) for _, c in result.commands] == ["", "answered", "call_ended"]


def test_hold_updates_the_pop() -> None:
    result = replay("hold_moh", agents=[AgentConfig("agent1", "Alice", ["Local/agent1hold@agents"])])
    reasons = [(type(c).__name__, str(getattr(c, "reason", ""))) for _, c in result.commands]
    assert reasons == [
        ("ShowPop", ""),
        ("UpdatePop", "answered"),
        ("UpdatePop", "held"),
        ("UpdatePop", "unheld"),
        ("RetractPop", "call_ended"),
    ]
    held = next(c for _, c in result.commands if isinstance(c, UpdatePop) and c.reason == "held")
    assert held.facts["state"] == "held"


# --- built sequences (PJSIP-style names, after Asterisk's documented events) ---------------------

L = "1700000000.0"
TRUNK, ALICE, BOB = "PJSIP/trunk-00000001", "PJSIP/1001-00000002", "PJSIP/1002-00000003"
ALICE_AGAIN = "PJSIP/1001-00000004"
UIDS = {TRUNK: L, ALICE: "1700000000.1", BOB: "1700000000.2", ALICE_AGAIN: "1700000000.3"}
AGENTS = [AgentConfig("alice", "Alice", ["PJSIP/1001"]), AgentConfig("bob", "Bob", ["PJSIP/1002"])]
INTERFACES = {ALICE: "PJSIP/1001", BOB: "PJSIP/1002", ALICE_AGAIN: "PJSIP/1001"}


def event(name: str, **fields: str) -> Message:
    return Message.from_pairs([("Event", name), *fields.items()])


def channel(name: str, prefix: str = "", **extra: str) -> dict[str, str]:
    return {f"{prefix}Channel": name, f"{prefix}Uniqueid": UIDS[name], f"{prefix}Linkedid": L, **extra}


def hangup(name: str, cause: str = "16") -> Message:
    return event("Hangup", **channel(name), Cause=cause, **{"Cause-txt": "Normal Clearing"})


def start(queue: str | None = None) -> list[Message]:
    trunk = channel(
        TRUNK, CallerIDNum="+15551234567", CallerIDName="Pat Doe", Context="from-pstn", Exten="8005550100"
    )
    steps = [
        event("Newchannel", **trunk, ChannelStateDesc="Ring"),
        event("Newchannel", **channel(ALICE, ChannelStateDesc="Down")),
        event("Newchannel", **channel(BOB, ChannelStateDesc="Down")),
    ]
    if queue is not None:
        steps.insert(1, event("QueueCallerJoin", **channel(TRUNK), Queue=queue, Position="1", Count="1"))
    return steps


def agent_called(dest: str) -> Message:
    return event(
        "AgentCalled", **channel(TRUNK), **channel(dest, "Dest"), Queue="sales", Interface=INTERFACES[dest]
    )


def dial(dest: str, kind: str, status: str | None = None) -> Message:
    fields = {**channel(TRUNK), **channel(dest, "Dest")}
    if status is not None:
        fields["DialStatus"] = status
    else:
        fields["DialString"] = dest.split("-", maxsplit=1)[0].removeprefix("PJSIP/")
    return event(kind, **fields)


def run(steps: Sequence[Message]) -> PopReplay:
    result = PopReplay(CallModel(agents=AGENTS))
    for i, msg in enumerate(steps):
        result.feed(msg, float(i))
    return result


def test_ringall_queue_answered_elsewhere() -> None:
    """A ringall queue rings alice and bob; alice answers: bob's ``DialEnd CANCEL`` comes before
    ``AgentConnect``, while alice's channel is already up."""
    result = run(
        [
            *start(queue="sales"),
            agent_called(ALICE),
            dial(ALICE, "DialBegin"),
            agent_called(BOB),
            dial(BOB, "DialBegin"),
            event("Newstate", **channel(ALICE), ChannelStateDesc="Up"),
            dial(ALICE, "DialEnd", "ANSWER"),
            dial(BOB, "DialEnd", "CANCEL"),
            hangup(BOB, "26"),
            event("QueueCallerLeave", **channel(TRUNK), Queue="sales"),
            event("AgentConnect", **channel(TRUNK), **channel(ALICE, "Dest"), Queue="sales", HoldTime="4"),
            hangup(TRUNK),
            hangup(ALICE),
        ]
    )
    alice, bob = f"{L}:alice:1", f"{L}:bob:1"
    assert result.flow("bob") == [("ShowPop", bob, ""), ("RetractPop", bob, "answered_elsewhere")]
    assert result.flow("alice") == [
        ("ShowPop", alice, ""),
        ("UpdatePop", alice, "answered"),
        ("RetractPop", alice, "call_ended"),
    ]
    shows = result.shows()
    assert [s.facts["queue"] for s in shows] == ["sales", "sales"]
    assert shows[0].facts["caller_name"] == "Pat Doe"
    assert_forgotten(result)


def test_ringall_queue_nobody_answers() -> None:
    result = run(
        [
            *start(queue="sales"),
            agent_called(ALICE),
            agent_called(BOB),
            event("AgentRingNoAnswer", **channel(TRUNK), **channel(ALICE, "Dest"), Queue="sales"),
            event("AgentRingNoAnswer", **channel(TRUNK), **channel(BOB, "Dest"), Queue="sales"),
            dial(ALICE, "DialEnd", "CANCEL"),
            dial(BOB, "DialEnd", "CANCEL"),
            hangup(ALICE),
            hangup(BOB),
            event("Newchannel", **channel(ALICE_AGAIN, ChannelStateDesc="Down")),
            agent_called(ALICE_AGAIN),
        ]
    )
    assert [(c.agent_id, str(getattr(c, "reason", ""))) for _, c in result.commands] == [
        ("alice", ""),
        ("bob", ""),
        ("alice", "ring_no_answer"),
        ("bob", "ring_no_answer"),
        ("alice", ""),
    ]
    assert result.shows()[-1].pop_id == f"{L}:alice:2", "a new ring attempt, a new pop"
    assert [p.pop_id for p in result.tracker.live_pops("alice")] == [f"{L}:alice:2"]
    assert result.tracker.live_pops("bob") == []
    # The call's DialStatus is still the CANCEL of the first round: a timeout is still a timeout.
    no_answer = event("AgentRingNoAnswer", **channel(TRUNK), **channel(ALICE_AGAIN, "Dest"), Queue="sales")
    assert [(type(c).__name__, str(getattr(c, "reason", ""))) for c in result.feed(no_answer, 20.0)] == [
        ("RetractPop", "ring_no_answer")
    ]


@pytest.mark.parametrize("agents", [[ALICE], [ALICE, BOB]], ids=["one", "ringall"])
def test_queue_caller_hangs_up_while_ringing(agents: list[str]) -> None:
    """app_queue cancels the rings (``DialEnd CANCEL``) before it reports ``QueueCallerAbandon``,
    and a trunk channel's ``Hangup`` comes last: the pops go at the first CANCEL."""
    steps = [*start(queue="sales"), *(agent_called(a) for a in agents)]
    steps += [dial(a, "DialEnd", "CANCEL") for a in agents]
    steps += [
        *(hangup(a) for a in (ALICE, BOB)),
        event("QueueCallerAbandon", **channel(TRUNK), Queue="sales", HoldTime="3"),
        hangup(TRUNK),
    ]
    result = run(steps)
    retracts = [(t, c) for t, c in result.commands if isinstance(c, RetractPop)]
    assert [str(c.reason) for _, c in retracts] == ["caller_hung_up"] * len(agents)
    first_cancel = len(start(queue="sales")) + len(agents)
    assert [t for t, _ in retracts] == [float(first_cancel + i) for i in range(len(agents))]
    assert_forgotten(result)


def test_dial_to_two_agents_answered_elsewhere_at_once() -> None:
    """``Dial(PJSIP/1001&PJSIP/1002)``: alice's DialEnd ANSWER connects the call; bob's pop goes with it."""
    result = run(
        [
            *start(),
            dial(ALICE, "DialBegin"),
            dial(BOB, "DialBegin"),
            dial(ALICE, "DialEnd", "ANSWER"),
            dial(BOB, "DialEnd", "CANCEL"),
            hangup(BOB, "26"),
        ]
    )
    answer = next(commands for _, msg, commands in result.messages if msg.get("DialStatus") == "ANSWER")
    assert [(type(c).__name__, c.agent_id, str(getattr(c, "reason", ""))) for c in answer] == [
        ("RetractPop", "bob", "answered_elsewhere"),
        ("UpdatePop", "alice", "answered"),
    ]
    assert [c.agent_id for _, c in result.commands] == ["alice", "bob", "bob", "alice"]
    assert [p.pop_id for p in result.tracker.live_pops("alice")] == [f"{L}:alice:1"]


@pytest.mark.parametrize(("status", "reason"), [("CANCEL", "caller_hung_up"), ("NOANSWER", "ring_no_answer")])
def test_dial_ring_ends(status: str, reason: str) -> None:
    """Outside a queue, Dial() cancels a ring only when the caller hangs up (or another answered)."""
    result = run([*start(), dial(ALICE, "DialBegin"), dial(ALICE, "DialEnd", status), hangup(ALICE)])
    assert result.flow("alice") == [("ShowPop", f"{L}:alice:1", ""), ("RetractPop", f"{L}:alice:1", reason)]


def test_agent_leaves_the_customer_in_the_dialplan() -> None:
    """alice hangs up first; the caller stays (a survey, say): her pop goes to wrap-up."""
    result = run([*start(), dial(ALICE, "DialBegin"), dial(ALICE, "DialEnd", "ANSWER"), hangup(ALICE)])
    assert result.flow("alice")[-1] == ("RetractPop", f"{L}:alice:1", "call_ended")
    assert result.tracker.tracked_calls == 1, "the call is live: its attempt counters are kept"
    result.feed(hangup(BOB), 10.0)
    result.feed(hangup(TRUNK), 11.0)
    assert result.tracker.tracked_calls == 0


def test_caller_hangs_up_while_ringing() -> None:
    result = run([*start(), dial(ALICE, "DialBegin"), hangup(TRUNK), hangup(ALICE), hangup(BOB)])
    assert result.flow("alice")[-1] == ("RetractPop", f"{L}:alice:1", "caller_hung_up")
    assert_forgotten(result)


def test_attended_transfer() -> None:
    """alice consults bob (a dial from her leg: no pop), then completes the transfer: bob gets a pop,
    already answered, and alice's pop is retracted."""
    consult = {**channel(ALICE), **channel(BOB, "Dest")}
    result = run(
        [
            *start(),
            dial(ALICE, "DialBegin"),
            dial(ALICE, "DialEnd", "ANSWER"),
            event("Hold", **channel(ALICE)),
            event("DialBegin", **consult, DialString="1002"),
            event("DialEnd", **consult, DialStatus="ANSWER"),
            event(
                "AttendedTransfer",
                Result="Success",
                **channel(ALICE, "OrigTransferer"),
                **channel(ALICE, "SecondTransferer"),
                **channel(TRUNK, "Transferee"),
                **channel(BOB, "TransferTarget"),
                DestType="Bridge",
            ),
            hangup(ALICE),
            hangup(TRUNK),
            hangup(BOB),
        ]
    )
    alice, bob = f"{L}:alice:1", f"{L}:bob:1"
    assert result.flow("alice") == [
        ("ShowPop", alice, ""),
        ("UpdatePop", alice, "answered"),
        ("UpdatePop", alice, "held"),
        ("RetractPop", alice, "transferred_away"),
    ]
    assert result.flow("bob") == [("ShowPop", bob, ""), ("RetractPop", bob, "call_ended")]
    bob_show = result.shows()[1]
    assert bob_show.facts["state"] == "answered" and bob_show.facts["transferred_from"] == "alice"
    assert bob_show.facts["ringing_since"] is None
    assert_forgotten(result)


def test_an_agent_sees_only_their_own_pops() -> None:
    result = run([*start(queue="sales"), agent_called(ALICE)])
    assert [p.agent_id for p in result.tracker.live_pops("alice")] == ["alice"]
    assert result.tracker.live_pops("bob") == []
    replayed = result.tracker.live_pops("alice")[0]
    assert replayed == result.shows()[0]
    replayed.facts["caller_num"] = "changed by a consumer"
    assert result.tracker.live_pops("alice")[0].facts["caller_num"] == "+15551234567"


# --- click-to-dial --------------------------------------------------------------------------------

ALICE_LAB = [AgentConfig("agent1", "Alice", ["Local/agent1@agents/n", "Local/agent1@agents"])]


def test_click_to_dial_pops_at_the_agent_who_dialled() -> None:
    """Shown while Alice's device rings, answered when she picks up (she took the call), the number
    once Asterisk dials it, an ``answered`` update when the customer answers, retracted at the end:
    a call to wrap up like any other."""
    result = replay("click_to_dial_answered", agents=ALICE_LAB)
    call_id = only_call_id(result)
    pop_id = f"{call_id}:agent1:1"
    assert result.flow("agent1") == [
        ("ShowPop", pop_id, ""),
        ("UpdatePop", pop_id, "answered"),
        ("UpdatePop", pop_id, "caller_id"),
        ("UpdatePop", pop_id, "answered"),
        ("RetractPop", pop_id, "call_ended"),
    ]
    (show,) = result.shows()
    assert (show.facts["direction"], show.facts["state"]) == ("outbound", "ringing")
    # The lead is known as the device rings (the pop's customer look-up runs on the show only).
    assert show.facts["customer_id"] == "C-100188"
    taken, numbered, connected = [c for c in result.for_agent("agent1") if isinstance(c, UpdatePop)]
    assert (taken.facts["state"], taken.facts["customer_answered_at"]) == ("answered", None)
    assert numbered.facts["remote_num"] == numbered.facts["dialed"] == "+14155550188"
    call = result.model.get_call(call_id)
    assert call is not None and call.answered_at is not None
    assert connected.facts["customer_answered_at"] == call.answered_at
    assert connected.facts["customer_id"] == "C-100188"
    assert [c for _, c in result.commands if c.agent_id != "agent1"] == []
    assert_forgotten(result)


@pytest.mark.parametrize("name", ["click_to_dial_busy", "click_to_dial_noanswer"])
def test_click_to_dial_the_customer_never_answers(name: str) -> None:
    """The agent took the call, so its pop ends as a call (``call_ended``: wrap-up), not a lost ring."""
    result = replay(name, agents=ALICE_LAB)
    flow = [(command, reason) for command, _, reason in result.flow("agent1")]
    assert flow[-1] == ("RetractPop", "call_ended")
    assert ("UpdatePop", "answered") in flow
    answered = [c for c in result.for_agent("agent1") if isinstance(c, UpdatePop) and c.reason == "answered"]
    assert [c.facts["customer_answered_at"] for c in answered] == [None]
    assert_forgotten(result)


C2D = "1700000300.0"
PHONE = "PJSIP/1001-00000030"


def phone(**extra: str) -> dict[str, str]:
    return {"Channel": PHONE, "Uniqueid": C2D, "Linkedid": C2D, **extra}


def dest_phone() -> dict[str, str]:
    return {"DestChannel": PHONE, "DestUniqueid": C2D, "DestLinkedid": C2D}


@pytest.mark.parametrize("dial_end", [True, False], ids=["dial-end-noanswer", "originate-timeout"])
def test_click_to_dial_the_agent_lets_their_device_ring_out(dial_end: bool) -> None:
    """Never taken: a lost ring (``ring_no_answer``), which the wrap-up desk forgets."""
    steps = [
        event("Newchannel", **phone(ChannelStateDesc="Down", Context="default", Exten="s")),
        event("DialBegin", **dest_phone(), DialString="1001"),
    ]
    if dial_end:
        steps.append(event("DialEnd", **dest_phone(), DialStatus="NOANSWER"))
    steps.append(event("Hangup", **phone(), Cause="19", **{"Cause-txt": "User alerting, no answer"}))
    result = run(steps)
    pop_id = f"{C2D}:alice:1"
    assert result.flow("alice") == [("ShowPop", pop_id, ""), ("RetractPop", pop_id, "ring_no_answer")]
    assert_forgotten(result)


def ivr_then_queue() -> list[Message]:
    """A caller in an AGI IVR keys ``4``, ``1``, ``#``; the IVR reads the account back, sets it,
    and sends the call to a queue, where Alice rings."""
    agi = channel(TRUNK)
    return [
        *start(),
        event("AGIExecStart", **agi, Command='STREAM FILE welcome ""', CommandId="1"),
        event("AGIExecStart", **agi, Command="GET DATA enter-account 5000 4", CommandId="2"),
        *(event("DTMFEnd", **agi, Digit=d, Direction="Received", DurationMs="100") for d in "41#"),
        event("DTMFEnd", **agi, Digit="9", Direction="Sent", DurationMs="100"),
        event("AGIExecStart", **agi, Command="VERBOSE checked 1", CommandId="3"),
        event("AGIExecStart", **agi, Command='SAY DIGITS 41 ""', CommandId="4"),
        event("AGIExecStart", **agi, Command="SET VARIABLE  ACCOUNT 41", CommandId="5"),
        event("QueueCallerJoin", **channel(TRUNK), Queue="sales", Position="1", Count="1"),
        event("DTMFEnd", **agi, Digit="7", Direction="Received", DurationMs="100"),
        agent_called(ALICE),
    ]


def test_the_pop_shows_what_the_caller_keyed_in_the_ivr() -> None:
    """Digits received on the IVR leg while in the IVR, in order (not those sent to the caller,
    nor those keyed after it); the journey without the script's bookkeeping (VERBOSE)."""
    (show,) = run(ivr_then_queue()).shows()
    ivr = show.facts["ivr"]
    assert isinstance(ivr, dict)
    assert ivr["digits"] == "41#"
    assert ivr["steps"] == [
        'STREAM FILE welcome ""',
        "GET DATA enter-account 5000 4",
        'SAY DIGITS 41 ""',
        "SET VARIABLE ACCOUNT 41",
    ]
    assert ivr["left_at"] is not None


def test_masked_ivr_input_never_leaves_the_tracker() -> None:
    result = PopReplay(CallModel(agents=AGENTS), PopTracker(mask_ivr_input=True))
    for i, msg in enumerate(ivr_then_queue()):
        result.feed(msg, float(i))
    (show,) = result.shows()
    ivr = show.facts["ivr"]
    assert isinstance(ivr, dict)
    assert ivr["digits"] == "\u2022\u2022\u2022"
    assert ivr["steps"] == [
        'STREAM FILE welcome ""',
        "GET DATA enter-account 5000 4",
        "SAY DIGITS \u2022\u2022\u2022",
        "SET VARIABLE ACCOUNT \u2022\u2022\u2022",
    ]
    (replayed,) = result.tracker.live_pops("alice")
    assert "41" not in json.dumps(replayed.facts["ivr"])
