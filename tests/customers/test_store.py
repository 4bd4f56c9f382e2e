"""SQLiteStore on real SQLite files: identities, lookups, timeline, merge, batches, facts, the pop."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path

import pytest

from customers.model import (
    Channel,
    ConsentScope,
    CustomerFacts,
    Identity,
    IdentityKind,
    NewCustomer,
    Value,
)
from customers.sqlite_store import IdentityConflict, SQLiteStore, StoreClosed
from customers.store import Conflict, CustomerError, InvalidInput, NotFound

DAY = 86400.0
NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC).timestamp()


class Clock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "customers.db"


@pytest.fixture
async def store(db_path: Path, clock: Clock) -> AsyncIterator[SQLiteStore]:
    async with SQLiteStore(db_path, clock=clock) as opened:
        yield opened


def check_search_index(db_path: Path) -> None:
    """FTS5's own check that the name index matches the customers table (rank 1: content too)."""
    with closing(sqlite3.connect(db_path)) as conn:
        conn.execute("INSERT INTO customers_fts (customers_fts, rank) VALUES ('integrity-check', 1)")


def count(db_path: Path, sql: str) -> int:
    with closing(sqlite3.connect(db_path)) as conn:
        return int(conn.execute(sql).fetchone()[0])


# --- opening -------------------------------------------------------------------------------------


async def test_open_sets_wal_foreign_keys_and_busy_timeout(db_path: Path) -> None:
    store = SQLiteStore(db_path)
    await store.open()
    try:
        pragmas = await store._run(
            lambda conn: [
                conn.execute(f"PRAGMA {name}").fetchone()[0]
                for name in ("journal_mode", "synchronous", "foreign_keys", "busy_timeout", "user_version")
            ]
        )
        assert pragmas == ["wal", 1, 1, 5000, 1]
    finally:
        await store.close()
    with pytest.raises(StoreClosed):
        await store.get_customer("x")


async def test_memory_database_works() -> None:
    async with SQLiteStore(":memory:") as store:
        alice = await store.create_customer("Alice", identities=[("phone", "(415) 555-0123")])
        assert [c.customer.id for c in await store.lookup_phone("+14155550123")] == [alice.id]


# --- phones from many countries -------------------------------------------------------------------

FORMS = [
    # (the form a caller id or an import gives, the region it is read in)
    ("(415) 555-0123 x12", "US"),
    ("4155550123", "US"),
    ("14155550123", "US"),
    ("+1 (415) 555-0123", "US"),
    ("001 415 555 0123", "GB"),
    ("+44 20 7946 0958", "US"),
    ("0044 20 7946 0958", "US"),
    ("020 7946 0958", "GB"),
    ("+49 30 901820", "US"),
    ("030 901820", "DE"),
    ("+33 1 42 68 53 00", "US"),
    ("01 42 68 53 00", "FR"),
    ("+86 138 0013 8000", "US"),
    ("13800138000", "CN"),
    ("010 6552 9988", "CN"),
    ("+86 10 6552 9988", "DE"),
]


async def test_phone_forms_from_many_countries_find_the_same_customer(store: SQLiteStore) -> None:
    globetrotter = await store.create_customer(
        "Mei Müller",
        identities=[
            Identity(IdentityKind.PHONE, "+1 415-555-0123 ext. 12", label="office"),
            ("phone", "+442079460958"),
            ("phone", "+49 30 901820"),
            ("phone", "+33 1 42 68 53 00"),
            ("phone", "+86 138 0013 8000"),
            ("phone", "0086 10 6552 9988"),
        ],
    )
    phones = {i.value: i for i in globetrotter.identities}
    assert set(phones) == {
        "+14155550123",
        "+442079460958",
        "+4930901820",
        "+33142685300",
        "+8613800138000",
        "+861065529988",
    }
    assert (phones["+14155550123"].raw, phones["+14155550123"].extension) == ("+1 415-555-0123 ext. 12", "12")
    for raw, region in FORMS:
        found = await store.lookup_phone(raw, region=region)
        assert [c.customer.id for c in found] == [globetrotter.id], (raw, region)
    # The interface's generic lookup takes phones too (default region US).
    assert len(await store.lookup("phone", "(415) 555-0123")) == 1


