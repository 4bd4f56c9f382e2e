"""Calls in an IVR: FastAGI to the end, FastAGI with the caller hanging up, AsyncAGI over AMI."""

from __future__ import annotations

from cti.model import CallState

from .conftest import ReplayFactory


def test_fastagi_ivr(replay: ReplayFactory) -> None:
    """The call is in the IVR from the AGI() application to the AGI HANGUP that ends it."""
    result = replay("ivr_agi")
    call = result.only_call()
    assert (call.caller_num, call.caller_name) == ("+14155550123", "Jane Doe")
    assert [c.change for c in result.call_events() if c.change != "originate"] == [
        "new",
        "caller",
        "ivr",
        "ended",
    ]
    assert call.ivr is not None
    assert (call.ivr.context, call.ivr.exten, call.ivr.application) == ("ivr", "s", "AGI")
    assert call.ivr.script == "agi://127.0.0.1:4573/ivr?lang=en"
    assert call.ivr.left_at == call.ended_at
    # The AGI HANGUP command ends the call with cause 0 (Unknown).
    assert (call.hangup_cause, call.hangup_cause_text) == (0, "Unknown")
    assert call.queue is None and not call.answered


def test_the_visit_keeps_what_the_caller_keyed_in_and_what_the_ivr_did(replay: ReplayFactory) -> None:
    """DTMFEnd received on the IVR leg: ``2``, ``4155``, ``#`` as the caller sent them; the AGI
    commands that play, ask, run or set something, in order, the script's bookkeeping left out."""
    call = replay("ivr_agi").only_call()
    assert call.ivr is not None
    assert call.ivr.digits == "24155#"
    assert call.ivr.steps == (
        "SET VARIABLE IVR_LANG en",
        'STREAM FILE hello-world ""',
        'STREAM FILE demo-instruct "123"',
        "GET DATA vm-enter-num-to-call 6000 4",
        'SAY DIGITS 4155 ""',
        "WAIT FOR DIGIT 5000",
        "SET VARIABLE IVR_CHOICE 2",
        "SET VARIABLE IVR_ACCOUNT 4155",
        "EXEC Playback beep",
        "EXEC NoSuchApplication foo",
        "GET DATA",
    )


def test_digits_arrive_in_the_visit_as_they_are_keyed(replay: ReplayFactory) -> None:
    """Stopped just before the third DTMFEnd (the ``1`` of ``4155``): the visit holds ``24``."""
    seen = 0

    def stop(msg: object) -> bool:
        nonlocal seen
        seen += getattr(msg, "name", None) == "DTMFEnd"
        return seen == 3

    result = replay("ivr_agi", stop=stop)
    (call,) = result.model.live_calls()
    assert call.ivr is not None and call.ivr.digits == "24"


def test_state_is_ivr_during_every_agi_command(replay: ReplayFactory) -> None:
    for nth in (1, 10, 22):
        seen = 0

        def stop(msg: object, nth: int = nth) -> bool:
            nonlocal seen
            seen += getattr(msg, "name", None) == "AGIExecStart"
            return seen == nth

        result = replay("ivr_agi", stop=stop)
        (call,) = result.model.live_calls()
        assert call.state is CallState.IVR, nth
        assert call.ivr is not None and call.ivr.left_at is None


def test_caller_hangs_up_in_the_ivr(replay: ReplayFactory) -> None:
    result = replay("ivr_agi_hangup")
    call = result.only_call()
    assert (call.caller_num, call.caller_name) == ("6505550172", "Liam Johnson")
    assert result.calls("ended")[0].state is CallState.ENDED
    assert [c.call.state for c in result.call_events()][-2] is CallState.IVR
    assert call.hangup_cause == 16 and call.ended_by == "customer"
    assert call.ended_at is not None and call.ivr is not None
    assert 4.0 < call.ended_at - call.ivr.entered_at < 6.0


def test_async_agi(replay: ReplayFactory) -> None:
    """AsyncAGIStart puts the call in the IVR; ASYNCAGI BREAK (AsyncAGIEnd) takes it out."""
    result = replay("ivr_async_agi")
    call = result.only_call()
    flow = [(c.change, c.call.state) for c in result.call_events() if c.change != "originate"]
    assert flow == [
        ("new", CallState.ROUTING),
        ("caller", CallState.ROUTING),
        ("ivr", CallState.IVR),
        ("ivr_left", CallState.ROUTING),
        ("ended", CallState.ENDED),
    ]
    assert call.ivr is not None and call.ivr.application == "AsyncAGI"
    assert call.ivr.script == "agi:async"
    assert call.ivr.left_at is not None and call.ivr.left_at < (call.ended_at or 0)
    assert call.ivr.left_at - call.ivr.entered_at > 2.0
    assert call.ivr.steps == ('STREAM FILE beep ""', "SET VARIABLE IVR_CHOICE 1", "WAIT FOR DIGIT 1000")
    assert call.ivr.digits == ""


def test_from_the_ivr_into_a_queue(replay: ReplayFactory) -> None:
    """``ivr_queue_answered``: the IVR runs ``EXEC Queue``; QueueCallerJoin takes the call out of
    the IVR with what was keyed in so far; the ``#`` keyed after the agent answered is not part
    of the visit (nor are the copies relayed to the agent's channels)."""
    result = replay("ivr_queue_answered")
    call = result.only_call()
    flow = [c.call.state for c in result.call_events()]
    assert CallState.IVR in flow and CallState.QUEUED in flow
    assert flow.index(CallState.IVR) < flow.index(CallState.QUEUED) < flow.index(CallState.CONNECTED)
    assert (call.queue, call.agent, call.answered) == ("support", "agent1", True)
    assert call.ivr is not None and call.ivr.digits == "24155"
    assert call.ivr.steps[-2:] == ("SET VARIABLE IVR_ACCOUNT 4155", "EXEC Queue support,,,,60")
    assert call.queued_at is not None and call.ivr.left_at == call.queued_at
