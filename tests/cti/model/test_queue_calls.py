"""Inbound calls through a queue: answered, ring-no-answer then answered, abandoned."""

from __future__ import annotations

import pytest

from cti.model import AgentStatus, CallState

from .conftest import ReplayFactory


def test_queue_answered(replay: ReplayFactory) -> None:
    """Jane Doe +14155550123 -> DID 8005550100 -> support -> agent1 Alice; caller hangs up, cause 16."""
    result = replay("queue_answered")
    call = result.only_call()
    assert (call.caller_num, call.caller_name) == ("+14155550123", "Jane Doe")
    assert call.remote_num == "+14155550123"
    assert call.direction == "inbound"
    assert call.dialed == "8005550100"
    assert call.queue == "support"
    assert call.agent == "agent1"
    assert call.agents == ("agent1",)
    assert call.agent_interface == "Local/agent1@agents"
    assert call.answered and not call.abandoned
    assert call.wait_time == 2  # AgentConnect HoldTime, seconds
    assert call.talk_time == 4
    assert (call.hangup_cause, call.hangup_cause_text) == (16, "Normal Clearing")
    assert call.ended_by == "customer"
    assert call.transfers == ()
    assert len(call.legs) == 4 and all(leg.hangup_cause == 16 for leg in call.legs)
    assert call.answered_at is not None and call.queued_at is not None and call.ended_at is not None
    assert call.answered_at - call.queued_at == pytest.approx(2.0, abs=0.1)
    assert call.ended_at - call.answered_at == pytest.approx(3.5, abs=0.1)
    assert call.originate_id == "queue_answered-0002"

    states = [(c.change, c.call.state) for c in result.call_events() if c.change != "originate"]
    assert states == [
        ("new", CallState.ROUTING),
        ("caller", CallState.ROUTING),
        ("queued", CallState.QUEUED),
        ("ringing_agent", CallState.RINGING),
        ("answered", CallState.CONNECTED),
        ("ended", CallState.ENDED),
    ]
    ringing = result.calls("ringing_agent")[0]
    assert ringing.ringing_agents == ("agent1",)
    assert ringing.queue_position == 1

    alice = result.model.agent("agent1")
    assert alice is not None
    assert alice.name == "Alice Agent"
    assert alice.interfaces == ("Local/agent1@agents/n",)
    assert alice.state_interface == "Local/agent1@agents"
    assert set(alice.queues) == {"support", "callcenter"}
    assert alice.answered_calls == 1
    statuses = [c.agent.status for c in result.agent_changes("agent1")]
    assert AgentStatus.RINGING in statuses
    assert statuses.index(AgentStatus.RINGING) < statuses.index(AgentStatus.ON_CALL)
    assert alice.status is AgentStatus.READY and alice.call_id is None

    support = result.model.queue("support")
    assert support is not None
    assert support.waiting == () and support.answered == 1
    joined = result.queue_changes("support")
    assert [q.queue.waiting for q in joined if q.change == "joined"] == [(call.id,)]


def test_ring_no_answer_then_answer(replay: ReplayFactory) -> None:
    """sales rings Nora, who does not answer (5 s); after the retry Bob (agent2) answers."""
    result = replay("queue_ring_noanswer_then_answer")
    call = result.only_call()
    assert (call.caller_num, call.caller_name) == ("4155550123", "John Smith")
    assert call.queue == "sales"
    assert call.agents == ("agent2",)
    assert call.wait_time == 8
    assert call.hangup_cause == 16

    flow = [
        (c.change, c.call.state, c.call.agent)
        for c in result.call_events()
        if c.change in ("ringing_agent", "ring_no_answer", "answered")
    ]
    assert flow == [
        ("ringing_agent", CallState.RINGING, "noanswer"),
        ("ring_no_answer", CallState.QUEUED, None),
        ("ringing_agent", CallState.RINGING, "agent2"),
        ("answered", CallState.CONNECTED, "agent2"),
    ]
    times = {c.change: t for t, c in result.changes if hasattr(c, "call") and c.call.id == call.id}
    assert times["ring_no_answer"] - result.calls("ringing_agent")[0].ringing_at == pytest.approx(
        5.0, abs=0.1
    )

    nora = result.model.agent("noanswer")
    bob = result.model.agent("agent2")
    assert nora is not None and bob is not None
    assert nora.name == "Nora NoAnswer" and bob.name == "Bob Agent"
    assert [c.agent.status for c in result.agent_changes("noanswer") if c.change == "status"] == [
        AgentStatus.RINGING,
        AgentStatus.READY,
    ]
    assert nora.answered_calls == 0 and bob.answered_calls == 1


def test_queue_abandon(replay: ReplayFactory) -> None:
    """Maria Garcia waits 8 s in billing (Eve paused for "Lunch break") and hangs up."""
    result = replay("queue_abandon")
    call = result.only_call()
    assert (call.caller_num, call.caller_name) == ("+12125550147", "Maria Garcia")
    assert call.dialed == "8005550102"
    assert call.queue == "billing"
    assert call.abandoned and not call.answered
    assert call.agent is None and call.agents == ()
    assert call.wait_time == 8
    assert call.hangup_cause == 16 and call.ended_by == "customer"
    assert [c.change for c in result.call_events() if c.change in ("queued", "abandoned", "ended")] == [
        "queued",
        "abandoned",
        "ended",
    ]

    eve = [c.agent for c in result.agent_changes("agent5") if c.change in ("added", "unpaused")]
    paused, unpaused = eve
    assert paused.name == "Eve Agent"
    assert paused.status is AgentStatus.PAUSED
    assert paused.paused_reason == "Lunch break" and paused.paused_queues == ("billing",)
    assert unpaused.status is AgentStatus.READY
    assert unpaused.paused_reason is None and unpaused.paused_queues == ()

    billing = result.model.queue("billing")
    assert billing is not None
    assert billing.abandoned == 1 and billing.answered == 0 and billing.waiting == ()
    assert billing.members == ("agent5",)