async def test_default_region_reads_national_forms(tmp_path: Path) -> None:
    async with SQLiteStore(tmp_path / "gb.db", default_region="GB") as store:
        customer = await store.create_customer("Harry", identities=[("phone", "020 7946 0958")])
        assert customer.identities[0].value == "+442079460958"
        assert len(await store.lookup_phone("+44 20 7946 0958")) == 1
        assert len(await store.lookup_phone("0044 (0)20 7946 0958")) == 1


@pytest.mark.parametrize("caller_id", ["anonymous", "<unknown>", "", "  ", "Anonymous"])
async def test_anonymous_caller_ids_find_nobody(store: SQLiteStore, caller_id: str) -> None:
    assert await store.lookup_phone(caller_id) == []


async def test_unparseable_number_is_invalid_input_with_the_field(store: SQLiteStore) -> None:
    with pytest.raises(InvalidInput) as caught:
        await store.lookup_phone("call me maybe")
    assert caught.value.field == "number"
    with pytest.raises(InvalidInput) as caught:
        await store.create_customer("Ivy", identities=[("email", "ivy@example.com"), ("phone", "12")])
    assert caught.value.field == "identities[1].value"
    assert caught.value.code == "invalid-input"


async def test_other_identities(store: SQLiteStore) -> None:
    jo = await store.create_customer(
        "Jo",
        identities=[
            ("email", "Jo@Example.COM"),
            ("member", "1234 5678-90"),
            ("external:shop", "10042"),
            Identity(IdentityKind.IM, "@JoJo", system="WeChat"),
        ],
    )
    assert [c.customer.id for c in await store.lookup("email", "jo@example.com")] == [jo.id]
    assert [c.customer.id for c in await store.lookup(IdentityKind.MEMBER, "1234567890")] == [jo.id]
    assert [c.customer.id for c in await store.lookup("external", "10042", system="shop")] == [jo.id]
    assert await store.lookup("external", "10042", system="erp") == []  # per system
    assert [c.customer.id for c in await store.lookup("im", "jojo", system="wechat")] == [jo.id]
    assert await store.lookup("im", "jojo", system="whatsapp") == []
    await store.remove_identity(jo.id, "email", "JO@example.com")
    assert await store.lookup("email", "jo@example.com") == []
    with pytest.raises(NotFound):
        await store.remove_identity(jo.id, "email", "jo@example.com")
    with pytest.raises(InvalidInput) as caught:
        await store.lookup("email", "not-an-email")
    assert caught.value.field == "value.value"


# --- shared identities ------------------------------------------------------------------------------


async def test_identity_on_another_customer_is_a_conflict_unless_shared(store: SQLiteStore) -> None:
    kim = await store.create_customer("Kim", identities=[("phone", "+1 212 555 0100")])
    with pytest.raises(IdentityConflict) as caught:
        await store.create_customer("Lee", identities=[("phone", "212-555-0100")])
    assert caught.value.field == "identities[0]"
    assert caught.value.holders == (kim.id,)
    assert caught.value.code == "conflict"
    lee = await store.create_customer("Lee")
    identity = await store.add_identity(lee.id, "phone", "212-555-0100", shared=True, label="home")
    assert identity.shared
    # Kim's own number, listed on Lee's profile as shared: Kim first.
    found = await store.lookup_phone("2125550100")
    assert [c.customer.id for c in found] == [kim.id, lee.id]
    assert found[0].reasons[1] == "own number, shared by 1 other profile(s)"
    assert found[1].reasons[1] == "shared number (2 customers)"
    assert found[0].score > found[1].score
    # A third holder must say shared too: Kim's is not.
    max_ = await store.create_customer("Max")
    with pytest.raises(IdentityConflict):
        await store.add_identity(max_.id, "phone", "+12125550100")
    assert await store.duplicate_identities() == []


