"""RFM value scoring on hand-built facts: classes, quintiles, ties, imported values, explanations."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from customers.model import CustomerFacts
from customers.value import DAY, Population, PopulationBuilder, Weights, population, score

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC).timestamp()


def buyer(
    cid: str, *, days: float, orders: int, spend: float, imported_value: float | None = None
) -> CustomerFacts:
    return CustomerFacts(
        customer_id=cid,
        created_at=NOW - 1000 * DAY,
        orders=orders,
        spend=spend,
        last_order_at=NOW - days * DAY,
        last_contact_at=NOW - days * DAY,
        imported_value=imported_value,
    )


# Five buyers, one per quintile on every dimension: cut points are the values of the first four.
FIVE = [
    buyer("a", days=3, orders=1, spend=50.0),
    buyer("b", days=10, orders=3, spend=200.0),
    buyer("c", days=40, orders=5, spend=412.5),
    buyer("d", days=100, orders=7, spend=900.0),
    buyer("e", days=400, orders=12, spend=5000.0),
]


def test_the_explanation_names_each_class_its_reason_and_the_basis() -> None:
    stats = population(FIVE, NOW)
    assert stats.recency_days == (3, 10, 40, 100)
    assert stats.frequency == (1, 3, 5, 7)
    assert stats.monetary == (50, 200, 412.5, 900)
    value = score(buyer("x", days=3, orders=7, spend=412.5), NOW, stats)
    # R 5 (3 days <= 3), F 4 (7 is in (5, 7]), M 3 (412.5 in (200, 412.5]): 100 * 12 / 15 = 80
    assert value.explanation == (
        "R 5/5 (ordered 3 days ago), F 4/5 (7 orders), M 3/5 (412.50 spent) → 80 (quintiles of 5 buyers)"
    )
    assert value.score == 80.0
    assert (value.recency_days, value.frequency, value.monetary) == (3.0, 7, 412.5)
    assert value.source == "rfm"
    assert value.computed_at == NOW


def test_each_of_five_distinct_buyers_lands_in_its_own_class() -> None:
    stats = population(FIVE, NOW)
    classes = [score(f, NOW, stats).explanation.split(" → ")[0] for f in FIVE]
    assert classes[0].startswith("R 5/5 (ordered 3 days ago), F 1/5 (1 order), M 1/5 (50.00 spent)")
    assert classes[4].startswith("R 1/5 (ordered 400 days ago), F 5/5 (12 orders), M 5/5 (5000.00 spent)")
    # a + e: 5+1+1 and 1+5+5 of 15
    assert [score(f, NOW, stats).score for f in (FIVE[0], FIVE[4])] == [47.0, 73.0]


def test_bounds_are_inclusive_and_the_score_spans_20_to_100() -> None:
    stats = population(FIVE, NOW)
    best = score(buyer("x", days=0, orders=13, spend=9999.0), NOW, stats)
    worst = score(buyer("y", days=401, orders=1, spend=1.0), NOW, stats)
    assert best.score == 100.0
    assert best.explanation.startswith("R 5/5 (ordered today), F 5/5 (13 orders)")
    assert worst.score == 20.0
    # On a cut point: the class below it (F 3 for exactly 5 orders, F 4 for 6).
    assert "F 3/5 (5 orders)" in score(buyer("z", days=3, orders=5, spend=1.0), NOW, stats).explanation
    assert "F 4/5 (6 orders)" in score(buyer("z", days=3, orders=6, spend=1.0), NOW, stats).explanation


def test_recency_counts_whole_days_and_future_orders_count_as_today() -> None:
    stats = population(FIVE, NOW)
    almost_two = score(buyer("x", days=1.99, orders=1, spend=1.0), NOW, stats)
    assert almost_two.recency_days == 1.0
    assert "ordered 1 day ago" in almost_two.explanation
    future = score(buyer("y", days=-2, orders=1, spend=1.0), NOW, stats)
    assert future.recency_days == 0.0
    assert "R 5/5 (ordered today)" in future.explanation


def test_ties_stay_in_one_class() -> None:
    # Six of ten bought once: all six are F 1, the two with 2 orders F 4, the 3-order ones F 5.
    facts = [buyer(str(i), days=i, orders=n, spend=10.0) for i, n in enumerate([1] * 6 + [2, 2, 3, 3])]
    stats = population(facts, NOW)
    assert stats.frequency == (1, 1, 1, 2)
    f_classes = [score(f, NOW, stats).explanation.split(", ")[1] for f in facts]
    assert f_classes == ["F 1/5 (1 order)"] * 6 + ["F 4/5 (2 orders)"] * 2 + ["F 5/5 (3 orders)"] * 2
    # Everyone spent the same: everyone is M 1 (no one is above any cut point).
    assert all("M 1/5" in score(f, NOW, stats).explanation for f in facts)


def test_imported_value_wins_when_there_are_no_orders_and_says_so() -> None:
    stats = population(FIVE, NOW)
    facts = CustomerFacts("p", created_at=NOW - DAY, imported_value=64.0, last_contact_at=NOW - DAY)
    value = score(facts, NOW, stats)
    assert value.score == 64.0
    assert value.source == "import"
    assert value.explanation == "no orders in the timeline: imported value 64 used"
    assert value.recency_days is None and value.frequency == 0
    clamped = score(CustomerFacts("q", created_at=0.0, imported_value=130.5), NOW, stats)
    assert clamped.score == 100.0


def test_orders_win_over_an_imported_value_and_the_explanation_says_so() -> None:
    stats = population(FIVE, NOW)
    value = score(buyer("x", days=3, orders=7, spend=412.5, imported_value=12.0), NOW, stats)
    assert value.source == "rfm"
    assert value.score == 80.0
    assert value.explanation.endswith("; imported value 12 not used: the timeline has orders")


def test_no_orders_and_nothing_imported_is_zero() -> None:
    value = score(CustomerFacts("n", created_at=0.0), NOW, population(FIVE, NOW))
    assert value.score == 0.0
    assert value.explanation == "no orders in the timeline and no imported value → 0"


def test_orders_without_a_date_are_the_lowest_recency() -> None:
    facts = CustomerFacts("x", created_at=0.0, orders=2, spend=10.0, last_order_at=None)
    value = score(facts, NOW, population(FIVE, NOW))
    assert value.recency_days is None
    assert value.explanation.startswith("R 1/5 (date of the last order unknown)")


def test_weights_change_the_score_and_appear_in_the_explanation() -> None:
    stats = population(FIVE, NOW)
    facts = buyer("x", days=3, orders=1, spend=50.0)  # R 5, F 1, M 1
    recency_only = score(facts, NOW, stats, Weights(recency=1, frequency=0, monetary=0))
    assert recency_only.score == 100.0
    assert "(weights R 1, F 0, M 0; quintiles of 5 buyers)" in recency_only.explanation
    double_r = score(facts, NOW, stats, Weights(recency=2))  # 100 * (10 + 1 + 1) / 20 = 60
    assert double_r.score == 60.0
    with pytest.raises(ValueError, match="not all 0"):
        Weights(0, 0, 0)
    with pytest.raises(ValueError):
        Weights(recency=-1)


def test_rounding_is_half_up() -> None:
    stats = population(FIVE, NOW)
    # R 5, F 1, M 2 with weights 1, 2, 5: 100 * (5 + 2 + 10) / 40 = 42.5 -> 43 (Python's
    # round() would give 42).
    facts = buyer("x", days=3, orders=1, spend=100.0)
    assert score(facts, NOW, stats, Weights(1, 2, 5)).score == 43.0


def test_fixed_thresholds_replace_quintiles() -> None:
    fixed = Population.thresholds(
        recency_days=(30, 90, 180, 365), frequency=(1, 2, 4, 9), monetary=(50, 150, 400, 1000)
    )
    value = score(buyer("x", days=30, orders=10, spend=400.0), NOW, fixed)
    assert value.explanation == (
        "R 5/5 (ordered 30 days ago), F 5/5 (10 orders), M 3/5 (400.00 spent) → 87 (fixed thresholds)"
    )
    with pytest.raises(ValueError, match="ascending"):
        Population.thresholds(recency_days=(1, 2, 3, 4), frequency=(4, 3, 2, 1), monetary=(1, 2, 3, 4))
    with pytest.raises(ValueError, match="4 cut points"):
        Population.thresholds(recency_days=(1, 2, 3), frequency=(1, 2, 3, 4), monetary=(1, 2, 3, 4))


def test_the_streaming_builder_equals_the_in_memory_population() -> None:
    facts = [
        buyer(str(i), days=(i * 37) % 500, orders=1 + (i * 7) % 13, spend=(i * 53) % 997 + 0.5)
        for i in range(1000)
    ]
    facts += [CustomerFacts(f"n{i}", created_at=0.0) for i in range(300)]
    builder = PopulationBuilder(NOW)
    for start in range(0, len(facts), 128):
        builder.add_many(facts[start : start + 128])
    streamed = builder.build()
    assert streamed == population(facts, NOW)
    assert (streamed.buyers, streamed.customers) == (1000, 1300)
    assert streamed.basis == "quintiles of 1000 buyers"


def test_an_empty_population_has_zero_cut_points() -> None:
    stats = population([CustomerFacts("n", created_at=0.0)], NOW)
    assert stats.recency_days == stats.frequency == stats.monetary == (0.0, 0.0, 0.0, 0.0)
    assert (stats.buyers, stats.customers) == (0, 1)
    assert stats.basis == "quintiles of 0 buyers"
