"""Pop assembly on real SQLite stores: captures replayed through codec -> ``CallModel`` ->
``PopTracker``, and the ``ShowPop`` it gives assembled against the customers behind the number."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from callbridge.captures import load_capture, load_messages
from cti.ami.codec import MessageReader
from cti.ami.message import Message
from cti.model import CallChanged, CallModel
from customers.model import Identity, IdentityKind, NewCustomer, Value
from customers.sqlite_store import SQLiteStore
from screenpop import PopAssembler, PopTracker, ShowPop, payload_json
from screenpop.assembly import CLEAR_LEAD

DAY = 86400.0
NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC).timestamp()
JANE = "+14155550123"


def first_show(name: str) -> ShowPop:
    """The first ``ShowPop`` of a capture, each message at the time the capture recorded."""
    times = [r["t"] for r in load_messages(name) if r["dir"] == "in" and "msg" in r]
    model, tracker = CallModel(), PopTracker()
    reader = MessageReader()
    index = 0
    for chunk in load_capture(name).chunks:
        if chunk.direction != "in" or chunk.data is None:
            continue
        for item in reader.feed(chunk.data):
            if not isinstance(item, Message):
                continue
            for change in model.apply(item, times[index]):
                if isinstance(change, CallChanged):
                    for command in tracker.apply(change, times[index]):
                        if isinstance(command, ShowPop):
                            return command
            index += 1
    raise AssertionError(f"{name}: no pop shown")


def show_with(**facts: Any) -> ShowPop:
    """A ``ShowPop`` as the tracker makes one, with some facts changed."""
    base = dict(first_show("queue_answered").facts)
    base.update(facts)
    return ShowPop("L1:agent1:1", "agent1", "L1", base)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    async with SQLiteStore(tmp_path / "customers.db", clock=lambda: NOW) as opened:
        yield opened


async def add_jane(store: SQLiteStore) -> str:
    jane = await store.create_customer(
        "Jane Doe",
        identities=[
            Identity(IdentityKind.PHONE, "(415) 555-0123", label="mobile"),
            ("email", "Jane.Doe@example.com"),
        ],
        given_name="Jane",
        family_name="Doe",
        language="en",
    )
    for days, channel, summary in [
        (30, "call", "billing question"),
        (9, "email", "invoice copy"),
        (5, "call", "address change"),
        (3, "order", "order #1001"),
        (2, "call", "delivery late"),
        (1, "call", "delivery arrived"),
    ]:
        await store.append_interaction(
            jane.id, channel, at=NOW - days * DAY, direction="inbound", summary=summary
        )
    await store.add_note(jane.id, "agent:bob", "Prefers calls after 5 pm; speaks slowly.", pinned=True)
    await store.set_channel_permission(jane.id, "call", True)
    await store.set_channel_permission(jane.id, "sms", False)
    await store.set_value(jane.id, Value(score=82.5, frequency=4, monetary=310.0, explanation="gold"))
    await store.set_segments("vip", [jane.id], NOW)
    return jane.id


# --- the capture: Jane Doe calls support ---------------------------------------------------------


async def test_queue_answered_pops_jane_with_her_profile(store: SQLiteStore) -> None:
    jane = await add_jane(store)
    show = first_show("queue_answered")
    assert show.facts["caller_num"] == JANE
    payload = await PopAssembler(store, per_channel=3).assemble(show)

    assert (payload["pop_id"], payload["agent_id"], payload["call_id"]) == (
        show.pop_id,
        show.agent_id,
        show.call_id,
    )
    assert payload["call"] == show.facts and payload["call"]["queue"] == "support"
    assert payload["lookup"] == {"by": "phone", "value": JANE}
    assert payload["match"] == "unique" and "error" not in payload and "actions" not in payload
    assert payload["campaign"] is None
    assert [(c["id"], c["display_name"]) for c in payload["candidates"]] == [(jane, "Jane Doe")]
    assert payload["candidates"][0]["reasons"][0] == f"exact phone {JANE}"

    customer = payload["customer"]
    assert (customer["id"], customer["display_name"], customer["language"]) == (jane, "Jane Doe", "en")
    phone = next(i for i in customer["identities"] if i["kind"] == "phone")
    assert (phone["value"], phone["raw"], phone["label"]) == (JANE, "(415) 555-0123", "mobile")
    assert {i["kind"] for i in customer["identities"]} == {"phone", "email"}
    # The latest per channel, newest first, at most per_channel of each.
    calls = customer["latest"]["call"]
    assert [c["summary"] for c in calls] == ["delivery arrived", "delivery late", "address change"]
    assert [c["summary"] for c in customer["latest"]["email"]] == ["invoice copy"]
    assert customer["latest"]["order"][0]["channel"] == "order"
    assert customer["notes"][0]["text"].startswith("Prefers calls") and customer["notes"][0]["pinned"]
    assert customer["consent"]["channels"] == {"call": True, "sms": False}
    assert customer["consent"]["do_not_call"] == []
    assert customer["value"]["score"] == 82.5 and customer["segments"] == ["vip"]

    assert json.loads(payload_json(payload)) == payload


async def test_payload_json_is_compact_and_keeps_non_ascii(store: SQLiteStore) -> None:
    await store.create_customer("Lukas Müller", identities=[("phone", "(415) 555-0123")])
    payload = await PopAssembler(store).assemble(first_show("queue_answered"))
    text = payload_json(payload)
    assert "Lukas Müller" in text and "\\u00fc" not in text
    assert '", "' not in text and '": ' not in text
    with pytest.raises(ValueError):
        payload_json({"score": float("nan")})


# --- several holders -----------------------------------------------------------------------------


async def test_a_number_shared_by_two_customers_is_ambiguous(store: SQLiteStore) -> None:
    mum = await store.create_customer("Mum Doe")
    dad = await store.create_customer("Dad Doe")
    for holder in (mum, dad):
        await store.add_identity(holder.id, "phone", "415-555-0123", shared=True, label="home")
    await store.append_interaction(dad.id, "call", at=NOW - DAY, direction="inbound")
    payload = await PopAssembler(store).assemble(first_show("queue_answered"))
    assert payload["match"] == "ambiguous"
    assert payload["customer"] is None and "actions" not in payload
    assert [c["id"] for c in payload["candidates"]] == [dad.id, mum.id], "recency breaks the tie"
    assert payload["candidates_total"] == 2
    assert all("shared number (2 customers)" in c["reasons"] for c in payload["candidates"])
    assert payload["candidates"][0]["score"] - payload["candidates"][1]["score"] < CLEAR_LEAD


async def test_own_number_against_a_shared_one_ranks_first(store: SQLiteStore) -> None:
    owner = await store.create_customer("Jane Doe", identities=[("phone", "(415) 555-0123")])
    other = await store.create_customer("Office")
    await store.add_identity(other.id, "phone", "+14155550123", shared=True, label="switchboard")
    payload = await PopAssembler(store).assemble(first_show("queue_answered"))
    assert payload["match"] == "ranked"
    assert payload["customer"]["id"] == owner.id
    assert [c["id"] for c in payload["candidates"]] == [owner.id, other.id]


async def test_candidates_are_capped_and_counted(store: SQLiteStore) -> None:
    for n in range(4):
        holder = await store.create_customer(f"Family {n}")
        await store.add_identity(holder.id, "phone", JANE, shared=True)
    payload = await PopAssembler(store, max_candidates=2).assemble(first_show("queue_answered"))
    assert payload["match"] == "ambiguous"
    assert len(payload["candidates"]) == 2 and payload["candidates_total"] == 4


# --- nobody to show ------------------------------------------------------------------------------


async def test_unknown_number_offers_create_and_link(store: SQLiteStore) -> None:
    await store.create_customer("Somebody Else", identities=[("phone", "+12125550100")])
    payload = await PopAssembler(store).assemble(first_show("queue_answered"))
    assert payload["match"] == "unknown"
    assert payload["customer"] is None and payload["candidates"] == []
    create, link = payload["actions"]
    assert create["action"] == "create_customer" and create["method"] == "POST"
    assert create["href"] == "/api/customers"
    assert create["prefill"] == {
        "display_name": "Jane Doe",
        "identities": [{"kind": "phone", "value": JANE, "label": ""}],
    }
    assert link["action"] == "link_number"
    assert link["href"] == "/api/customers/{customer_id}/identities"
    assert link["body"] == {"kind": "phone", "value": JANE}
    payload_json(payload)


@pytest.mark.parametrize("number", ["anonymous", "<unknown>", "", None, "  Anonymous "])
async def test_withheld_caller_is_not_looked_up(tmp_path: Path, number: str | None) -> None:
    # A closed store: any lookup would fail and put an error in the pop.
    closed = SQLiteStore(tmp_path / "never-opened.db")
    show = show_with(caller_num=number, caller_name="<unknown>", remote_num=number)
    payload = await PopAssembler(closed).assemble(show)
    assert payload["match"] == "withheld" and payload["lookup"] is None
    assert "error" not in payload and payload["customer"] is None
    assert payload["actions"] == [
        {"action": "create_customer", "method": "POST", "href": "/api/customers", "prefill": {}}
    ]


async def test_a_caller_id_that_is_no_phone_number_is_unknown_without_link(store: SQLiteStore) -> None:
    payload = await PopAssembler(store).assemble(show_with(caller_num="x", caller_name="x"))
    assert payload["match"] == "unknown" and "error" not in payload
    assert payload["lookup"] == {"by": "phone", "value": "x", "valid": False}
    assert [a["action"] for a in payload["actions"]] == ["create_customer"]
    assert payload["actions"][0]["prefill"] == {}, "the caller name repeating the number is no name"


# --- outbound ------------------------------------------------------------------------------------


async def test_outbound_pops_the_campaign_lead(store: SQLiteStore) -> None:
    """The dialer's originate carries CUSTOMER_ID=C-100042; the number is on somebody else too."""
    await store.create_customers(
        [NewCustomer("Liam Smith", identities=((IdentityKind.PHONE, "+14155550142"),), key="crm:1")]
    )
    lead = await store.create_customer("Maria Garcia", customer_id="C-100042")
    await store.append_interaction(lead.id, "call", at=NOW - 7 * DAY, direction="outbound", summary="renewal")
    show = first_show("originate_answered")
    assert (show.facts["direction"], show.facts["customer_id"]) == ("outbound", "C-100042")
    payload = await PopAssembler(store).assemble(show)
    assert payload["lookup"] == {"by": "customer_id", "value": "C-100042"}
    assert payload["match"] == "unique"
    assert payload["customer"]["id"] == "C-100042"
    assert payload["customer"]["latest"]["call"][0]["summary"] == "renewal"
    (candidate,) = payload["candidates"]
    assert candidate == {
        "id": "C-100042",
        "display_name": "Maria Garcia",
        "score": 100.0,
        "reasons": ["campaign lead C-100042"],
    }
    assert payload["campaign"] == {"campaign_id": "renewals-q3", "lead": "C-100042"}