async def test_shared_number_gives_ranked_candidates_with_reasons(store: SQLiteStore, clock: Clock) -> None:
    home = "+1 617 555 0142"
    mum = await store.create_customer("Mum")
    dad = await store.create_customer("Dad")
    kid = await store.create_customer("Kid")
    await store.add_identity(mum.id, "phone", home, shared=True, label="home")
    await store.add_identity(dad.id, "phone", home, shared=True, label="home")
    await store.add_identity(kid.id, "phone", home, shared=True, label="switchboard")
    await store.append_interaction(mum.id, "call", at=NOW - 10 * DAY, direction="inbound")
    await store.append_interaction(dad.id, "email", at=NOW - 2 * DAY)
    await store.append_interaction(kid.id, "call", at=NOW - 3 * 3600)  # the most recent, but a switchboard
    found = await store.lookup_phone("617-555-0142")
    assert [c.customer.id for c in found] == [dad.id, mum.id, kid.id]
    assert found[0].reasons == (
        "exact phone +16175550142",
        "shared number (3 customers)",
        "labelled home",
        "last email 2 days ago",
    )
    assert found[2].reasons[-2:] == ("labelled switchboard", "last call 3 hours ago")
    assert found[0].score > found[1].score > found[2].score


async def test_batch_duplicates_rank_as_possible_duplicates(store: SQLiteStore, clock: Clock) -> None:
    # A batch stores an identity another profile already holds as its own (and reports it).
    number = "+1 303 555 0199"
    result = await store.create_customers(
        [
            NewCustomer("Own Line", identities=(Identity(IdentityKind.PHONE, number, label="mobile"),)),
            NewCustomer("Copy", identities=(("phone", number),)),
            NewCustomer("Switchboard", identities=(Identity(IdentityKind.PHONE, number, shared=True),)),
        ]
    )
    own, copy, board = result.created
    assert [(i, d.value, others) for i, d, others in result.duplicates] == [(1, "+13035550199", (own,))]
    assert await store.duplicate_identities() == [
        (Identity(IdentityKind.PHONE, "+13035550199"), (own, copy, board))
    ]
    await store.append_interaction(copy, "call", at=NOW - 60)
    found = await store.lookup_phone(number)
    # Not shared before shared, then the label, then the most recent contact.
    assert [c.customer.id for c in found] == [own, copy, board]
    assert found[0].reasons == (
        "exact phone +13035550199",
        "number also on 2 other profile(s): possible duplicate",
        "labelled mobile",
        "no interaction yet",
    )
    assert found[1].reasons[-1] == "last call just now"
    assert found[2].reasons[1] == "shared number (3 customers)"
    # Merging the copy away resolves the duplicate.
    await store.merge(own, copy)
    assert await store.duplicate_identities() == []


# --- timeline and notes ------------------------------------------------------------------------------


async def test_interactions_are_idempotent_and_append_only(store: SQLiteStore, db_path: Path) -> None:
    mo = await store.create_customer("Mo")
    first = await store.append_interaction(
        mo.id,
        Channel.CALL,
        at=NOW,
        direction="inbound",
        data={"queue": "sales"},
        source="pbx",
        external_id="L1",
    )
    again = await store.append_interaction(mo.id, "call", at=NOW + 5, source="pbx", external_id="L1")
    assert again == first
    other_source = await store.append_interaction(
        mo.id, "call", at=NOW + 6, source="twilio", external_id="L1"
    )
    assert other_source.id != first.id
    assert len(await store.timeline(mo.id)) == 2
    no = await store.create_customer("No")
    with pytest.raises(Conflict, match="already on the timeline"):
        await store.append_interaction(no.id, "call", source="pbx", external_id="L1")
    # No update or delete, not even through SQL.
    with (
        closing(sqlite3.connect(db_path)) as conn,
        pytest.raises(sqlite3.IntegrityError, match="append-only"),
    ):
        conn.execute("DELETE FROM interactions")
    with (
        closing(sqlite3.connect(db_path)) as conn,
        pytest.raises(sqlite3.IntegrityError, match="append-only"),
    ):
        conn.execute("UPDATE interactions SET summary = 'rewritten'")
    with pytest.raises(InvalidInput) as caught:
        await store.append_interaction(mo.id, "pigeon")
    assert caught.value.field == "channel"
    with pytest.raises(InvalidInput) as caught:
        await store.append_interaction(mo.id, "call", data={"bad": {1, 2}})
    assert caught.value.field == "data"
    with pytest.raises(NotFound):
        await store.append_interaction("nobody", "call")


