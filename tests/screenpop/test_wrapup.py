"""The wrap-up desk's pure core: which pops it remembers, how a submit is checked, and when the
agent is paused and resumed (screenpop.wrapup rules), fed the tracker's commands as the pipeline
feeds them."""

from __future__ import annotations

from typing import Any

import pytest

from callbridge.settings import Disposition
from cti.model import Call, CallState
from screenpop.tracker import RetractPop, RetractReason, ShowPop, UpdatePop, UpdateReason
from screenpop.wrapup import PauseAgent, WrapupDesk, WrapupError

DISPOSITIONS = (
    Disposition("resolved", "Resolved"),
    Disposition("callback", "Call back", notes_required=True),
)
POP = "c1:agent1:1"


def facts(state: str, **more: Any) -> dict[str, Any]:
    return {"call_id": "c1", "state": state, "direction": "inbound", "caller_num": "+14155550123"} | more


def desk(**options: Any) -> WrapupDesk:
    return WrapupDesk(DISPOSITIONS, **options)


def show(d: WrapupDesk, now: float = 100.0, *, customer: str | None = "cust-1") -> None:
    payload = {"customer": {"id": customer}} if customer else {"customer": None}
    assert d.observe(ShowPop(POP, "agent1", "c1", facts("ringing")), payload, now) == []


def answer(d: WrapupDesk, now: float = 102.0) -> None:
    update = UpdatePop(
        POP, "agent1", facts("answered", answered_at=now, wait_time=2.0), UpdateReason.ANSWERED
    )
    assert d.observe(update, None, now) == []


def end(d: WrapupDesk, now: float = 110.0) -> list[PauseAgent]:
    return d.observe(RetractPop(POP, "agent1", RetractReason.CALL_ENDED), None, now)


def refusal(d: WrapupDesk, agent: str, pop: str, disposition: str, notes: str = "") -> tuple[int, str, Any]:
    with pytest.raises(WrapupError) as caught:
        d.begin(agent, pop, disposition, notes, None)
    return caught.value.status, caught.value.code, caught.value.field


def test_an_answered_call_stays_wrap_able_after_its_pop_is_retracted() -> None:
    d = desk()
    show(d)
    answer(d)
    assert end(d) == []
    call = d.get("agent1", POP)
    assert (call.answered_at, call.ended_at, call.wait_time) == (102.0, 110.0, 2.0)
    assert call.talk_seconds(now=500.0) == 8.0
    plan = d.begin("agent1", POP, "resolved", "", None)
    assert plan.customer_id == "cust-1" and plan.disposition.code == "resolved"
    assert d.finish(plan, {"stored": True}, 111.0) == []
    assert refusal(d, "agent1", POP, "resolved") == (409, "already-wrapped-up", None)


def test_asterisks_talk_time_wins_over_the_pops_clock() -> None:
    d = desk()
    show(d)
    answer(d)
    d.observe_call(
        Call("c1", CallState.ENDED, agent="agent1", talk_time=4.0, wait_time=2.0, ended_at=109.0), 109.5
    )
    assert d.get("agent1", POP).talk_seconds(now=500.0) == 4.0


def test_a_pop_retracted_while_ringing_was_never_the_agents_call() -> None:
    d = desk(pause=True)
    show(d)
    assert d.observe(RetractPop(POP, "agent1", RetractReason.RING_NO_ANSWER), None, 105.0) == []
    assert refusal(d, "agent1", POP, "resolved") == (404, "pop-not-found", "pop_id")


