"""Segment rules: validation messages (file, line, rule path), evaluation and explanations."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from customers.model import CustomerFacts, Value
from customers.segments import (
    RuleSet,
    SegmentConfigError,
    evaluate,
    load_rules,
    parse_rules,
)
from customers.store import CustomerError
from customers.value import DAY

ROOT = Path(__file__).resolve().parents[2]
NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC).timestamp()  # a Sunday


def at(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> float:
    return datetime(year, month, day, hour, minute, tzinfo=UTC).timestamp()


def facts(**kw: Any) -> CustomerFacts:
    kw.setdefault("customer_id", "c1")
    kw.setdefault("created_at", NOW - 400 * DAY)
    return CustomerFacts(**kw)


def rules(text: str) -> RuleSet:
    return parse_rules(yaml.safe_load(text))


def one(rule_yaml: str, **extra: Any) -> RuleSet:
    """A rule set with one segment ``s`` holding the rule."""
    body = yaml.safe_load(rule_yaml)
    return parse_rules({"segments": {"s": body}, **extra})


def check(rule_yaml: str, f: CustomerFacts, value: Value | None = None, now: float = NOW) -> tuple[bool, str]:
    return evaluate(one(rule_yaml).segment("s").rule, f, value, now)


def problems_of(tmp_path: Path, text: str) -> list[str]:
    path = tmp_path / "segments.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(SegmentConfigError) as caught:
        load_rules(path)
    prefix = f"{path}:"
    assert all(p.startswith(prefix) for p in caught.value.problems), caught.value.problems
    return [p.removeprefix(str(path)) for p in caught.value.problems]


# --- the shipped configuration --------------------------------------------------------------------


def test_the_shipped_config_is_valid_and_has_the_segments_campaigns_expect() -> None:
    ruleset = load_rules(ROOT / "config" / "segments.yaml")
    assert {"vip", "dormant", "birthday_this_week", "new_customers", "high_value_at_risk"} <= set(
        ruleset.names
    )
    assert all(s.description for s in ruleset.segments)
    assert ruleset.timezone == "UTC"
    assert ruleset.thresholds is None


def test_the_shipped_segments_on_a_few_customers() -> None:
    ruleset = load_rules(ROOT / "config" / "segments.yaml")
    vip = facts(orders=9, spend=3000.0, last_order_at=NOW - 5 * DAY, last_contact_at=NOW - 2 * DAY)
    vip_value = Value(score=93.0)
    assert ruleset.explain(vip, vip_value, NOW)["vip"] == (
        True,
        "all of (value_score 93 >= 80; orders 9 >= 3)",
    )
    silent = facts(last_contact_at=NOW - 200 * DAY, birthday="--12-01")
    verdicts = {name: ok for name, (ok, _) in ruleset.explain(silent, Value(score=0.0), NOW).items()}
    assert verdicts["dormant"] and verdicts["birthday_this_week"]
    assert not verdicts["vip"] and not verdicts["new_customers"]
    at_risk = facts(orders=6, spend=900.0, last_order_at=NOW - 120 * DAY, last_contact_at=NOW - 100 * DAY)
    ok, why = ruleset.explain(at_risk, Value(score=67.0), NOW)["high_value_at_risk"]
    assert ok, why
    assert why == (
        "all of (value_score 67 >= 60; orders 6 >= 3; days_since_last_order 120 > 90; "
        "not (days_since_last_contact 100, not <= 60))"
    )


# --- validation -----------------------------------------------------------------------------------


def test_an_unknown_field_names_file_line_segment_and_rule_path(tmp_path: Path) -> None:
    text = """\
segments:
  vip:
    all:
      - value_score: ">= 80"
      - valu: 3
