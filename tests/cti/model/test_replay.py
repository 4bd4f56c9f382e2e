"""Every capture replays through the real codec and the model, however the bytes are cut."""

from __future__ import annotations

import gc
from dataclasses import replace

import pytest

from callbridge.captures import available_captures, load_messages
from cti.model import CallChanged, CallState
from cti.model.records import CallRecord, LegRecord

from .conftest import LOGIN_ONLY, MODEL_CAPTURES, ReplayFactory


def test_every_capture_with_traffic_is_covered() -> None:
    assert set(available_captures()) - set(LOGIN_ONLY) == set(MODEL_CAPTURES)


@pytest.mark.parametrize("name", MODEL_CAPTURES)
def test_rechunking_changes_nothing(replay: ReplayFactory, name: str) -> None:
    """The captured TCP reads and three random cuttings give the very same changes."""
    captured = replay(name)
    assert captured.changes, "the model saw nothing in this capture"
    for seed in (1, 2, 3):
        assert replay(name, seed=seed).changes == captured.changes


@pytest.mark.parametrize("name", MODEL_CAPTURES)
def test_no_ghost_calls(replay: ReplayFactory, name: str) -> None:
    """Each scenario ends with every call hung up: none is left live, each one was reported ended."""
    result = replay(name)
    assert result.model.live_calls() == []
    created = {c.id for c in result.calls("new")}
    ended = result.calls("ended")
    assert {c.id for c in ended} == created
    assert len(ended) == len(created), "a call was reported ended twice"
    for call in ended:
        assert call.state is CallState.ENDED
        assert call.end_reason == "hangup"
        assert all(leg.ended for leg in call.legs)
        kept = result.model.get_call(call.id)
        assert kept is not None
        # A trailing AgentComplete may complete talk_time in the history after "ended".
        assert replace(kept, talk_time=call.talk_time) == call
    # Nothing is reported about a call after its end.
    seen_end: set[str] = set()
    for _, change in result.changes:
        if isinstance(change, CallChanged):
            assert change.call.id not in seen_end, (change.change, change.call.id)
            if change.change == "ended":
                seen_end.add(change.call.id)


@pytest.mark.parametrize("name", [n for n in MODEL_CAPTURES if n != "queue_member_admin"])
def test_ended_calls_leave_no_cycles(replay: ReplayFactory, name: str) -> None:
    """An ended call and its legs go by reference counting, not at the collector's full passes
    (which stop the service's loop for as long as they walk the heap)."""
    gc.collect()
    gc.disable()
    try:
        result = replay(name)
        assert result.calls("ended")
        gc.set_debug(gc.DEBUG_SAVEALL)
        gc.collect()
        left = [type(o).__name__ for o in gc.garbage if isinstance(o, (CallRecord, LegRecord))]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    assert left == []


@pytest.mark.parametrize("name", MODEL_CAPTURES)
def test_one_call_per_linkedid(replay: ReplayFactory, name: str) -> None:
    linkedids = {
        r["msg"]["Linkedid"] for r in load_messages(name) if r.get("msg", {}).get("Event") == "Newchannel"
    }
    assert {c.id for c in replay(name).model.ended_calls()} == linkedids


@pytest.mark.parametrize("name", ["queue_answered", "load_50"])
def test_agents_end_idle(replay: ReplayFactory, name: str) -> None:
    result = replay(name)
    for agent in result.model.agents():
        assert agent.call_id is None
        assert agent.status.value in ("ready", "logged_out"), agent