async def test_timeline_and_latest_by_channel(store: SQLiteStore) -> None:
    ng = await store.create_customer("Ng")
    for n in range(5):
        await store.append_interaction(ng.id, "call", at=NOW - n * DAY, summary=f"call {n}")
        await store.append_interaction(ng.id, "email", at=NOW - n * DAY - 60, summary=f"email {n}")
    await store.append_interaction(ng.id, "order", at=NOW - 30 * DAY, data={"amount": 20, "currency": "EUR"})
    timeline = await store.timeline(ng.id, limit=3)
    assert [i.summary for i in timeline] == ["call 0", "email 0", "call 1"]
    older = await store.timeline(ng.id, before=timeline[-1].at, limit=2)
    assert [i.summary for i in older] == ["email 1", "call 2"]
    calls = await store.timeline(ng.id, channels=["call"], limit=10)
    assert [i.channel for i in calls] == [Channel.CALL] * 5
    latest = await store.latest_by_channel(ng.id, per_channel=2)
    assert {k: [i.summary for i in v] for k, v in latest.items()} == {
        "call": ["call 0", "call 1"],
        "email": ["email 0", "email 1"],
        "order": [""],
    }


async def test_latest_by_channel_and_lookup_use_their_indexes(store: SQLiteStore) -> None:
    from customers.sqlite_store import _LATEST_SQL

    def plan(conn: sqlite3.Connection, sql: str, params: tuple[object, ...]) -> str:
        return "\n".join(row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}", params))

    latest = await store._run(plan, _LATEST_SQL, ("c", 3))
    assert "interactions_latest" in latest
    assert "TEMP B-TREE" not in latest
    lookup = await store._run(
        plan,
        "SELECT customer_id FROM identities WHERE kind = ? AND system = ? AND value = ?",
        ("phone", "", "+1"),
    )
    assert "USING PRIMARY KEY (kind=? AND system=? AND value=?)" in lookup


async def test_notes_pinned_first(store: SQLiteStore, clock: Clock) -> None:
    oz = await store.create_customer("Oz")
    await store.add_note(oz.id, "alice", "prefers email", pinned=True)
    clock.now += 60
    await store.add_note(oz.id, "bob", "called about the invoice")
    notes = await store.notes(oz.id)
    assert [(n.author, n.pinned) for n in notes] == [("alice", True), ("bob", False)]
    with pytest.raises(InvalidInput) as caught:
        await store.add_note(oz.id, "bob", "  ")
    assert caught.value.field == "text"


# --- profiles ------------------------------------------------------------------------------------


async def test_update_customer_fields_and_attributes(store: SQLiteStore, clock: Clock, db_path: Path) -> None:
    pat = await store.create_customer("Pat", attributes={"tier": "gold", "vip": True}, language="en")
    clock.now += 10
    updated = await store.update_customer(
        pat.id, attributes={"tier": "platinum", "vip": None}, company="Acme", timezone="Europe/Paris"
    )
    assert updated.attributes == {"tier": "platinum"}
    assert (updated.company, updated.timezone, updated.language) == ("Acme", "Europe/Paris", "en")
    assert updated.updated_at == NOW + 10
    assert [c.id for c in await store.search("acme")] == [pat.id]
    renamed = await store.update_customer(pat.id, display_name="Patricia")
    assert [c.id for c in await store.search("patricia")] == [renamed.id]
    assert await store.search("pat") == [renamed]
    check_search_index(db_path)
    with pytest.raises(InvalidInput) as caught:
        await store.update_customer(pat.id, timezone="Mars/Olympus")
    assert caught.value.field == "timezone"
    with pytest.raises(InvalidInput) as caught:
        await store.update_customer(pat.id, shoe_size="44")
    assert caught.value.field == "shoe_size"
    with pytest.raises(InvalidInput) as caught:
        await store.create_customer("Quinn", birthday="1990-13-01")
    assert caught.value.field == "birthday"
    assert (await store.create_customer("Quinn", birthday="--02-29")).birthday == "--02-29"
    with pytest.raises(NotFound) as not_found:
        await store.get_customer("nobody")
    assert not_found.value.status == 404