"""
    assert problems_of(tmp_path, text) == [
        ":5: segments.vip.all[1]: unknown field 'valu'; did you mean 'value_score'?"
    ]


def test_without_a_file_the_message_is_the_rule_path() -> None:
    with pytest.raises(SegmentConfigError) as caught:
        parse_rules(
            {"segments": {"vip": {"all": [{"orders": ">= 1"}, {"valu": 3}]}}}, source="config/segments.yaml"
        )
    assert caught.value.problems == [
        "config/segments.yaml: segments.vip.all[1]: unknown field 'valu'; did you mean 'value_score'?"
    ]
    assert isinstance(caught.value, CustomerError)
    assert caught.value.code == "invalid-segments"


def test_every_problem_is_listed_in_file_order(tmp_path: Path) -> None:
    text = """\
timezone: Mars/Olympus
segments:
  vip:
    all:
      - orders: "=> 3"
      - {orders: 1, spend: 2}
      - {}
  Bad!: {orders: 1}
  two: {orders: 1, spend: 3, description: x}
  none: {description: x}
  ch: {contacts: {phone: 1}}
  bd: {birthday_within_days: 0}
  at: {attribute: {tier: []}}
  an: {any: []}
  ty: {all: {orders: 1}}
  un: {attribute: {tier: {a: 1}}}
"""
    got = problems_of(tmp_path, text)
    assert got[:6] == [
        ":1: timezone: unknown time zone 'Mars/Olympus' (an IANA name like 'Europe/Berlin')",
        ":5: segments.vip.all[0].orders: expected a comparison such as '>= 80' "
        "(<, <=, >, >=, ==, != then a number), got '=> 3'",
        ":6: segments.vip.all[1]: one condition per rule, found 'orders', 'spend'; "
        "combine them under 'all:' or 'any:'",
        ":7: segments.vip.all[2]: empty; expected one rule: all, any, not, value_score, orders, spend, "
        "days_since_last_order, days_since_last_contact, days_since_created, contacts, attribute, "
        "birthday_within_days, value_source, segment",
        ":8: segments: segment name 'Bad!': lower-case letters, digits, '_' and '-', starting with a letter",
        ":9: segments.two: one condition per segment, found 'orders', 'spend'; "
        "combine them under 'all:' or 'any:'",
    ]
    assert got[6].startswith(":10: segments.none: no condition; expected one of all, any, not")
    assert got[7:] == [
        ":11: segments.ch.contacts: unknown channel 'phone'; expected one of "
        "call, email, web, chat, sms, fax, visit, order, total",
        ":12: segments.bd.birthday_within_days: 0 is less than the minimum of 1",
        ":13: segments.at.attribute.tier: needs at least one value",
        ":14: segments.an.any: needs at least one rule",
        ":15: segments.ty.all: expected a list, got a mapping",
        ":16: segments.un.attribute.tier: expected text, a number, true/false or a list, got a mapping",
    ]


def test_an_unquoted_comparison_gets_a_hint(tmp_path: Path) -> None:
    got = problems_of(tmp_path, "segments:\n  vip:\n    orders: >= 3\n")
    assert len(got) == 1
    assert got[0].startswith(":3: not valid YAML: ")
    assert got[0].endswith('(quote comparisons: orders: ">= 3"; a bare > starts a YAML block)')


def test_references_must_exist_and_not_loop(tmp_path: Path) -> None:
    text = """\
segments:
  a: {segment: b}
  b: {all: [{orders: 1}, {segment: a}]}
  c: {not: {segment: vipp}}
  vip: {orders: ">= 5"}
"""
    assert problems_of(tmp_path, text) == [
        ":3: segments.b.all[1].segment: segments refer to each other in a cycle: a → b → a",
        ":4: segments.c.not.segment: unknown segment 'vipp'; did you mean 'vip'?",
    ]


def test_top_level_problems(tmp_path: Path) -> None:
    assert problems_of(tmp_path, "") == [": (top level): empty; expected a 'segments:' mapping"]
    assert problems_of(tmp_path, "segmens: {}\n") == [
        ": (top level): missing 'segments'",
        ":1: (top level): unknown field 'segmens'; did you mean 'segments'?",
    ]
    assert problems_of(
        tmp_path, "segments: {}\nvalue:\n  weights: {recency: 0, frequency: 0, monetary: 0}\n"
    ) == [":3: value.weights: the weights must not all be 0"]
    assert problems_of(
        tmp_path,
        "segments: {}\nvalue:\n  thresholds:\n"
        "    {recency_days: [1, 2, 3], frequency: [4, 3, 2, 1], monetary: [1, 2, 3, 4]}\n",
    ) == [":4: value.thresholds.recency_days: expected 4 cut points, got 3"]
    with pytest.raises(SegmentConfigError, match="cannot read"):
        load_rules(tmp_path / "missing.yaml")


def test_value_settings_are_loaded() -> None:
    ruleset = rules("""