async def test_outbound_lead_merged_pops_the_survivor(store: SQLiteStore) -> None:
    keep = await store.create_customer("Maria Garcia")
    await store.create_customer("Maria G.", customer_id="C-100042")
    await store.merge(keep.id, "C-100042")
    payload = await PopAssembler(store).assemble(first_show("originate_answered"))
    assert payload["match"] == "unique" and payload["customer"]["id"] == keep.id
    assert payload["candidates"][0]["reasons"] == ["campaign lead C-100042", f"merged into {keep.id}"]


async def test_outbound_unknown_lead_falls_back_to_the_dialled_number(store: SQLiteStore) -> None:
    liam = await store.create_customer("Liam Smith", identities=[("phone", "(415) 555-0142")])
    payload = await PopAssembler(store).assemble(first_show("originate_answered"))
    assert payload["lookup"] == {"by": "phone", "value": "+14155550142"}
    assert payload["match"] == "unique" and payload["customer"]["id"] == liam.id


async def test_outbound_without_a_lead_looks_up_the_remote_number(store: SQLiteStore) -> None:
    liam = await store.create_customer("Liam Smith", identities=[("phone", "(415) 555-0142")])
    show = first_show("originate_answered")
    facts = {**show.facts, "customer_id": None, "campaign_id": None, "variables": {}}
    payload = await PopAssembler(store).assemble(ShowPop(show.pop_id, show.agent_id, show.call_id, facts))
    assert payload["lookup"] == {"by": "phone", "value": "+14155550142"}, "not our own caller id"
    assert payload["customer"]["id"] == liam.id and payload["campaign"] is None