async def test_profile_assembles_everything(store: SQLiteStore) -> None:
    ray = await store.create_customer(
        "Ray", identities=[("phone", "+1 646 555 0111")], timezone="America/New_York"
    )
    await store.append_interaction(ray.id, "call", at=NOW - 100, direction="inbound")
    await store.append_interaction(ray.id, "web", at=NOW - 50, data={"page": "/pricing"})
    await store.add_note(ray.id, "alice", "VIP")
    await store.set_channel_permission(ray.id, "sms", False)
    await store.add_do_not_call("number", "+1 646 555 0111", source="national registry")
    await store.set_value(ray.id, Value(score=87.5, frequency=3, monetary=420.0, explanation="top 20%"))
    await store.set_segments("vip", [ray.id], NOW)
    profile = await store.profile(ray.id)
    assert profile.customer.id == ray.id
    assert set(profile.latest) == {"call", "web"}
    assert [n.text for n in profile.notes] == ["VIP"]
    assert profile.consent.channels == {"sms": False}
    assert [d.target for d in profile.consent.do_not_call] == ["+16465550111"]
    assert profile.value is not None and profile.value.score == 87.5
    assert profile.segments == ("vip",)


async def test_search(store: SQLiteStore) -> None:
    sam = await store.create_customer(
        "Samantha Müller",
        identities=[("email", "sam@acme.example"), ("phone", "+1 415 555 0177")],
        company="Acme Corp",
    )
    wang = await store.create_customer("王伟", company="北京贸易")
    assert [c.id for c in await store.search("sam")] == [sam.id]
    assert [c.id for c in await store.search("muller")] == [sam.id]  # diacritics folded
    assert [c.id for c in await store.search("acme")] == [sam.id]
    assert [c.id for c in await store.search("acme.example")] == [sam.id]
    assert [c.id for c in await store.search("(415) 555-0177")] == [sam.id]
    assert [c.id for c in await store.search("5550177")] == [sam.id]
    assert [c.id for c in await store.search("王")] == [wang.id]
    assert [c.id for c in await store.search("伟")] == [wang.id]
    assert await store.search("nothing like it") == []
    assert await store.search('"; DROP TABLE customers; --') == []


# --- merge ---------------------------------------------------------------------------------------


async def test_merge_keeps_both_histories(store: SQLiteStore) -> None:
    keep = await store.create_customer("Tess Ray", identities=[("email", "tess@example.com")], company="")
    dup = await store.create_customer(
        "T. Ray",
        identities=[("phone", "+1 415 555 0190"), ("email", "t.ray@example.com")],
        company="Ray & Co",
        attributes={"source": "shop"},
    )
    await store.append_interaction(keep.id, "email", at=NOW - 200)
    await store.append_interaction(dup.id, "call", at=NOW - 100, source="pbx", external_id="c9")
    await store.add_note(dup.id, "bob", "met at the fair")
    await store.add_do_not_call("customer", dup.id, source="customer request")
    await store.set_channel_permission(keep.id, "call", True)
    await store.set_channel_permission(dup.id, "call", False)
    await store.set_segments("fair-2026", [dup.id], NOW)
    merged = await store.merge(keep.id, dup.id, actor="agent:alice")
    assert merged.id == keep.id
    assert merged.company == "Ray & Co"  # blank filled from the merged profile
    assert {i.value for i in merged.identities} == {"tess@example.com", "+14155550190", "t.ray@example.com"}
    assert [i.channel for i in await store.timeline(keep.id)] == [Channel.CALL, Channel.EMAIL]
    assert (await store.get_customer(dup.id)).id == keep.id  # the survivor
    assert [c.customer.id for c in await store.lookup_phone("4155550190")] == [keep.id]
    consent = await store.consent(keep.id)
    assert consent.channels == {"call": False}  # a "no" wins
    assert [(d.scope, d.target) for d in consent.do_not_call] == [(ConsentScope.CUSTOMER, keep.id)]
    assert await store.segments_of(keep.id) == ["fair-2026"]
    assert [n.text for n in await store.notes(dup.id)] == ["met at the fair"]
    # Feeds addressing the old id land on the survivor; its idempotency keys still hold.
    again = await store.append_interaction(dup.id, "call", source="pbx", external_id="c9")
    assert again.customer_id == keep.id
    assert len(await store.timeline(keep.id)) == 2
    with pytest.raises(Conflict, match="into itself"):
        await store.merge(keep.id, keep.id)
    with pytest.raises(Conflict, match="already merged"):
        await store.merge(dup.id, keep.id)
    with pytest.raises(Conflict, match="already merged"):
        await store.merge(keep.id, dup.id)
    with pytest.raises(NotFound):
        await store.merge(keep.id, "nobody")
    # A later merge of the survivor re-points the earlier one: one step to the live profile.
    last = await store.create_customer("Tess R.")
    await store.merge(last.id, keep.id)
    assert (await store.get_customer(dup.id)).id == last.id


