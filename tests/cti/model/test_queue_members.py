"""Agent login / pause / penalty / logout through queue member actions (queue_member_admin)."""

from __future__ import annotations

from cti.model import AgentStatus, Membership

from .conftest import ReplayFactory


def test_dynamic_member_lifecycle(replay: ReplayFactory) -> None:
    result = replay("queue_member_admin")
    carol = [c for c in result.agent_changes("agent3") if c.change != "new"]
    assert [c.change for c in carol] == ["added", "paused", "unpaused", "penalty", "ringinuse", "removed"]
    added, paused, unpaused, penalty, ringinuse, removed = (c.agent for c in carol)

    assert added.name == "Carol Agent"
    assert added.interfaces == ("Local/agent3@agents/n",)
    assert added.state_interface == "Local/agent3@agents"
    assert added.status is AgentStatus.READY
    assert added.memberships == (
        Membership(
            queue="support",
            interface="Local/agent3@agents/n",
            state_interface="Local/agent3@agents",
            penalty=1,
            paused=False,
            paused_reason=None,
            ringinuse=False,
            membership="dynamic",
        ),
    )
    assert paused.status is AgentStatus.PAUSED
    assert (paused.paused_reason, paused.paused_queues) == ("Coffee break", ("support",))
    assert unpaused.status is AgentStatus.READY and unpaused.paused_reason is None
    assert penalty.memberships[0].penalty == 3
    assert ringinuse.memberships[0].ringinuse is True
    assert removed.status is AgentStatus.LOGGED_OUT
    assert removed.queues == () and removed.memberships == ()

    support = result.model.queue("support")
    assert support is not None
    assert "agent3" not in support.members
    assert [q.change for q in result.queue_changes("support") if q.queue.members.count("agent3")][:1] == [
        "member_added"
    ]
    assert support.strategy == "rrmemory", "from the QueueParams of the QueueStatus list"


def test_pause_without_queue_pauses_every_queue(replay: ReplayFactory) -> None:
    """``QueuePause`` with no ``Queue:`` gives one QueueMemberPause per queue (support, callcenter)."""
    result = replay("queue_member_admin")
    alice = [c.agent for c in result.agent_changes("agent1")]
    fully_paused = next(a for a in alice if a.paused_queues == ("support", "callcenter"))
    assert fully_paused.status is AgentStatus.PAUSED and fully_paused.paused_reason == "Meeting"
    final = result.model.agent("agent1")
    assert final is not None
    assert final.status is AgentStatus.READY and final.paused_queues == ()
    # Half-way through the unpause Alice is still paused in callcenter: still PAUSED (Rule 8).
    half = [a for a in alice if a.paused_queues == ("callcenter",)]
    assert half and half[0].status is AgentStatus.PAUSED
