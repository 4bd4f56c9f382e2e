"""Snapshots built from drafts (``cti.model.snapshots.draft_class``) are whole frozen snapshots.

Every call, leg, agent, membership and queue snapshot of every capture must have every field set,
equal the snapshot the dataclass constructor builds from the same values, hash and compare like
it, and refuse assignment.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from cti.model import AgentChanged, AgentConfig, CallChanged, QueueChanged
from cti.model.records import AgentRecord
from cti.model.snapshots import Agent, AgentStatus, Call, Leg, Membership, Queue

from .conftest import MODEL_CAPTURES, ReplayFactory


def rebuilt(snapshot: Any) -> Any:
    return type(snapshot)(**{f.name: getattr(snapshot, f.name) for f in dataclasses.fields(snapshot)})


def check(snapshot: Any, cls: type) -> None:
    assert type(snapshot) is cls
    copy = rebuilt(snapshot)
    assert copy == snapshot and repr(copy) == repr(snapshot)
    assert hash(copy) == hash(snapshot)
    with pytest.raises(dataclasses.FrozenInstanceError):
        snapshot.__setattr__(dataclasses.fields(snapshot)[0].name, None)


@pytest.mark.parametrize("name", MODEL_CAPTURES)
def test_every_snapshot_is_whole(replay: ReplayFactory, name: str) -> None:
    result = replay(name, agents=[AgentConfig("agent1", "Alice", ("Local/agent1@agents/n",))])
    kinds: set[type] = set()
    for _, change in result.changes:
        if isinstance(change, CallChanged):
            check(change.call, Call)
            for leg in change.call.legs:
                check(leg, Leg)
                kinds.add(Leg)
        elif isinstance(change, AgentChanged):
            check(change.agent, Agent)
            for membership in change.agent.memberships:
                check(membership, Membership)
        elif isinstance(change, QueueChanged):
            check(change.queue, Queue)
        kinds.add(type(change))
    assert CallChanged in kinds or name in ("queue_member_admin", "actions")


def test_agent_pause_reason_is_the_first_paused_queue_with_a_reason() -> None:
    record = AgentRecord("agent1", None, 0.0)
    record.memberships = {
        "a": Membership("a", "Local/agent1@agents/n", paused=False, paused_reason="lunch"),
        "b": Membership("b", "Local/agent1@agents/n", paused=True, paused_reason=""),
        "c": Membership("c", "Local/agent1@agents/n", paused=True, paused_reason="coaching"),
        "d": Membership("d", "Local/agent1@agents/n", paused=True, paused_reason="break"),
    }
    record.status = AgentStatus.PAUSED
    snapshot = record.snapshot()
    assert snapshot.paused_reason == "coaching"
    assert snapshot.paused_queues == ("b", "c", "d")
    assert snapshot.queues == ("a", "b", "c", "d")
    check(snapshot, Agent)