async def test_merge_of_a_shared_duplicate_keeps_one_copy(store: SQLiteStore) -> None:
    result = await store.create_customers(
        [
            NewCustomer("A", identities=(("email", "a@example.com"),)),
            NewCustomer("B", identities=(("email", "a@example.com"),)),
        ]
    )
    a, b = result.created
    await store.merge(a, b)
    assert await store.duplicate_identities() == []
    assert [c.customer.id for c in await store.lookup("email", "a@example.com")] == [a]


# --- batches -------------------------------------------------------------------------------------


async def test_batch_rejects_bad_rows_and_keeps_the_rest(store: SQLiteStore, db_path: Path) -> None:
    batch = [
        NewCustomer("Uma", identities=(("phone", "+44 20 7946 0001"),), key="crm:1", source="import:crm.csv"),
        NewCustomer("Vic", identities=(("phone", "not a phone"),), key="crm:2"),
        NewCustomer("", key="crm:3"),
        NewCustomer("", fields={"given_name": "Wu", "family_name": "Fang"}, key="crm:4"),
        NewCustomer("Xi", fields={"timezone": "Nowhere/Land"}, key="crm:5"),
        NewCustomer("Yan", value=150, key="crm:6"),
        NewCustomer("Zed", identities=(("email", "zed@example.com"),), key="crm:7", value=55),
    ]
    result = await store.create_customers(batch)
    assert result.rejected == (
        (1, "identities[0].value: not a phone number: 'not a phone' (default region US)"),
        (2, "display_name: empty"),
        (4, "timezone: unknown IANA time zone 'Nowhere/Land' (e.g. Europe/Berlin)"),
        (5, "value: expected a score 0..100, got 150"),
    )
    assert len(result.created) == 3 and result.updated == ()
    assert count(db_path, "SELECT count(*) FROM customers") == 3
    wu = await store.get_customer(result.created[1])
    assert wu.display_name == "Wu Fang"
    zed = result.created[2]
    value = await store.value(zed)
    assert value is not None and (value.score, value.source) == (55, "import:batch")
    assert [c.customer.id for c in await store.lookup("external", "crm:7", system="key")] == [zed]

    # The same import again: every stored row is an update, nothing new.
    again = await store.create_customers(batch)
    assert again.created == ()
    assert set(again.updated) == set(result.created)
    assert again.duplicates == ()
    assert count(db_path, "SELECT count(*) FROM customers") == 3
    assert count(db_path, "SELECT count(*) FROM identities") == 2

    # A later export adds a number and an attribute to crm:1.
    more = await store.create_customers(
        [
            NewCustomer(
                "Uma Singh",
                identities=(("email", "uma@example.com"),),
                attributes={"tier": "gold"},
                key="crm:1",
            )
        ]
    )
    check_search_index(db_path)
    assert [c.id for c in await store.search("singh")] == [more.updated[0]]
    uma = await store.get_customer(more.updated[0])
    assert uma.display_name == "Uma Singh" and uma.attributes == {"tier": "gold"}
    assert {i.kind for i in uma.identities} == {IdentityKind.PHONE, IdentityKind.EMAIL}


