"""Plain dials to an agent device, transfers (AMI Redirect and BlindTransfer), hold by music."""

from __future__ import annotations

import pytest

from cti.model import AgentConfig, AgentStatus, CallState, Transfer

from .conftest import ReplayFactory


def test_direct_dial_caller_id_changed_by_dialplan(replay: ReplayFactory) -> None:
    """``Set(CALLERID(...))`` turns "Reception" <100> into "Jane Doe" <+14155550123>; agent1 answers."""
    result = replay("direct_dial")
    call = result.only_call()
    assert [(c.caller_num, c.caller_name) for c in result.calls("caller")] == [
        ("100", "Reception"),
        ("+14155550123", "Reception"),
        ("+14155550123", "Jane Doe"),
    ]
    assert (call.caller_num, call.caller_name) == ("+14155550123", "Jane Doe")
    assert call.dialed == "2001"
    assert call.queue is None
    assert call.agents == ("agent1",) and call.agent_interface == "Local/agent1@agents"
    assert call.answered_at is not None and call.ringing_at is not None
    assert call.answered_at - call.ringing_at == pytest.approx(2.0, abs=0.1)
    assert call.hangup_cause == 16 and call.ended_by == "customer"
    # agent1 is only named by the queue member events that follow the DialBegin: the ring is
    # reported as soon as the device is known to be hers.
    ringing = result.calls("ringing_agent")
    assert [c.agent for c in ringing] == ["agent1"]
    assert result.when("ringing") < result.when("ringing_agent") < result.when("answered")


def test_direct_dial_to_a_declared_agent(replay: ReplayFactory) -> None:
    """With the service's agent map, the dial rings the agent at once, under the configured id."""
    alice = AgentConfig("alice", "Alice", ["Local/agent1@agents/n"])
    result = replay("direct_dial", agents=[alice])
    call = result.only_call()
    first_ring = next(c for c in result.call_events() if c.call.state is CallState.RINGING)
    assert first_ring.change == "ringing_agent" and first_ring.call.agent == "alice"
    assert call.agents == ("alice",)
    agent = result.model.agent("alice")
    assert agent is not None
    assert agent.name == "Alice"
    assert agent.answered_calls == 1
    assert set(agent.queues) == {"support", "callcenter"}
    assert result.model.agent("agent1") is None


@pytest.mark.parametrize(
    ("name", "detected_by"), [("blind_transfer", "inferred"), ("blind_transfer_action", "BlindTransfer")]
)
def test_blind_transfer(replay: ReplayFactory, name: str, detected_by: str) -> None:
    """Wei Chen talks to agent1, is sent to 2002 (agent2), Bob answers; the caller hangs up at 14 s."""
    result = replay(name)
    call = result.only_call()
    assert (call.caller_num, call.caller_name) == ("+13125550188", "Wei Chen")
    assert call.agents == ("agent1", "agent2")
    assert call.agent == "agent2"
    assert len(call.transfers) == 1
    transfer = call.transfers[0]
    assert isinstance(transfer, Transfer)
    assert (transfer.kind, transfer.from_agent, transfer.to_agent) == ("blind", "agent1", "agent2")
    assert transfer.to_exten == "2002" and transfer.detected_by == detected_by
    assert transfer.at == pytest.approx(5.0, abs=0.05)
    assert call.ended_by == "customer" and call.hangup_cause == 16
    assert call.ended_at == pytest.approx(14.0, abs=0.1)

    answered = result.calls("answered")
    assert [c.agent for c in answered] == ["agent1", "agent2"]
    assert answered[1].transfers[0].to_agent == "agent2"
    # agent1 is free once her leg is gone, while the caller rings agent2.
    alice = [c.agent for c in result.agent_changes("agent1")]
    statuses = [a.status for i, a in enumerate(alice) if i == 0 or a.status is not alice[i - 1].status]
    assert statuses == [AgentStatus.LOGGED_OUT, AgentStatus.RINGING, AgentStatus.ON_CALL, AgentStatus.READY]
    assert alice[-1].status_since == pytest.approx(5.0, abs=0.05)
    assert "agent_left" not in [c.change for c in result.call_events()]


def test_blind_transfer_event_is_reported(replay: ReplayFactory) -> None:
    result = replay("blind_transfer_action")
    transferred = result.calls("transferred")
    assert len(transferred) == 1
    assert transferred[0].transfers[0].from_agent == "agent1"
    assert transferred[0].transfers[0].to_agent is None, "the target is not known before the ring"
    # The Unhold that follows the transfer on agent1's channel is not a hold change.
    assert "unheld" not in [c.change for c in result.call_events()]


def test_hold_by_music(replay: ReplayFactory) -> None:
    """The caller hears music before the dial (not hold), then agent1 puts them on music for 4 s."""
    result = replay("hold_moh", agents=[AgentConfig("agent1", "Alice", ["Local/agent1hold@agents"])])
    call = result.only_call()
    flow = [(c.change, c.call.state) for c in result.call_events() if c.change != "originate"]
    assert flow == [
        ("new", CallState.ROUTING),
        ("caller", CallState.ROUTING),
        ("ringing_agent", CallState.RINGING),
        ("answered", CallState.CONNECTED),
        ("held", CallState.HELD),
        ("unheld", CallState.CONNECTED),
        ("ended", CallState.ENDED),
    ]
    held = result.calls("held")[0]
    assert held.held and held.hold_count == 1 and held.agent == "agent1"
    assert result.when("unheld") - result.when("held") == pytest.approx(4.0, abs=0.1)
    assert result.when("held") - result.when("answered") == pytest.approx(2.5, abs=0.1)
    assert not call.held and call.hold_count == 1
    assert (call.caller_num, call.caller_name, call.dialed) == ("4155550123", "John Smith", "2003")
