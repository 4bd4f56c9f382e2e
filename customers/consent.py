"""The may-call policy: pure, every input passed in (the store reads, this decides).

Rules, each one a reason when it forbids the call (all of them are reported, not the first):

1. A number-level do-not-call entry forbids calling the number, whoever holds it.
2. A customer-level do-not-call entry of *any* holder forbids it: on a shared number we cannot
   know who answers, so the most restrictive holder decides.
3. A holder whose ``call`` channel permission is ``False`` forbids it; for ``purpose="marketing"``
   every holder must have said an explicit yes (absent = no), and a number nobody holds has no
   consent at all.
4. Quiet hours of a holder, in that holder's local time, forbid it (``21:00``-``08:00`` spans
   midnight).
5. The calling window must hold in the callee's local time: the holders' ``timezone`` if set,
   else every zone ``phonenumbers`` gives the number (a US area code across a zone line, a
   toll-free number: the window must hold in all of them). No zone known: the window cannot be
   checked, which forbids the call.
6. Entries whose ``until`` has passed no longer count.
7. ``next_allowed_at`` is set only when time alone forbids (rules 4 and 5): the first instant in
   the next days at which every time rule holds in every zone.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from customers.model import CallPermission, DoNotCall
from customers.store import InvalidInput

__all__ = ["PURPOSES", "Holder", "decide", "parse_hhmm", "validate_span"]

PURPOSES = frozenset({"service", "marketing"})
_HHMM = re.compile(r"([01][0-9]|2[0-3]):([0-5][0-9])")
_SEARCH_DAYS = 3


@dataclass(frozen=True, slots=True)
class Holder:
    """What the policy needs to know about one customer holding the number."""

    customer_id: str
    display_name: str
    timezone: str = ""
    do_not_call: tuple[DoNotCall, ...] = ()
    call_permission: bool | None = None
    quiet_hours: tuple[str, str] | None = None

    @property
    def who(self) -> str:
        return f"customer {self.customer_id} ({self.display_name})"


def parse_hhmm(text: str, field: str) -> int:
    """``"HH:MM"`` to minutes after midnight."""
    match = _HHMM.fullmatch(text.strip()) if isinstance(text, str) else None
    if match is None:
        raise InvalidInput(field, f"expected a local time HH:MM (00:00-23:59), got {text!r}")
    return int(match.group(1)) * 60 + int(match.group(2))


def validate_span(span: tuple[str, str], field: str) -> tuple[str, str]:
    if not isinstance(span, tuple | list) or len(span) != 2:
        raise InvalidInput(field, f"expected (start, end) as HH:MM, got {span!r}")
    start, end = parse_hhmm(span[0], f"{field}[0]"), parse_hhmm(span[1], f"{field}[1]")
    if start == end:
        raise InvalidInput(field, f"start and end are both {span[0]}: an empty span")
    return span[0].strip(), span[1].strip()


def _inside(minute: float, start: int, end: int) -> bool:
    """Is ``minute`` (after local midnight) in [start, end), which may span midnight?"""
    if start < end:
        return start <= minute < end
    return minute >= start or minute < end


def _day(at: float) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(at))


def _dnc_reason(subject: str, entry: DoNotCall) -> str:
    text = f"{subject} on do-not-call since {_day(entry.at)} (source: {entry.source})"
    if entry.until is not None:
        text += f" until {_day(entry.until)}"
    if entry.reason:
        text += f": {entry.reason}"
    return text


def _active(entries: Sequence[DoNotCall], now: float) -> list[DoNotCall]:
    return [entry for entry in entries if entry.until is None or entry.until > now]


@dataclass(frozen=True, slots=True)
class _TimeRule:
    zone: ZoneInfo
    start: int
    end: int
    allowed_inside: bool
    """True for the calling window (must be inside), False for quiet hours (must be outside)."""
    holder: Holder | None
    span: tuple[str, str]


def _zone(name: str) -> ZoneInfo | None:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return None


def _local(at: float, zone: ZoneInfo) -> datetime:
    return datetime.fromtimestamp(at, zone)


def _minute(local: datetime) -> float:
    return local.hour * 60 + local.minute + local.second / 60


def _broken(rules: Sequence[_TimeRule], at: float) -> list[_TimeRule]:
    broken = []
    for rule in rules:
        inside = _inside(_minute(_local(at, rule.zone)), rule.start, rule.end)
        if inside != rule.allowed_inside:
            broken.append(rule)
    return broken


def _next_allowed(rules: Sequence[_TimeRule], now: float) -> float | None:
    """The first instant after ``now`` at which no time rule is broken. Allowed time is a union
    of intervals whose edges are the rules' boundaries, so the answer is one of them."""
    candidates: set[float] = set()
    for rule in rules:
        today = _local(now, rule.zone).date()
        for offset in range(-1, _SEARCH_DAYS + 1):
            day = today + timedelta(days=offset)
            for minute in (rule.start, rule.end):
                local = datetime(day.year, day.month, day.day, minute // 60, minute % 60, tzinfo=rule.zone)
                at = local.timestamp()
                if at > now:
                    candidates.add(at)
    for at in sorted(candidates):
        if not _broken(rules, at):
            return at
    return None


def decide(
    number: str,
    now: float,
    *,
    holders: Sequence[Holder],
    number_dnc: Sequence[DoNotCall],
    number_zones: Sequence[str],
    purpose: str = "service",
    window: tuple[str, str] = ("08:00", "21:00"),
) -> CallPermission:
    """May ``number`` (E.164) be called at ``now``; every reason when not."""
    if purpose not in PURPOSES:
        raise InvalidInput("purpose", f"unknown purpose {purpose!r} (one of {', '.join(sorted(PURPOSES))})")
    window = validate_span(window, "window")
    reasons: list[str] = []

    for entry in _active(number_dnc, now):
        reasons.append(_dnc_reason(f"number {number}", entry))
    for holder in holders:
        for entry in _active(holder.do_not_call, now):
            reasons.append(_dnc_reason(holder.who, entry))
        if holder.call_permission is False:
            reasons.append(f"{holder.who} does not accept calls (call channel denied)")
        elif purpose == "marketing" and holder.call_permission is not True:
            reasons.append(f"{holder.who} has not given explicit consent to marketing calls")
    if purpose == "marketing" and not holders:
        reasons.append(f"no customer holds {number}: no explicit consent to marketing calls")

    # Time rules: the calling window in every zone the callee may be in, quiet hours per holder.
    number_zone_infos = [zone for zone in map(_zone, number_zones) if zone is not None]
    rules: list[_TimeRule] = []
    zones: dict[str, ZoneInfo] = {}
    w_start, w_end = parse_hhmm(window[0], "window[0]"), parse_hhmm(window[1], "window[1]")
    holder_zones: dict[str, list[ZoneInfo]] = {}
    for holder in holders:
        own = _zone(holder.timezone) if holder.timezone else None
        holder_zones[holder.customer_id] = [own] if own is not None else number_zone_infos
    if holders:
        for listed in holder_zones.values():
            for zone in listed:
                zones[zone.key] = zone
    else:
        zones = {zone.key: zone for zone in number_zone_infos}
    unknown_zone = not zones
    if unknown_zone:
        reasons.append(f"time zone of {number} unknown: the calling window cannot be checked")
    for zone in zones.values():
        rules.append(_TimeRule(zone, w_start, w_end, True, None, window))
    for holder in holders:
        if holder.quiet_hours is None:
            continue
        q_start, q_end = (
            parse_hhmm(holder.quiet_hours[0], "quiet_hours[0]"),
            parse_hhmm(holder.quiet_hours[1], "quiet_hours[1]"),
        )
        for zone in holder_zones[holder.customer_id]:
            rules.append(_TimeRule(zone, q_start, q_end, False, holder, holder.quiet_hours))

    broken = _broken(rules, now)
    timing: list[str] = []
    outside = [rule for rule in broken if rule.holder is None]
    if outside:
        where = ", ".join(f"{_local(now, rule.zone):%H:%M} in {rule.zone.key}" for rule in outside)
        timing.append(
            f"outside the calling window {window[0]}-{window[1]} in the callee's local time ({where})"
        )
    for rule in broken:
        if rule.holder is not None:
            timing.append(
                f"quiet hours {rule.span[0]}-{rule.span[1]} of {rule.holder.who} "
                f"({_local(now, rule.zone):%H:%M} in {rule.zone.key})"
            )
    next_allowed_at = _next_allowed(rules, now) if timing and not reasons else None
    reasons.extend(timing)
    local_time = "; ".join(f"{_local(now, zone):%Y-%m-%d %H:%M} {key}" for key, zone in zones.items())
    return CallPermission(
        allowed=not reasons,
        reasons=tuple(reasons),
        number=number,
        customer_ids=tuple(holder.customer_id for holder in holders),
        local_time=local_time,
        next_allowed_at=next_allowed_at,
    )