def test_submits_are_checked_body_first_then_the_pop_then_its_state() -> None:
    d = desk()
    show(d)
    assert refusal(d, "agent1", POP, "nope") == (400, "invalid-disposition", "disposition")
    assert refusal(d, "agent1", POP, "callback", "   ") == (400, "notes-required", "notes")
    assert refusal(d, "agent1", POP, "resolved", "x" * 5000) == (400, "notes-too-long", "notes")
    assert refusal(d, "agent2", POP, "resolved") == (404, "pop-not-found", "pop_id")
    assert refusal(d, "agent1", "c9:agent1:1", "resolved") == (404, "pop-not-found", "pop_id")
    assert refusal(d, "agent1", POP, "resolved") == (409, "not-answered", "pop_id")
    answer(d)
    plan = d.begin("agent1", POP, "callback", " ring back at 5 ", "cust-2")
    assert plan.notes == "ring back at 5" and plan.customer_id == "cust-2"
    assert refusal(d, "agent1", POP, "resolved") == (409, "already-wrapped-up", None)
    d.abort(plan)
    assert d.begin("agent1", POP, "resolved", "", None).customer_id == "cust-1"


def test_the_pause_starts_when_the_call_ends_and_stops_at_the_submit() -> None:
    d = desk(pause=True, reason="Wrap-up", max_seconds=60.0)
    show(d)
    answer(d)
    assert end(d) == [PauseAgent("agent1", True, "Wrap-up")]
    assert d.paused("agent1") and d.next_deadline() == 170.0
    assert d.tick(169.9) == []
    plan = d.begin("agent1", POP, "resolved", "", None)
    assert d.finish(plan, {}, 120.0) == [PauseAgent("agent1", False, "Wrap-up")]
    assert not d.paused("agent1") and d.next_deadline() is None
    assert d.tick(1000.0) == []


def test_the_pause_stops_after_max_seconds_and_the_call_can_still_be_wrapped_up() -> None:
    d = desk(pause=True, max_seconds=30.0)
    show(d)
    answer(d)
    assert end(d, 110.0) == [PauseAgent("agent1", True, "Wrap-up")]
    assert d.tick(140.0) == [PauseAgent("agent1", False, "Wrap-up")]
    plan = d.begin("agent1", POP, "resolved", "", None)
    assert d.finish(plan, {}, 150.0) == []


def test_max_seconds_zero_waits_for_the_agent() -> None:
    d = desk(pause=True, max_seconds=0.0)
    show(d)
    answer(d)
    assert end(d) == [PauseAgent("agent1", True, "Wrap-up")]
    assert d.next_deadline() is None and d.tick(1e12) == []


def test_a_call_wrapped_up_before_it_ends_causes_no_pause() -> None:
    d = desk(pause=True)
    show(d)
    answer(d)
    d.finish(d.begin("agent1", POP, "resolved", "", None), {}, 105.0)
    assert end(d) == []
    assert d.pending("agent1") == []


def test_two_ended_calls_resume_the_agent_after_both_wrap_ups() -> None:
    d = desk(pause=True, max_seconds=60.0)
    second = "c2:agent1:1"
    show(d)
    answer(d)
    d.observe(
        ShowPop(second, "agent1", "c2", facts("answered", answered_at=103.0)), {"customer": None}, 103.0
    )
    assert end(d, 110.0) == [PauseAgent("agent1", True, "Wrap-up")]
    assert d.observe(RetractPop(second, "agent1", RetractReason.CALL_ENDED), None, 120.0) == []
    assert d.next_deadline() == 180.0  # the latest end counts
    assert [c.pop_id for c in d.pending("agent1")] == [POP, second]
    assert d.finish(d.begin("agent1", POP, "resolved", "", None), {}, 121.0) == []
    assert d.finish(d.begin("agent1", second, "resolved", "", None), {}, 122.0) == [
        PauseAgent("agent1", False, "Wrap-up")
    ]


def test_memory_is_bounded_per_agent_and_in_time() -> None:
    d = desk(max_per_agent=3, keep_seconds=100.0)
    for n in range(5):
        pop = f"c{n}:agent1:1"
        d.observe(ShowPop(pop, "agent1", f"c{n}", facts("answered")), None, float(n))
        d.observe(RetractPop(pop, "agent1", RetractReason.CALL_ENDED), None, float(n))
    assert len(d) == 3
    with pytest.raises(WrapupError):
        d.get("agent1", "c1:agent1:1")
    d.observe(ShowPop("c9:agent2:1", "agent2", "c9", facts("ringing")), None, 500.0)
    assert len(d) == 1  # the ended calls are older than keep_seconds