value:
  weights: {recency: 2, frequency: 1, monetary: 1}
  thresholds: {recency_days: [30, 90, 180, 365], frequency: [1, 2, 4, 9], monetary: [50, 150, 400, 1000]}
segments: {}
""")
    assert (ruleset.weights.recency, ruleset.weights.frequency) == (2.0, 1.0)
    assert ruleset.thresholds is not None
    assert ruleset.thresholds.fixed
    assert ruleset.thresholds.frequency == (1, 2, 4, 9)
    with pytest.raises(SegmentConfigError, match=r"value.thresholds.frequency: cut points must ascend"):
        rules("""
value:
  thresholds: {recency_days: [30, 90, 180, 365], frequency: [4, 2, 1, 9], monetary: [50, 150, 400, 1000]}
segments: {}
""")


# --- comparisons ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rule", "orders", "expected"),
    [
        ('{orders: ">= 3"}', 3, True),
        ('{orders: "> 3"}', 3, False),
        ('{orders: "< 3"}', 2, True),
        ('{orders: "<= 3"}', 4, False),
        ('{orders: "== 3"}', 3, True),
        ('{orders: "!= 3"}', 3, False),
        ("{orders: 3}", 3, True),
        ('{orders: "3"}', 4, False),
        ('{orders: " >=2.5 "}', 3, True),
    ],
)
def test_comparison_operators(rule: str, orders: int, expected: bool) -> None:
    assert check(rule, facts(orders=orders))[0] is expected


def test_comparison_explanations() -> None:
    assert check('{orders: ">= 3"}', facts(orders=7)) == (True, "orders 7 >= 3")
    assert check('{orders: ">= 3"}', facts(orders=1)) == (False, "orders 1, not >= 3")
    assert check('{spend: "> 100.5"}', facts(spend=412.5)) == (True, "spend 412.5 > 100.5")
    assert check('{value_score: ">= 80"}', facts(), None) == (
        False,
        "value_score unknown (no value computed), not >= 80",
    )
    assert check('{value_score: ">= 80"}', facts(), Value(score=82.0)) == (True, "value_score 82 >= 80")


def test_days_since_are_whole_days_and_missing_values_are_false_until_negated() -> None:
    dormant = '{days_since_last_contact: "> 180"}'
    assert check(dormant, facts(last_contact_at=NOW - 180.9 * DAY)) == (
        False,
        "days_since_last_contact 180, not > 180",
    )
    assert check(dormant, facts(last_contact_at=NOW - 181 * DAY)) == (
        True,
        "days_since_last_contact 181 > 180",
    )
    assert check(dormant, facts(last_contact_at=None)) == (
        False,
        "days_since_last_contact unknown (never contacted), not > 180",
    )
    # "no contact in the last 180 days, or never": not of the opposite includes the unknowns.
    quiet = '{not: {days_since_last_contact: "<= 180"}}'
    assert check(quiet, facts(last_contact_at=None)) == (
        True,
        "not (days_since_last_contact unknown (never contacted), not <= 180)",
    )
    assert check('{days_since_last_order: "< 30"}', facts(last_order_at=None))[1] == (
        "days_since_last_order unknown (never ordered), not < 30"
    )
    assert check('{days_since_created: "< 30"}', facts(created_at=NOW - 3 * DAY)) == (
        True,
        "days_since_created 3 < 30",
    )
    # A contact stamped in the future is today, not negative days.
    assert check('{days_since_last_contact: "== 0"}', facts(last_contact_at=NOW + 60))[0]


def test_contacts_per_channel_and_in_total() -> None:
    f = facts(contacts_by_channel={"call": 4, "email": 2})
    assert check('{contacts: {call: ">= 3"}}', f) == (True, "contacts.call 4 >= 3")
    assert check('{contacts: {sms: "== 0"}}', f) == (True, "contacts.sms 0 == 0")
    assert check('{contacts: {total: "> 5"}}', f) == (True, "contacts.total 6 > 5")
    assert check('{contacts: {call: ">= 3", email: ">= 3"}}', f) == (False, "contacts.email 2, not >= 3")


# --- attributes, value source -----------------------------------------------------------------------


def test_attribute_equals_or_in_and_booleans_are_not_numbers() -> None:
    gold = facts(attributes={"tier": "gold", "vip": True, "store": 12})
    assert check("{attribute: {tier: gold}}", gold) == (True, "attribute tier = 'gold'")
    assert check("{attribute: {tier: [silver, gold]}}", gold) == (True, "attribute tier = 'gold'")
    assert check("{attribute: {tier: silver}}", gold) == (False, "attribute tier = 'gold', not 'silver'")
    assert check("{attribute: {tier: [silver, bronze]}}", gold) == (
        False,
        "attribute tier = 'gold', not one of 'silver', 'bronze'",
    )
    assert check("{attribute: {region: north}}", gold) == (False, "attribute region not set")
    assert check("{attribute: {vip: true}}", gold)[0]
    assert not check("{attribute: {vip: 1}}", gold)[0]
    assert not check("{attribute: {store: true}}", facts(attributes={"store": 1}))[0]
    assert check("{attribute: {store: [11, 12]}}", gold)[0]
    assert check("{attribute: {tier: gold, store: 12}}", gold)[0]
    assert not check("{attribute: {tier: gold, store: 13}}", gold)[0]


def test_value_source() -> None:
    assert check("{value_source: import}", facts(), Value(score=50.0, source="import:erp")) == (
        True,
        "value source import:erp",
    )
    assert check("{value_source: import}", facts(), Value(score=50.0)) == (
        False,
        "value source rfm, not import",
    )
    assert check("{value_source: rfm}", facts(), None) == (False, "no value computed")


# --- birthdays ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("birthday", "now", "expected", "why"),
    [
        ("1990-11-29", NOW, True, "birthday 11-29 today, within 7 days"),
        ("--12-05", NOW, True, "birthday 12-05 in 6 days, within 7 days"),
        ("--12-06", NOW, False, "birthday 12-06 in 7 days, not within 7 days"),
        ("--11-28", NOW, False, "birthday 11-28 in 364 days, not within 7 days"),
        # the year wraps: 28 December to 2 January
        ("1985-01-02", at(2026, 12, 28, 9), True, "birthday 01-02 in 5 days, within 7 days"),
        # 29 February in a year without it is the 28th; 2028 has one
        ("--02-29", at(2027, 2, 25, 9), True, "birthday 02-29 in 3 days, within 7 days"),
        ("2000-02-29", at(2027, 3, 1, 9), False, "birthday 02-29 in 365 days, not within 7 days"),
        ("--02-29", at(2028, 2, 27, 9), True, "birthday 02-29 in 2 days, within 7 days"),
        ("", NOW, False, "no birthday known"),
        ("1990-13-01", NOW, False, "birthday '1990-13-01' is not a date"),
        ("1990-02-29", NOW, False, "birthday '1990-02-29' is not a date"),
        ("12-05", NOW, False, "birthday '12-05' is not a date"),
        ("--1x-05", NOW, False, "birthday '--1x-05' is not a date"),
    ],
)
def test_birthday_within_days(birthday: str, now: float, expected: bool, why: str) -> None:
    f = facts(birthday=birthday)
    assert check("{birthday_within_days: 7}", f, now=now) == (expected, why)
    assert one("{birthday_within_days: 7}").segment("s").rule.test(f, None, now) is expected


def test_birthday_today_uses_the_configured_time_zone() -> None:
    late = at(2026, 12, 31, 23, 30)  # already 1 January in Berlin
    f = facts(birthday="--01-01")
    utc = one("{birthday_within_days: 1}")
    berlin = one("{birthday_within_days: 1}", timezone="Europe/Berlin")
    assert evaluate(utc.segment("s").rule, f, None, late) == (
        False,
        "birthday 01-01 in 1 day, not within 1 days",
    )
    assert evaluate(berlin.segment("s").rule, f, None, late) == (True, "birthday 01-01 today, within 1 days")


# --- combinations ---------------------------------------------------------------------------------


def test_all_any_not_and_their_explanations() -> None:
    rule = """
