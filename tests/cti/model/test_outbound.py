"""Dialer calls (AMI Originate to ``Local/<number>@customers``): answered, no answer, busy, congestion."""

from __future__ import annotations

import pytest

from cti.model import CallState

from .conftest import ReplayFactory

FAILED = [
    # capture, customer number, customer id, cause, cause text, DialEnd status (none on a timeout)
    ("originate_noanswer", "+14155550143", "C-100043", 19, "User alerting, no answer", None),
    ("originate_busy", "+14155550144", "C-100044", 17, "User busy", "BUSY"),
    ("originate_congestion", "+14155550145", "C-100045", 34, "Circuit/channel congestion", "CONGESTION"),
]


@pytest.mark.parametrize("case", FAILED, ids=[case[0] for case in FAILED])
def test_failed_originate(replay: ReplayFactory, case: tuple[str, str, str, int, str, str | None]) -> None:
    name, number, customer_id, cause, cause_text, dial_status = case
    result = replay(name)
    call = result.only_call()
    assert call.direction == "outbound"
    # The customer's number is only in the channel name: the CallerID is our own.
    assert call.remote_num == number and call.dialed == number
    assert (call.caller_num, call.caller_name) == ("8005550100", "Acme Insurance")
    assert call.remote_name is None
    assert call.customer_id == customer_id and call.campaign_id == "renewals-q3"
    # Busy and congestion: the ;1 half says 0 (Unknown), the ;2 half carries the real cause.
    assert (call.hangup_cause, call.hangup_cause_text) == (cause, cause_text)
    assert call.dial_status == dial_status
    assert not call.answered and call.customer_answered_at is None
    assert call.originate_id == f"{name}-0002"
    states = [c.call.state for c in result.call_events()]
    assert CallState.DIALING in states
    assert set(states) <= {CallState.ROUTING, CallState.DIALING, CallState.ENDED}
    assert result.calls("new")[0].direction == "outbound", "direction is known from the first event"


def test_originate_answered(replay: ReplayFactory) -> None:
    """+14155550142 answers after 3 s, queues in support, Alice answers; the customer hangs up."""
    result = replay("originate_answered")
    call = result.only_call()
    assert call.direction == "outbound"
    assert call.remote_num == "+14155550142"
    assert call.caller_num == "8005550100"
    assert call.variables["CUSTOMER_ID"] == "C-100042"
    assert call.campaign_id == "renewals-q3"
    assert call.queue == "support" and call.agents == ("agent1",)
    assert call.wait_time == 2 and call.talk_time == 6
    assert call.hangup_cause == 16 and call.ended_by == "customer"
    assert call.customer_answered_at is not None and call.started_at is not None
    assert call.customer_answered_at - call.started_at == pytest.approx(3.0, abs=0.1)
    flow = [c.change for c in result.call_events()]
    for earlier, later in [
        ("dialing", "customer_answered"),
        ("customer_answered", "queued"),
        ("queued", "ringing_agent"),
        ("ringing_agent", "answered"),
        ("answered", "ended"),
    ]:
        assert flow.index(earlier) < flow.index(later)
    # The screen-pop for the agent carries the campaign and the lead.
    pop = result.calls("ringing_agent")[0]
    assert pop.agent == "agent1" and pop.customer_id == "C-100042" and pop.remote_num == "+14155550142"
