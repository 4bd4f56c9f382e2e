"""May we call this number now? Consent, do-not-call and calling windows, with their reasons."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from customers.consent import Holder, decide
from customers.model import ConsentScope, DoNotCall
from customers.sqlite_store import SQLiteStore
from customers.store import InvalidInput, NotFound

NY_NUMBER = "+12125550100"
UK_NUMBER = "+442079460958"
SD_NUMBER = "+16055550100"  # South Dakota: Mountain and Central time


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> float:
    return datetime(year, month, day, hour, minute, tzinfo=UTC).timestamp()


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock(utc(2026, 11, 1, 12))


@pytest.fixture
async def store(tmp_path: Path, clock: Clock) -> AsyncIterator[SQLiteStore]:
    async with SQLiteStore(tmp_path / "customers.db", clock=clock) as opened:
        yield opened


async def test_number_on_do_not_call(store: SQLiteStore) -> None:
    await store.add_do_not_call("number", "(212) 555-0100", source="national registry")
    answer = await store.may_call("212-555-0100", utc(2026, 11, 29, 17))
    assert not answer.allowed
    assert answer.reasons == (
        "number +12125550100 on do-not-call since 2026-11-01 (source: national registry)",
    )
    assert answer.number == NY_NUMBER
    assert answer.customer_ids == ()
    assert answer.local_time == "2026-11-29 12:00 America/New_York"
    assert answer.next_allowed_at is None
    await store.remove_do_not_call(ConsentScope.NUMBER, "+1 212 555 0100")
    assert (await store.may_call(NY_NUMBER, utc(2026, 11, 29, 17))).allowed
    with pytest.raises(NotFound):
        await store.remove_do_not_call("number", NY_NUMBER)


async def test_every_reason_is_given(store: SQLiteStore, clock: Clock) -> None:
    ann = await store.create_customer(
        "Ann Lee", identities=[("phone", NY_NUMBER)], timezone="America/New_York"
    )
    await store.add_do_not_call("number", NY_NUMBER, source="national registry")
    clock.now = utc(2026, 11, 5, 9)
    await store.add_do_not_call(
        "customer", ann.id, source="customer request", reason="asked twice", until=utc(2027, 5, 1)
    )
    await store.set_channel_permission(ann.id, "call", False)
    answer = await store.may_call(NY_NUMBER, utc(2026, 11, 30, 2, 14))  # 21:14 in New York
    assert answer.reasons == (
        "number +12125550100 on do-not-call since 2026-11-01 (source: national registry)",
        f"customer {ann.id} (Ann Lee) on do-not-call since 2026-11-05 (source: customer request) "
        "until 2027-05-01: asked twice",
        f"customer {ann.id} (Ann Lee) does not accept calls (call channel denied)",
        "outside the calling window 08:00-21:00 in the callee's local time (21:14 in America/New_York)",
    )
    assert answer.customer_ids == (ann.id,)
    assert answer.local_time == "2026-11-29 21:14 America/New_York"
    assert answer.next_allowed_at is None  # not only time forbids it
    consent = await store.consent(ann.id)
    assert consent.channels == {"call": False}
    assert [(e.scope, e.source) for e in consent.do_not_call] == [
        (ConsentScope.NUMBER, "national registry"),
        (ConsentScope.CUSTOMER, "customer request"),
    ]


async def test_expired_do_not_call_no_longer_counts(store: SQLiteStore) -> None:
    await store.add_do_not_call("number", NY_NUMBER, source="registry", until=utc(2026, 11, 20))
    assert not (await store.may_call(NY_NUMBER, utc(2026, 11, 19, 17))).allowed
    assert (await store.may_call(NY_NUMBER, utc(2026, 11, 21, 17))).allowed


async def test_window_in_the_customers_zone_and_next_allowed(store: SQLiteStore) -> None:
    # A New York number whose holder lives in Los Angeles: the customer's zone wins.
    await store.create_customer("Bo", identities=[("phone", NY_NUMBER)], timezone="America/Los_Angeles")
    early = await store.may_call(NY_NUMBER, utc(2026, 11, 29, 15, 30))  # 07:30 in Los Angeles
    assert early.reasons == (
        "outside the calling window 08:00-21:00 in the callee's local time (07:30 in America/Los_Angeles)",
    )
    assert early.local_time == "2026-11-29 07:30 America/Los_Angeles"
    assert early.next_allowed_at == utc(2026, 11, 29, 16)  # 08:00 there
    assert (await store.may_call(NY_NUMBER, utc(2026, 11, 29, 16))).allowed
    late = await store.may_call(NY_NUMBER, utc(2026, 11, 30, 5), window=("09:00", "20:00"))  # 21:00 LA
    assert late.next_allowed_at == utc(2026, 11, 30, 17)  # 09:00 next morning


async def test_window_in_the_numbers_zone(store: SQLiteStore) -> None:
    # Nobody holds the number: its zone comes from phonenumbers.
    answer = await store.may_call("+44 20 7946 0958", utc(2026, 11, 29, 20, 30), window=("09:00", "20:00"))
    assert answer.reasons == (
        "outside the calling window 09:00-20:00 in the callee's local time (20:30 in Europe/London)",
    )
    assert answer.next_allowed_at == utc(2026, 11, 30, 9)


async def test_several_zones_for_one_number_must_all_be_inside(store: SQLiteStore) -> None:
    # 14:30 UTC is 08:30 in Central time but 07:30 in Mountain time: too early for one of them.
    answer = await store.may_call(SD_NUMBER, utc(2026, 11, 30, 14, 30))
    assert not answer.allowed
    assert answer.reasons == (
        "outside the calling window 08:00-21:00 in the callee's local time (07:30 in America/Denver)",
    )
    assert "America/North_Dakota/Center" in answer.local_time
    assert answer.next_allowed_at == utc(2026, 11, 30, 15)  # 08:00 in Denver
    # 03:30 UTC is 20:30 in Denver but 21:30 in Central time: too late for the other.
    evening = await store.may_call(SD_NUMBER, utc(2026, 12, 1, 3, 30))
    assert evening.reasons == (
        "outside the calling window 08:00-21:00 in the callee's local time "
        "(21:30 in America/North_Dakota/Center)",
    )
    assert evening.next_allowed_at == utc(2026, 12, 1, 15)


async def test_quiet_hours_across_midnight(store: SQLiteStore) -> None:
    cy = await store.create_customer("Cy", identities=[("phone", UK_NUMBER)], timezone="Europe/London")
    consent = await store.set_quiet_hours(cy.id, "21:00", "08:00")
    assert consent.quiet_hours == ("21:00", "08:00")
    window = ("00:00", "23:59")
    for hour, minute, allowed in [
        (20, 59, True),
        (21, 0, False),
        (23, 30, False),
        (7, 59, False),
        (8, 0, True),
    ]:
        day = 30 if hour < 12 else 29
        answer = await store.may_call(UK_NUMBER, utc(2026, 11, day, hour, minute), window=window)
        assert answer.allowed is allowed, (hour, minute, answer)
    answer = await store.may_call(UK_NUMBER, utc(2026, 11, 29, 23, 30), window=window)
    assert answer.reasons == (f"quiet hours 21:00-08:00 of customer {cy.id} (Cy) (23:30 in Europe/London)",)
    assert answer.next_allowed_at == utc(2026, 11, 30, 8)
    # Quiet hours and the window together: the first instant both allow.
    both = await store.may_call(UK_NUMBER, utc(2026, 11, 29, 23, 30), window=("09:00", "17:00"))
    assert len(both.reasons) == 2
    assert both.next_allowed_at == utc(2026, 11, 30, 9)
    await store.set_quiet_hours(cy.id, None, None)
    assert (await store.consent(cy.id)).quiet_hours is None


async def test_marketing_needs_an_explicit_yes(store: SQLiteStore) -> None:
    di = await store.create_customer("Di", identities=[("phone", NY_NUMBER)], timezone="America/New_York")
    noon = utc(2026, 11, 29, 17)
    assert (await store.may_call(NY_NUMBER, noon)).allowed  # service: unknown counts as allowed
    answer = await store.may_call(NY_NUMBER, noon, purpose="marketing")
    assert answer.reasons == (f"customer {di.id} (Di) has not given explicit consent to marketing calls",)
    await store.set_channel_permission(di.id, "call", True)
    assert (await store.may_call(NY_NUMBER, noon, purpose="marketing")).allowed
    nobody = await store.may_call("+1 415 555 0188", utc(2026, 11, 29, 20), purpose="marketing")
    assert nobody.reasons == ("no customer holds +14155550188: no explicit consent to marketing calls",)


async def test_shared_number_the_strictest_holder_decides(store: SQLiteStore) -> None:
    ed = await store.create_customer("Ed", identities=[("phone", NY_NUMBER)], timezone="America/New_York")
    flo = await store.create_customer("Flo", timezone="America/New_York")
    await store.add_identity(flo.id, "phone", NY_NUMBER, shared=True)
    await store.set_channel_permission(flo.id, "call", False)
    answer = await store.may_call(NY_NUMBER, utc(2026, 11, 29, 17))
    assert set(answer.customer_ids) == {ed.id, flo.id}
    assert answer.reasons == (f"customer {flo.id} (Flo) does not accept calls (call channel denied)",)


async def test_bad_input_is_rejected_with_the_field(store: SQLiteStore) -> None:
    with pytest.raises(InvalidInput) as caught:
        await store.may_call("anonymous", 0)
    assert caught.value.field == "number"
    with pytest.raises(InvalidInput) as caught:
        await store.may_call(NY_NUMBER, 0, window=("8am", "9pm"))
    assert caught.value.field == "window[0]"
    with pytest.raises(InvalidInput) as caught:
        await store.may_call(NY_NUMBER, 0, purpose="sales")
    assert caught.value.field == "purpose"
    gus = await store.create_customer("Gus")
    with pytest.raises(InvalidInput) as caught:
        await store.set_quiet_hours(gus.id, "22:00", None)
    assert caught.value.field == "quiet_hours"
    with pytest.raises(InvalidInput) as caught:
        await store.add_do_not_call("number", "not a number", source="x")
    assert caught.value.field == "target"
    with pytest.raises(NotFound):
        await store.add_do_not_call("customer", "nobody", source="x")


def test_policy_without_a_zone_forbids() -> None:
    answer = decide("+80012345678", 0.0, holders=[], number_dnc=[], number_zones=[])
    assert answer.reasons == ("time zone of +80012345678 unknown: the calling window cannot be checked",)
    assert answer.next_allowed_at is None


def test_policy_window_across_midnight() -> None:
    holder = Holder("c1", "Night Owl", timezone="Asia/Shanghai")
    night = ("22:00", "02:00")
    # 15:30 UTC is 23:30 in Shanghai: inside a window that spans midnight.
    assert decide(
        "+8613800138000",
        utc(2026, 11, 29, 15, 30),
        holders=[holder],
        number_dnc=[],
        number_zones=[],
        window=night,
    ).allowed
    answer = decide(
        "+8613800138000",
        utc(2026, 11, 29, 19),
        holders=[holder],
        number_dnc=[],
        number_zones=[],
        window=night,
    )
    assert answer.reasons == (
        "outside the calling window 22:00-02:00 in the callee's local time (03:00 in Asia/Shanghai)",
    )
    assert answer.next_allowed_at == utc(2026, 11, 30, 14)  # 22:00 in Shanghai
    dnc = DoNotCall(ConsentScope.NUMBER, "+8613800138000", "agent:bob", utc(2026, 1, 2))
    blocked = decide(
        "+8613800138000", utc(2026, 11, 29, 15, 30), holders=[holder], number_dnc=[dnc], number_zones=[]
    )
    assert blocked.reasons[0] == "number +8613800138000 on do-not-call since 2026-01-02 (source: agent:bob)"
