"""The busy-period trace: 50 calls into ``callcenter`` within 10 s, 5 agents, checked against its plan."""

from __future__ import annotations

import json
import re
from collections import Counter

import pytest

from callbridge.captures import find_capture
from cti.model import AgentStatus, CallModel, QueueChanged, QueueConfig

from .conftest import Replay, ReplayFactory

_CALLERID = re.compile(r'(?:"(?P<name>[^"]*)" )?<(?P<num>[^>]*)>')


@pytest.fixture(scope="module")
def plan() -> list[dict[str, object]]:
    path = find_capture("load_50", ".plan.json")
    entries: list[dict[str, object]] = json.loads(path.read_text())
    return entries


@pytest.fixture
def load(replay: ReplayFactory) -> Replay:
    return replay("load_50")


def test_totals(load: Replay) -> None:
    calls = load.model.ended_calls()
    assert len(calls) == 50 and load.model.live_calls() == []
    answered = [c for c in calls if c.answered]
    abandoned = [c for c in calls if c.abandoned]
    assert len(answered) == 38 and len(abandoned) == 12
    assert not set(answered) & set(abandoned)
    assert all(c.queue == "callcenter" and c.dialed == "8005550103" for c in calls)
    assert all(c.hangup_cause == 16 for c in calls)
    assert min(c.wait_time or 0 for c in answered) == 1 and max(c.wait_time or 0 for c in answered) == 56
    assert min(c.wait_time or 0 for c in abandoned) == 21 and max(c.wait_time or 0 for c in abandoned) == 47
    assert all(c.talk_time is not None and c.talk_time >= 3 for c in answered)

    queue = load.model.queue("callcenter")
    assert queue is not None
    assert (queue.answered, queue.abandoned, queue.waiting) == (38, 12, ())
    assert queue.members == ("agent1", "agent2", "agent3", "agent4", "agent5")
    most = max(len(c.queue.waiting) for _, c in load.changes if isinstance(c, QueueChanged))
    assert most == 43, "the README: up to 43 callers in the queue at once"


def test_per_agent_counts(load: Replay) -> None:
    per_agent = Counter(c.agent for c in load.model.ended_calls() if c.answered)
    assert sorted(per_agent) == ["agent1", "agent2", "agent3", "agent4", "agent5"]
    assert all(7 <= n <= 8 for n in per_agent.values())
    for agent in load.model.agents():
        assert agent.answered_calls == per_agent[agent.id]
        assert agent.status is AgentStatus.READY
    # The agents' names come from the queue events.
    assert {a.id: a.name for a in load.model.agents()}["agent3"] == "Carol Agent"


def test_each_call_against_the_plan(load: Replay, plan: list[dict[str, object]]) -> None:
    """Calls in arrival order are the plan's entries: caller ID, patience, talk time."""
    calls = sorted(load.model.ended_calls(), key=lambda c: c.started_at)
    assert len(calls) == len(plan)
    for entry, call in zip(plan, calls, strict=True):
        match = _CALLERID.fullmatch(str(entry["callerid"]))
        assert match is not None
        assert (call.caller_num, call.caller_name) == (match["num"], match["name"])
        patience = float(str(entry["patience_s"]))
        talk = float(str(entry["agent_talk_s"]))
        assert call.wait_time is not None
        if call.abandoned:
            # The caller hangs up when patience runs out, still waiting.
            assert call.wait_time == pytest.approx(patience, abs=1)
            assert call.ended_by == "customer" and call.agents == ()
        else:
            assert call.wait_time < patience
            # Here the agent hangs up after the planned talk time, unless the caller's patience
            # (their whole time on the line) runs out first.
            if call.wait_time + talk + 1 < patience:
                assert call.ended_by == "agent", call
            elif call.wait_time + talk - 1 > patience:
                assert call.ended_by == "customer", call


def test_caller_id_placeholders(load: Replay) -> None:
    calls = load.model.ended_calls()
    assert sum(c.caller_num == "anonymous" for c in calls) == 2
    # "<unknown>" means no name, not a name.
    assert {c.caller_num for c in calls if c.caller_name is None} == {
        "+15125550146",
        "+16465550123",
        "+16465550161",
    }


def test_wrap_up_from_queue_config(replay: ReplayFactory) -> None:
    """callcenter has wrapuptime 1 s (queues.conf; AMI does not report it): agents wrap up, then tick()."""
    result = replay("load_50", model=CallModel(queues=[QueueConfig("callcenter", wrapup=1.0)]))
    wrapups = [c for _, c in result.changes if hasattr(c, "agent") and c.agent.status is AgentStatus.WRAP_UP]
    assert len({c.agent.id for c in wrapups}) == 5
    end = result.messages[-1][0]
    assert all(a.status is not AgentStatus.ON_CALL for a in result.model.agents())
    changes = result.model.tick(end + 5)
    assert all(a.status is AgentStatus.READY for a in result.model.agents())
    assert all(c.agent.wrapup_until is None for c in changes if hasattr(c, "agent"))


def test_most_messages_are_never_parsed(load: Replay) -> None:
    """Rule 10, measured without a clock: the model reads the headers of about a quarter of the
    busy-period traffic (VarSet, Newexten, DeviceStateChange, Cdr ... are dispatched on their name
    alone). Throughput follows from it: codec + model stays well above 50k messages/s."""
    parsed = sum(msg._fields is not None for _, msg in load.messages)  # Message parses lazily
    assert len(load.messages) == 7472
    assert parsed / len(load.messages) < 0.26