all:
  - any:
      - {value_score: ">= 80"}
      - {attribute: {tier: gold}}
  - not: {days_since_last_contact: "> 180"}
"""
    gold = facts(attributes={"tier": "gold"}, last_contact_at=NOW - 3 * DAY)
    assert check(rule, gold, Value(score=40.0)) == (
        True,
        "all of (attribute tier = 'gold'; not (days_since_last_contact 3, not > 180))",
    )
    plain = facts(attributes={"tier": "basic"}, last_contact_at=NOW - 3 * DAY)
    assert check(rule, plain, Value(score=40.0)) == (
        False,
        "none of (value_score 40, not >= 80; attribute tier = 'basic', not 'gold')",
    )
    gone = facts(attributes={"tier": "gold"}, last_contact_at=NOW - 300 * DAY)
    assert check(rule, gone, Value(score=90.0)) == (False, "not (days_since_last_contact 300 > 180)")
    # one-item lists are the item itself
    assert check('{all: [{orders: ">= 1"}]}', facts(orders=2)) == (True, "orders 2 >= 1")
    assert check('{any: [{orders: ">= 1"}]}', facts(orders=0)) == (False, "orders 0, not >= 1")


def test_a_segment_can_use_another() -> None:
    ruleset = rules("""
segments:
  vip: {value_score: ">= 80"}
  vip_at_risk:
    all:
      - segment: vip
      - days_since_last_order: "> 90"
