"""The bulk runner against a real SQLiteStore file: values and segment members stored and explained."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from customers.compute import compute_all
from customers.model import Channel, NewCustomer
from customers.segments import RuleSet, evaluate, load_rules, parse_rules
from customers.sqlite_store import SQLiteStore
from customers.value import DAY

ROOT = Path(__file__).resolve().parents[2]
NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC).timestamp()  # a Sunday
RULES = load_rules(ROOT / "config" / "segments.yaml")


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock(NOW - 400 * DAY)


@pytest.fixture
async def store(tmp_path: Path, clock: Clock) -> AsyncIterator[SQLiteStore]:
    store = SQLiteStore(tmp_path / "c.db", clock=clock)
    async with store:
        yield store


async def order(store: SQLiteStore, cid: str, days_ago: float, amount: float) -> None:
    await store.append_interaction(cid, Channel.ORDER, at=NOW - days_ago * DAY, data={"amount": amount})


async def call(store: SQLiteStore, cid: str, days_ago: float) -> None:
    await store.append_interaction(cid, Channel.CALL, at=NOW - days_ago * DAY, direction="inbound")


async def cast(store: SQLiteStore, clock: Clock) -> dict[str, str]:
    """A few customers, each made for one of the shipped segments."""
    ids: dict[str, str] = {}
    ann = await store.create_customer("Ann", attributes={"tier": "gold"}, birthday="1980-06-01")
    for days, amount in [(2, 900.0), (20, 700.0), (40, 500.0), (60, 800.0), (90, 450.0)]:
        await order(store, ann.id, days, amount)
    await call(store, ann.id, 1)
    ids["ann"] = ann.id
    bob = await store.create_customer("Bob")
    await call(store, bob.id, 200)
    ids["bob"] = bob.id
    eve = await store.create_customer("Eve")
    for days, amount in [(120, 600.0), (150, 800.0), (200, 700.0), (260, 650.0)]:
        await order(store, eve.id, days, amount)
    await call(store, eve.id, 100)
    ids["eve"] = eve.id
    for i, (days, amount) in enumerate([(10, 20.0), (35, 35.0), (70, 60.0), (300, 15.0), (400, 10.0)]):
        small = await store.create_customer(f"Small {i}")
        await order(store, small.id, days, amount)
        ids[f"small{i}"] = small.id
    result = await store.create_customers([NewCustomer("Dan", value=70.0, source="crm", key="crm:1")])
    ids["dan"] = result.created[0]
    merged = await store.create_customer("Ann (duplicate)")
    await order(store, merged.id, 5, 5000.0)
    await store.merge(ann.id, merged.id)
    ids["merged"] = merged.id
    clock.now = NOW - 5 * DAY
    cleo = await store.create_customer("Cleo", birthday="--12-02")
    ids["cleo"] = cleo.id
    return ids


async def test_values_and_segments_are_computed_stored_and_explained(
    store: SQLiteStore, clock: Clock
) -> None:
    ids = await cast(store, clock)
    report = await compute_all(store, RULES, NOW)

    assert report.customers == 10  # the merged profile is not a customer of its own
    assert report.buyers == 7
    assert report.imported == 1
    assert report.population.buyers == 7
    assert report.population.basis == "quintiles of 7 buyers"
    assert report.computed_at == NOW
    assert report.seconds > 0 and report.rate > 0
    assert set(report.phases) == {"population", "read", "evaluate", "store_values", "store_segments"}
    assert list(report.segments) == list(RULES.names)
    for name, count in report.segments.items():
        assert len(await store.segment_members(name)) == count, name

    # Ann has 6 orders (one moved in by the merge), 8350 spent, the latest 2 days ago.
    ann = await store.value(ids["ann"])
    assert ann is not None
    assert ann.explanation == (
        "R 5/5 (ordered 2 days ago), F 5/5 (6 orders), M 5/5 (8350.00 spent) → 100 (quintiles of 7 buyers)"
    )
    assert (ann.score, ann.source, ann.computed_at) == (100.0, "rfm", NOW)
    assert await store.segments_of(ids["ann"]) == ["gold_tier", "vip"]

    # Dan's value came from the CRM import: used, and left as imported.
    dan = await store.value(ids["dan"])
    assert dan is not None
    assert (dan.score, dan.source) == (70.0, "import:crm")
    assert await store.segments_of(ids["dan"]) == ["imported_value_only"]

    # An order is a contact too: the two small buyers who ordered 300 and 400 days ago are dormant.
    assert set(await store.segment_members("dormant")) == {ids["bob"], ids["small3"], ids["small4"]}
    assert await store.segment_members("high_value_at_risk") == [ids["eve"]]
    assert await store.segment_members("new_customers") == [ids["cleo"]]
    assert await store.segment_members("birthday_this_week") == [ids["cleo"]]
    assert ids["merged"] not in await store.segment_members("vip")
    assert report.segments["vip"] == 1


async def test_stored_members_are_what_the_rules_say_for_the_stored_facts(
    store: SQLiteStore, clock: Clock
) -> None:
    rnd = random.Random(7)
    created = await store.create_customers(
        [
            NewCustomer(
                f"Customer {i}",
                fields={"birthday": f"--{rnd.randint(1, 12):02d}-{rnd.randint(1, 28):02d}"},
                attributes={"tier": rnd.choice(["gold", "basic", "platinum"])},
                value=rnd.choice([None, None, 35.0, 90.0]),
                key=f"gen:{i}",
                source="gen",
            )
            for i in range(120)
        ]
    )
    for cid in created.created:
        for _ in range(rnd.choice([0, 0, 1, 2, 3, 6])):
            await order(store, cid, rnd.uniform(0, 500), round(rnd.uniform(5, 900), 2))
        for _ in range(rnd.choice([0, 1, 3, 11])):
            await call(store, cid, rnd.uniform(0, 400))

    report = await compute_all(store, RULES, NOW, batch=16)  # batches cut through the customers

    assert report.customers == 120
    members = {name: set(await store.segment_members(name)) for name in RULES.names}
    checked = 0
    async for batch in store.iter_facts(batch=50):
        for facts in batch:
            value = await store.value(facts.customer_id)
            assert value is not None
            for segment in RULES.segments:
                ok, why = evaluate(segment.rule, facts, value, NOW)
                assert (facts.customer_id in members[segment.name]) is ok, (segment.name, why)
            checked += 1
    assert checked == 120
    assert sum(report.segments.values()) == sum(len(m) for m in members.values())


async def test_a_later_run_replaces_the_members(store: SQLiteStore, clock: Clock) -> None:
    ids = await cast(store, clock)
    await compute_all(store, RULES, NOW)
    later = NOW + 200 * DAY
    report = await compute_all(store, RULES, later)
    assert await store.segment_members("new_customers") == []
    assert await store.segment_members("birthday_this_week") == []
    # Ann's last contact was a day before NOW: 201 days at the later run.
    assert ids["ann"] in await store.segment_members("dormant")
    assert report.segments["new_customers"] == 0
    ann = await store.value(ids["ann"])
    assert ann is not None
    assert ann.computed_at == later
    assert "ordered 202 days ago" in ann.explanation


async def test_fixed_thresholds_skip_the_population_pass(store: SQLiteStore, clock: Clock) -> None:
    ids = await cast(store, clock)
    fixed: RuleSet = parse_rules(
        {
            "value": {
                "weights": {"recency": 2, "frequency": 1, "monetary": 1},
                "thresholds": {
                    "recency_days": [30, 90, 180, 365],
                    "frequency": [1, 2, 4, 9],
                    "monetary": [50, 150, 400, 1000],
                },
            },
            "segments": {"top": {"value_score": ">= 75"}},
        }
    )
    report = await compute_all(store, fixed, NOW)
    assert report.phases["population"] == 0.0
    assert report.population.fixed
    eve = await store.value(ids["eve"])
    assert eve is not None
    # R 3 (120 days), F 3 (4 orders), M 5 (2750 spent); 100 * (6 + 3 + 5) / 20 = 70
    assert eve.explanation == (
        "R 3/5 (ordered 120 days ago), F 3/5 (4 orders), M 5/5 (2750.00 spent) → 70 "
        "(weights R 2, F 1, M 1; fixed thresholds)"
    )
    assert await store.segment_members("top") == [ids["ann"]]


async def test_an_empty_store(store: SQLiteStore) -> None:
    report = await compute_all(store, RULES, NOW)
    assert (report.customers, report.buyers, report.imported) == (0, 0, 0)
    assert set(report.segments.values()) == {0}
    assert "0 customers" in report.summary()


async def test_a_segment_taken_out_of_the_rules_is_emptied(store: SQLiteStore, clock: Clock) -> None:
    ids = await cast(store, clock)
    await compute_all(store, RULES, NOW)
    before = await store.segment_names()
    assert "dormant" in before or "new_customers" in before
    only_top = parse_rules({"segments": {"top": {"value_score": ">= 75"}}})
    report = await compute_all(store, only_top, NOW)
    assert set(report.removed) == set(before) - {"top"}
    assert await store.segment_names() == (["top"] if report.segments["top"] else [])
    assert await store.segments_of(ids["ann"]) in ([], ["top"])
    assert "emptied (no rule any more)" in report.summary()