async def test_outbound_unknown_number_prefills_the_dialled_number(store: SQLiteStore) -> None:
    payload = await PopAssembler(store).assemble(first_show("originate_answered"))
    assert payload["match"] == "unknown"
    create = payload["actions"][0]
    assert create["prefill"] == {"identities": [{"kind": "phone", "value": "+14155550142", "label": ""}]}


# --- failures ------------------------------------------------------------------------------------


async def test_a_closed_store_still_gives_the_pop(
    store: SQLiteStore, caplog: pytest.LogCaptureFixture
) -> None:
    await add_jane(store)
    await store.close()
    show = first_show("queue_answered")
    with caplog.at_level(logging.ERROR, logger="screenpop.assembly"):
        payload = await PopAssembler(store).assemble(show)
    assert payload["call"] == show.facts and payload["pop_id"] == show.pop_id
    assert payload["customer"] is None and payload["match"] is None
    assert payload["error"]["code"] == "store-closed"
    assert str(store.path) not in payload["error"]["message"], "details stay in the log"
    assert "actions" not in payload, "no create offer when the customer may exist"
    (record,) = caplog.records
    assert show.pop_id in record.getMessage() and show.call_id in record.getMessage()
    assert record.exc_info is not None
    payload_json(payload)


async def test_a_closed_store_for_an_outbound_lead_still_gives_the_pop(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    closed = SQLiteStore(tmp_path / "closed.db")
    with caplog.at_level(logging.ERROR, logger="screenpop.assembly"):
        payload = await PopAssembler(closed).assemble(first_show("originate_answered"))
    assert payload["error"]["code"] == "store-closed" and payload["customer"] is None
    assert payload["campaign"] == {"campaign_id": "renewals-q3", "lead": "C-100042"}


def test_bad_limits_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="per_channel"):
        PopAssembler(SQLiteStore(tmp_path / "x.db"), per_channel=0)
    with pytest.raises(ValueError, match="max_candidates"):
        PopAssembler(SQLiteStore(tmp_path / "x.db"), max_candidates=0)


