"""Customer value: recency / frequency / monetary (RFM) from the orders in the timeline.

Pure: no clock, no store. ``now`` is passed in; the population's cut points are computed in bulk
(``PopulationBuilder``, fed by the bulk runner in ``customers.compute``) or fixed in configuration.

The formula, stated once so the explanation, the docs and the tests agree:

Rule 1. A *buyer* has at least one order. Each buyer gets three classes 1..5:
        R from the whole days since the last order (fewer is better),
        F from the number of orders, M from the sum of the order amounts (more is better).
Rule 2. A dimension's four cut points are the upper bounds (inclusive) of its classes:
        for F and M of classes 1..4, for R (days) of classes 5..2. Computed from the population
        they are the nearest-rank 20/40/60/80th percentiles of the buyers' values (quintiles),
        so a value equal to a cut point falls in the class below it (ties stay together).
Rule 3. score = 100 * (wR*R + wF*F + wM*M) / (5 * (wR + wF + wM)), rounded half up.
        Any buyer scores at least 20; R 5/5, F 5/5, M 5/5 is 100. Weights default to 1.
Rule 4. A customer with no orders takes the imported value (``CustomerFacts.imported_value``,
        clamped to 0..100) when there is one, else 0. When there are orders, RFM wins over
        an imported value; the explanation says which was used and why.
"""

from __future__ import annotations

import itertools
import math
from array import array
from bisect import bisect_left
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from customers.model import CustomerFacts, Value

DAY = 86400.0

Cuts = tuple[float, float, float, float]


@dataclass(frozen=True, slots=True)
class Weights:
    """How much each dimension counts in the score; only their ratios matter."""

    recency: float = 1.0
    frequency: float = 1.0
    monetary: float = 1.0

    def __post_init__(self) -> None:
        parts = (self.recency, self.frequency, self.monetary)
        if min(parts) < 0 or sum(parts) <= 0:
            raise ValueError(f"weights must be >= 0 and not all 0, got {parts}")

    @property
    def equal(self) -> bool:
        return self.recency == self.frequency == self.monetary


@dataclass(frozen=True, slots=True)
class Population:
    """The cut points of the three dimensions (Rule 2) and where they came from."""

    recency_days: Cuts
    frequency: Cuts
    monetary: Cuts
    buyers: int = 0
    """How many buyers the quintiles were computed from (0 for fixed thresholds)."""
    customers: int = 0
    fixed: bool = False
    """True when the cut points are thresholds from configuration, not quintiles."""

    def __post_init__(self) -> None:
        for name in ("recency_days", "frequency", "monetary"):
            cuts = getattr(self, name)
            if len(cuts) != 4 or any(a > b for a, b in itertools.pairwise(cuts)):
                raise ValueError(f"{name}: expected 4 ascending cut points, got {cuts}")

    @classmethod
    def thresholds(
        cls, *, recency_days: Sequence[float], frequency: Sequence[float], monetary: Sequence[float]
    ) -> Population:
        """Fixed cut points (Rule 2), e.g. ``recency_days=(7, 30, 90, 180)``."""
        return cls(_cuts(recency_days), _cuts(frequency), _cuts(monetary), fixed=True)

    @property
    def basis(self) -> str:
        if self.fixed:
            return "fixed thresholds"
        return f"quintiles of {self.buyers} buyer{'' if self.buyers == 1 else 's'}"


class PopulationBuilder:
    """Collects the buyers' R, F, M values in one streaming pass, then computes the quintiles.

    Memory is three arrays of doubles over the buyers (24 bytes a buyer)."""

    def __init__(self, now: float) -> None:
        self.now = now
        self.customers = 0
        self._recency = array("d")
        self._frequency = array("d")
        self._monetary = array("d")

    def add(self, facts: CustomerFacts) -> None:
        self.customers += 1
        if facts.orders <= 0:
            return
        self._frequency.append(facts.orders)
        self._monetary.append(facts.spend)
        if facts.last_order_at is not None:
            self._recency.append(_days(self.now, facts.last_order_at))

    def add_many(self, batch: Iterable[CustomerFacts]) -> None:
        for facts in batch:
            self.add(facts)

    def build(self) -> Population:
        return Population(
            recency_days=_quintiles(self._recency),
            frequency=_quintiles(self._frequency),
            monetary=_quintiles(self._monetary),
            buyers=len(self._frequency),
            customers=self.customers,
        )