async def test_batch_keeps_what_an_identity_says(store: SQLiteStore) -> None:
    # The importer's phones come as Identity objects already in E.164, with the raw text beside.
    given = Identity(
        IdentityKind.PHONE, "+14155550123", raw="(415) 555-0123", label=" mobile ", shared=True, source="crm"
    )
    odd = Identity(IdentityKind.PHONE, "+1 415 555 0124 x9", verified=True)
    result = await store.create_customers(
        [NewCustomer("Ike", identities=(given, odd, ("email", "IKE@x.org")))]
    )
    ike = await store.get_customer(result.created[0])
    assert {
        i.value: (i.raw, i.label, i.extension, i.shared, i.verified, i.source) for i in ike.identities
    } == {
        "+14155550123": ("(415) 555-0123", "mobile", "", True, False, "crm"),
        "+14155550124": ("+1 415 555 0124 x9", "", "9", False, True, ""),
        "ike@x.org": ("IKE@x.org", "", "", False, False, ""),
    }


async def test_batch_repeated_key_within_one_batch(store: SQLiteStore, db_path: Path) -> None:
    result = await store.create_customers(
        [
            NewCustomer("Ada", identities=(("phone", "+1 415 555 0101"),), key="k1"),
            NewCustomer("Ada L.", identities=(("email", "ada@example.com"),), key="k1"),
        ]
    )
    assert len(result.created) == 1 and result.updated == ()
    ada = await store.get_customer(result.created[0])
    assert ada.display_name == "Ada L."
    assert len(ada.identities) == 2
    assert count(db_path, "SELECT count(*) FROM customers") == 1
    check_search_index(db_path)
    assert [c.id for c in await store.search("ada")] == [ada.id]


async def test_batch_reports_duplicates_within_the_batch_and_against_the_store(store: SQLiteStore) -> None:
    old = await store.create_customer("Old", identities=[("email", "shared@example.com")])
    result = await store.create_customers(
        [
            NewCustomer("New 1", identities=(("email", "SHARED@example.com"),)),
            NewCustomer("New 2", identities=(("member", "M-1"),)),
            NewCustomer("New 3", identities=(("member", "M 1"),)),
            NewCustomer("Office", identities=(Identity(IdentityKind.PHONE, "+1 212 555 0000", shared=True),)),
        ]
    )
    n1, n2, _, _ = result.created
    assert [(i, d.kind, others) for i, d, others in result.duplicates] == [
        (0, IdentityKind.EMAIL, (old.id,)),
        (2, IdentityKind.MEMBER, (n2,)),
    ]
    assert len(await store.lookup("email", "shared@example.com")) == 2
    assert n1 in {c.customer.id for c in await store.lookup("email", "shared@example.com")}


async def test_a_write_that_fails_halfway_leaves_nothing(store: SQLiteStore, db_path: Path) -> None:
    # create_customer: the second identity conflicts after the profile and the first identity
    # were written in the transaction.
    await store.create_customer("Holder", identities=[("email", "taken@example.com")])
    with pytest.raises(IdentityConflict):
        await store.create_customer(
            "Late", identities=[("phone", "+1 415 555 0142"), ("email", "taken@example.com")]
        )
    assert await store.lookup_phone("+1 415 555 0142") == []
    assert await store.search("Late") == []
    assert count(db_path, "SELECT count(*) FROM customers") == 1

    # create_customers: SQLite itself refuses a row in the middle of the batch (a trigger stands
    # for a disk error or a constraint): none of the batch is stored.
    with closing(sqlite3.connect(db_path)) as conn:
        conn.execute(
            "CREATE TRIGGER refuse BEFORE INSERT ON identities WHEN NEW.value = '+4930901820' "
            "BEGIN SELECT RAISE(ABORT, 'refused by test'); END"
        )
    batch = [
        NewCustomer(f"Row {n}", identities=(("phone", f"+1 415 555 {n:04d}"),)) for n in range(1000, 1100)
    ]
    batch.insert(50, NewCustomer("Bad Row", identities=(("phone", "+49 30 901820"),)))
    with pytest.raises(CustomerError, match="refused by test"):
        await store.create_customers(batch)
    assert count(db_path, "SELECT count(*) FROM customers") == 1
    assert count(db_path, "SELECT count(*) FROM identities") == 1
    # The store is still usable.
    assert (await store.create_customer("After")).display_name == "After"