# --- Rule 5: the caller looked up before the ring -----------------------------------------------------


async def test_an_early_lookup_makes_the_same_pop_once_then_the_store_is_asked_again(
    store: SQLiteStore,
) -> None:
    jane = await add_jane(store)
    show = first_show("queue_answered")
    fresh = await PopAssembler(store, per_channel=3).assemble(show)
    assembler = PopAssembler(store, per_channel=3)
    assembler.prefetch(JANE)
    await asyncio.sleep(0.05)
    # A note written after the early lookup: the pop that takes the early answer does not show
    # it (what a pop shows is at most as old as the wait in the queue) ...
    await store.add_note(jane, "agent:eve", "Called back about the refund.")
    early = await assembler.assemble(show)
    assert early == fresh
    # ... and the next pop of the number asks the store again.
    again = await assembler.assemble(show)
    assert "Called back about the refund." in [n["text"] for n in again["customer"]["notes"]]
    assert "Called back about the refund." not in [n["text"] for n in early["customer"]["notes"]]


async def test_an_early_lookup_of_an_unknown_or_stale_number_is_no_different(store: SQLiteStore) -> None:
    show = first_show("queue_answered")
    fresh = await PopAssembler(store).assemble(show)
    assembler = PopAssembler(store)
    assembler.prefetch(JANE)
    assert await assembler.assemble(show) == fresh
    assert fresh["match"] == "unknown" and fresh["actions"]
    stale = PopAssembler(store, prefetch_age=0.0)
    stale.prefetch(JANE)
    await store.create_customer("Jane Doe", identities=[("phone", JANE)])
    await asyncio.sleep(0.01)
    assert (await stale.assemble(show))["match"] == "unique"


async def test_a_forgotten_early_lookup_is_not_taken(store: SQLiteStore) -> None:
    jane = await add_jane(store)
    show = first_show("queue_answered")
    assembler = PopAssembler(store, per_channel=3)
    assembler.prefetch(JANE)
    await asyncio.sleep(0.05)
    assert assembler.prefetched == 1
    await store.add_note(jane, "agent:eve", "Called back about the refund.")
    assembler.forget(JANE)
    assert assembler.prefetched == 0
    pop = await assembler.assemble(show)
    assert "Called back about the refund." in [n["text"] for n in pop["customer"]["notes"]]


async def test_a_pop_takes_an_early_answer_that_is_in_without_waiting(store: SQLiteStore) -> None:
    await add_jane(store)
    show = first_show("queue_answered")
    fresh = await PopAssembler(store, per_channel=3).assemble(show)
    assembler = PopAssembler(store, per_channel=3)
    assert assembler.assemble_now(show) is None, "no early answer: the store must be asked"
    assembler.prefetch(JANE)
    assert assembler.assemble_now(show) is None, "the early lookup has not run yet"
    await asyncio.sleep(0.05)
    assert assembler.assemble_now(show) == fresh
    assert assembler.prefetched == 0
    assert assembler.assemble_now(show) is None, "an early answer serves one pop"