EQUAL = Weights()


def population(facts: Iterable[CustomerFacts], now: float) -> Population:
    """The quintiles of an in-memory population (``PopulationBuilder`` for a stream)."""
    builder = PopulationBuilder(now)
    builder.add_many(facts)
    return builder.build()


def score(facts: CustomerFacts, now: float, stats: Population, weights: Weights | None = None) -> Value:
    """The customer's value at ``now`` with its explanation (the module's Rules 1-4)."""
    weights = weights or EQUAL
    imported = facts.imported_value
    if facts.orders <= 0:
        if imported is not None:
            clamped = min(100.0, max(0.0, float(imported)))
            return Value(
                score=clamped,
                recency_days=None,
                frequency=0,
                monetary=0.0,
                source="import",
                explanation=f"no orders in the timeline: imported value {number_text(clamped)} used",
                computed_at=now,
            )
        return Value(
            score=0.0,
            source="rfm",
            explanation="no orders in the timeline and no imported value → 0",
            computed_at=now,
        )

    if facts.last_order_at is None:
        recency_days: float | None = None
        r = 1
        r_text = "date of the last order unknown"
    else:
        recency_days = _days(now, facts.last_order_at)
        r = 5 - bisect_left(stats.recency_days, recency_days)
        whole = int(recency_days)
        r_text = "ordered today" if whole == 0 else f"ordered {whole} day{'' if whole == 1 else 's'} ago"
    f = 1 + bisect_left(stats.frequency, facts.orders)
    m = 1 + bisect_left(stats.monetary, facts.spend)
    total = weights.recency + weights.frequency + weights.monetary
    raw = 100.0 * (weights.recency * r + weights.frequency * f + weights.monetary * m) / (5.0 * total)
    result = float(math.floor(raw + 0.5))

    basis = stats.basis
    if not weights.equal:
        basis = (
            f"weights R {number_text(weights.recency)}, F {number_text(weights.frequency)}, "
            f"M {number_text(weights.monetary)}; {basis}"
        )
    orders = f"{facts.orders} order{'' if facts.orders == 1 else 's'}"
    text = (
        f"R {r}/5 ({r_text}), F {f}/5 ({orders}), M {m}/5 ({facts.spend:.2f} spent) "
        f"→ {number_text(result)} ({basis})"
    )
    if imported is not None:
        text += f"; imported value {number_text(imported)} not used: the timeline has orders"
    return Value(
        score=result,
        recency_days=recency_days,
        frequency=facts.orders,
        monetary=facts.spend,
        source="rfm",
        explanation=text,
        computed_at=now,
    )


def _days(now: float, at: float) -> float:
    """Whole days (24 h periods) elapsed; an order stamped in the future (a feeding system's
    clock ahead of ours) counts as today."""
    return float(max(0, math.floor((now - at) / DAY)))


def _quintiles(values: Sequence[float]) -> Cuts:
    """Nearest-rank 20/40/60/80th percentiles; all zero for an empty population."""
    n = len(values)
    if n == 0:
        return (0.0, 0.0, 0.0, 0.0)
    ordered = sorted(values)
    a, b, c, d = (ordered[math.ceil(k * n / 5) - 1] for k in (1, 2, 3, 4))
    return (a, b, c, d)


def _cuts(values: Sequence[float]) -> Cuts:
    if len(values) != 4:
        raise ValueError(f"expected 4 cut points, got {len(values)}")
    a, b, c, d = (float(v) for v in values)
    return (a, b, c, d)


def number_text(x: float) -> str:
    """``80`` for 80.0, ``412.5`` for 412.5: numbers as a person writes them."""
    if float(x).is_integer():
        return str(int(x))
    return f"{x:.2f}".rstrip("0").rstrip(".")
