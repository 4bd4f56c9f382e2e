"""Click-to-dial: the Originate it sends, the numbers and times it refuses, and a PBX link that is
down (a real AMI client that is not connected, a real SQLite store)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime

import pytest

from callbridge.fakepbx import FakePBX
from callbridge.settings import DialSettings
from cti.ami.client import AMIClient, AMIConfig
from customers.sqlite_store import SQLiteStore
from screenpop.dial import ClickToDial, DialError, DialRequest, originate_fields

NOON_IN_CALIFORNIA = datetime(2026, 11, 30, 20, 0, tzinfo=UTC).timestamp()
MIDNIGHT_IN_CALIFORNIA = datetime(2026, 12, 1, 8, 0, tzinfo=UTC).timestamp()


def test_the_originate_rings_the_agents_device_then_dials_the_number_in_the_context() -> None:
    config = DialSettings(context="customers", caller_id='"Acme" <+18005550100>', timeout=25.5)
    fields = originate_fields(DialRequest("agent1", "PJSIP/1001", "+14155550123", "c-42"), config)
    assert fields == [
        ("Channel", "PJSIP/1001"),
        ("Context", "customers"),
        ("Exten", "+14155550123"),
        ("Priority", "1"),
        ("Timeout", "25500"),
        ("Async", "true"),
        ("CallerID", '"Acme" <+18005550100>'),
        ("Variable", "CALLBRIDGE_AGENT=agent1"),
        ("Variable", "CUSTOMER_ID=c-42"),
    ]
    plain = originate_fields(DialRequest("agent2", "Local/agent2@agents", "+14155550123"), DialSettings())
    assert ("CallerID" not in dict(plain)) and plain[-1] == ("Variable", "CALLBRIDGE_AGENT=agent2")


@pytest.fixture
async def store() -> AsyncIterator[SQLiteStore]:
    async with SQLiteStore(":memory:") as opened:
        yield opened


async def refusal(dialer: ClickToDial, number: str) -> DialError:
    with pytest.raises(DialError) as caught:
        await dialer.dial("agent1", "Local/agent1@agents/n", number)
    return caught.value


async def test_outside_the_calling_window_the_dial_is_refused_with_the_reason(store: SQLiteStore) -> None:
    client = AMIClient(AMIConfig(port=1))
    dialer = ClickToDial(store, client.send_action, DialSettings(), clock=lambda: MIDNIGHT_IN_CALIFORNIA)
    error = await refusal(dialer, "415 555 0123")
    assert (error.status, error.code, error.field) == (403, "may-not-call", "number")
    assert (
        "outside the calling window 08:00-21:00" in error.message and "America/Los_Angeles" in error.message
    )


async def test_a_customer_who_denied_calls_is_not_dialled(store: SQLiteStore) -> None:
    jane = await store.create_customer("Jane Doe", identities=[("phone", "+14155550123")])
    await store.set_channel_permission(jane.id, "call", False)
    dialer = ClickToDial(store, AMIClient(AMIConfig(port=1)).send_action, DialSettings())
    dialer.clock = lambda: NOON_IN_CALIFORNIA
    error = await refusal(dialer, "+1 (415) 555-0123")
    assert error.status == 403 and "does not accept calls" in error.message


async def test_without_a_pbx_link_nothing_is_dialled_and_it_says_so(store: SQLiteStore) -> None:
    client = AMIClient(AMIConfig(port=1))
    dialer = ClickToDial(store, client.send_action, DialSettings(), clock=lambda: NOON_IN_CALIFORNIA)
    error = await refusal(dialer, "4155550123")
    assert (error.status, error.code) == (503, "pbx-unavailable")
    error = await refusal(dialer, "12")
    assert (error.status, error.code, error.field) == (400, "invalid-number", "number")


@asynccontextmanager
async def dialer_on_pbx(store: SQLiteStore) -> AsyncIterator[tuple[FakePBX, ClickToDial]]:
    """A click-to-dial (region GB, at noon UTC) on a real AMI client logged in to the fake PBX."""
    async with FakePBX([], speed=None) as pbx:
        client = AMIClient(AMIConfig(port=pbx.port, username="lab", secret="lab", backoff_initial=0.05))
        async with client:
            await client.wait_connected(timeout=10)
            dialer = ClickToDial(store, client.send_action, DialSettings(), region="GB")
            dialer.clock = lambda: datetime(2026, 11, 30, 12, 0, tzinfo=UTC).timestamp()
            yield pbx, dialer


async def test_the_pbx_gets_the_originate_and_the_answer_comes_back_at_once(store: SQLiteStore) -> None:
    async with dialer_on_pbx(store) as (pbx, dialer):
        result = await dialer.dial("agent1", "Local/agent1@agents/n", "020 7946 0958")
    assert result["number"] == "+442079460958"
    assert result["message"] == "Originate successfully queued"
    (originate,) = pbx.actions_named("Originate")
    assert originate.action_id == result["action_id"]
    assert originate.get("Exten") == "+442079460958" and originate.get("Channel") == "Local/agent1@agents/n"


async def test_a_number_one_customer_holds_is_dialled_with_that_customer_id(store: SQLiteStore) -> None:
    jane = await store.create_customer("Jane Doe", identities=[("phone", "+442079460958")])
    async with dialer_on_pbx(store) as (pbx, dialer):
        await dialer.dial("agent1", "Local/agent1@agents/n", "020 7946 0958")
        await dialer.dial("agent1", "Local/agent1@agents/n", "020 7946 0959")
    held, nobody = pbx.actions_named("Originate")
    assert f"CUSTOMER_ID={jane.id}" in held.get_all("Variable")
    assert not [v for v in nobody.get_all("Variable") if v.startswith("CUSTOMER_ID=")]