""")
    f = facts(orders=5, last_order_at=NOW - 100 * DAY)
    assert ruleset.explain(f, Value(score=85.0), NOW)["vip_at_risk"] == (
        True,
        "all of (in vip (value_score 85 >= 80); days_since_last_order 100 > 90)",
    )
    assert ruleset.explain(f, Value(score=50.0), NOW)["vip_at_risk"] == (
        False,
        "not in vip (value_score 50, not >= 80)",
    )
    assert ruleset.names == ("vip", "vip_at_risk")
    with pytest.raises(KeyError):
        ruleset.segment("nope")


def test_test_and_explain_agree_on_the_shipped_rules() -> None:
    ruleset = load_rules(ROOT / "config" / "segments.yaml")
    population = [
        facts(
            customer_id=str(i),
            created_at=NOW - (i * 13 % 700) * DAY,
            orders=i % 6,
            spend=(i % 6) * 120.0,
            last_order_at=None if i % 6 == 0 else NOW - (i * 29 % 500) * DAY,
            last_contact_at=None if i % 11 == 0 else NOW - (i * 17 % 400) * DAY,
            contacts_by_channel={"call": i % 14},
            birthday="" if i % 5 == 0 else f"--{1 + i % 12:02d}-{1 + i % 28:02d}",
            attributes={"tier": ["gold", "basic", "platinum"][i % 3]},
        )
        for i in range(600)
    ]
    seen: set[str] = set()
    for i, f in enumerate(population):
        value = Value(score=float(i % 101), source="import" if i % 7 == 0 else "rfm")
        for segment in ruleset.segments:
            ok, _ = evaluate(segment.rule, f, value, NOW)
            assert segment.rule.test(f, value, NOW) is ok
            if ok:
                seen.add(segment.name)
    assert seen == set(ruleset.names)  # every shipped segment has members in this mix