async def test_concurrent_writers_do_not_interleave(store: SQLiteStore, db_path: Path) -> None:
    customers = [await store.create_customer(f"C{n}") for n in range(10)]

    async def feed(n: int) -> None:
        for k in range(20):
            await store.append_interaction(customers[n].id, "chat", source="chat", external_id=f"{n}-{k}")
            await store.append_interaction(customers[n].id, "chat", source="chat", external_id=f"{n}-{k}")

    await asyncio.gather(*(feed(n) for n in range(10)))
    assert count(db_path, "SELECT count(*) FROM interactions") == 200


# --- facts, values, segments --------------------------------------------------------------------


async def test_facts_values_and_segments(store: SQLiteStore) -> None:
    result = await store.create_customers(
        [
            NewCustomer(
                f"F{n}",
                fields={"birthday": "--03-14"},
                attributes={"n": n},
                value=10.0 * n if n == 2 else None,
            )
            for n in range(7)
        ]
    )
    ids = list(result.created)
    await store.append_interaction(ids[0], "order", at=NOW - 5 * DAY, data={"amount": 19.5})
    await store.append_interaction(ids[0], "order", at=NOW - 2 * DAY, data={"amount": "30.5"})
    await store.append_interaction(ids[0], "call", at=NOW - DAY)
    await store.append_interaction(ids[1], "email", at=NOW - 9 * DAY)
    await store.merge(ids[5], ids[6])
    batches = [batch async for batch in store.iter_facts(batch=2)]
    assert [len(b) for b in batches] == [2, 2, 2]
    facts = {f.customer_id: f for b in batches for f in b}
    assert set(facts) == set(ids[:6])
    assert facts[ids[0]] == CustomerFacts(
        customer_id=ids[0],
        created_at=NOW,
        birthday="--03-14",
        attributes={"n": 0},
        last_contact_at=NOW - DAY,
        contacts_by_channel={"order": 2, "call": 1},
        orders=2,
        spend=50.0,
        last_order_at=NOW - 2 * DAY,
    )
    assert facts[ids[1]].last_contact_at == NOW - 9 * DAY and facts[ids[1]].orders == 0
    assert facts[ids[2]].imported_value == 20.0

    stored = await store.set_values(
        [(cid, Value(score=50.0 + n, computed_at=NOW)) for n, cid in enumerate(ids[:6])]
    )
    assert stored == 6
    value = await store.value(ids[3])
    assert value is not None and value.score == 53.0
    with pytest.raises(NotFound, match="nobody"):
        await store.set_values([(ids[0], Value(score=1.0)), ("nobody", Value(score=2.0))])
    value = await store.value(ids[0])
    assert value is not None and value.score == 50.0  # the failed call changed nothing
    with pytest.raises(InvalidInput) as caught:
        await store.set_value(ids[0], Value(score=101.0))
    assert caught.value.field == "value.score"

    assert await store.set_segments("loyal", ids[:3], NOW) == 3
    assert await store.set_segments("loyal", [ids[1], ids[2], ids[2]], NOW) == 2  # replaces
    assert await store.segment_members("loyal") == sorted(ids[1:3])
    assert len(await store.segment_members("loyal", limit=1)) == 1
    # Ids of merged profiles count for their survivor.
    assert await store.set_segments("merged", [ids[6]], NOW) == 1
    assert await store.segment_members("merged") == [ids[5]]
    await store.set_values([(ids[6], Value(score=66.0))])
    value = await store.value(ids[5])
    assert value is not None and value.score == 66.0
    await store.set_segments("birthday-march", ids[:2], NOW)
    assert await store.segments_of(ids[1]) == ["birthday-march", "loyal"]
    assert await store.segments_of(ids[0]) == ["birthday-march"]
