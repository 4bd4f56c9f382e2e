"""The bulk runner: every customer's value and every segment's members, computed and stored.

``compute_all(store, rules, now)`` streams ``store.iter_facts()`` twice: the first pass collects
the buyers' recency / frequency / monetary values for the quintiles (skipped when the rules fix
the thresholds), the second scores each customer, evaluates every segment on the fresh value,
stores the values batch by batch (``set_values``) and, at the end, replaces each segment's
members (``set_segments``). An imported value (a customer without orders) is used but not
written back: the store holds it in the same row, with the name of the system it came from.
Memory: the quintile arrays (24 bytes a buyer) and the member ids.

``now`` is the one clock reading every score and rule sees, so a run is reproducible; the
durations in the report come from a monotonic timer.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from customers.segments import RuleSet
from customers.store import CustomerStore
from customers.value import Population, PopulationBuilder, score

__all__ = ["Report", "compute_all"]

log = logging.getLogger(__name__)

YIELD_EVERY = 256
"""Customers evaluated between two yields to the event loop (a few milliseconds of work)."""


@dataclass(frozen=True, slots=True)
class Report:
    """What a run did: counts per segment, the cut points used, and where the time went."""

    customers: int
    buyers: int
    """Customers with at least one order (their value is RFM)."""
    imported: int
    """Customers without orders whose value came from another system (kept as imported)."""
    segments: Mapping[str, int]
    """Members per segment, in the rule set's order."""
    removed: tuple[str, ...]
    """Stored segments no rule defines any more: emptied."""
    population: Population
    computed_at: float
    seconds: float
    phases: Mapping[str, float] = field(default_factory=dict)
    """Seconds per phase: ``population`` (first pass), ``evaluate`` (scoring and rules),
    ``read`` (waiting for facts in the second pass), ``store_values``, ``store_segments``."""

    @property
    def rate(self) -> float:
        """Customers per second over the whole run."""
        return self.customers / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        members = ", ".join(f"{name} {count}" for name, count in self.segments.items())
        return (
            f"{self.customers} customers ({self.buyers} buyers, {self.imported} imported values) "
            f"in {self.seconds:.2f} s ({self.rate:,.0f}/s); {self.population.basis}; "
            f"segments: {members or 'none'}"
            + (f"; emptied (no rule any more): {', '.join(self.removed)}" if self.removed else "")
        )


async def compute_all(store: CustomerStore, rules: RuleSet, now: float, *, batch: int = 5000) -> Report:
    """Score every live customer at ``now``, store the values, and replace every segment's
    members with the customers its rule matches."""
    timer = time.perf_counter
    started = timer()
    phases = dict.fromkeys(("population", "read", "evaluate", "store_values", "store_segments"), 0.0)

    if rules.thresholds is not None:
        stats = rules.thresholds
    else:
        builder = PopulationBuilder(now)
        async for facts_batch in store.iter_facts(batch=batch):
            builder.add_many(facts_batch)
        stats = builder.build()
        phases["population"] = timer() - started

    members: dict[str, list[str]] = {s.name: [] for s in rules.segments}
    tests = [(s.rule.test, members[s.name]) for s in rules.segments]
    weights = rules.weights
    customers = buyers = imported = 0
    mark = timer()
    async for facts_batch in store.iter_facts(batch=batch):
        got = timer()
        phases["read"] += got - mark
        values = []
        for index, facts in enumerate(facts_batch, 1):
            if index % YIELD_EVERY == 0:
                await asyncio.sleep(0)  # ~30 µs a customer: let the pops and the bus through
            value = score(facts, now, stats, weights)
            for test, ids in tests:
                if test(facts, value, now):
                    ids.append(facts.customer_id)
            if value.source == "rfm":
                values.append((facts.customer_id, value))
                buyers += facts.orders > 0
            else:
                # The imported value stays as the import stored it: the store keeps it in the
                # same row as the computed one, and only that row knows the system it came from.
                imported += 1
        customers += len(facts_batch)
        evaluated = timer()
        phases["evaluate"] += evaluated - got
        await store.set_values(values)
        mark = timer()
        phases["store_values"] += mark - evaluated

    for name, ids in members.items():
        await store.set_segments(name, ids, now)
    # A segment taken out of the rules keeps no members: campaigns must not draw from it.
    removed = [name for name in await store.segment_names() if name not in members]
    for name in removed:
        await store.set_segments(name, [], now)
    phases["store_segments"] = timer() - mark

    report = Report(
        customers=customers,
        buyers=buyers,
        imported=imported,
        segments={name: len(ids) for name, ids in members.items()},
        removed=tuple(removed),
        population=stats,
        computed_at=now,
        seconds=timer() - started,
        phases=phases,
    )
    log.info("customer values and segments computed: %s", report.summary())
    return report
