"""What a pop shows: the call facts of a ``ShowPop`` and the customer they resolve to.

``PopAssembler(store).assemble(show)`` returns the pop payload, a JSON-able dict (``payload_json``
encodes it for the WebSocket). It reads the customer store only through ``CustomerStore``: one
lookup, then one ``profile`` read for the customer it shows.

Rules:

Rule 1 (who to look up). Outbound: the ``CUSTOMER_ID`` channel variable first (the dialer's
        lead: ``get_customer``, which follows a merge to the survivor); when the call has none,
        or the store has no such customer, the remote (dialled) number. Inbound
        and internal: the caller number. A caller id that names nobody (``anonymous``,
        ``<unknown>``, empty, ...: ``customers.identities.is_anonymous``) is ``withheld`` and
        the store is not asked; a number the store cannot read as a phone number is
        ``unknown`` without a lookup either.
Rule 2 (match). ``unique``: one candidate (or the lead). ``ranked``: several, and the first
        scores at least ``CLEAR_LEAD`` points above the second. The store's scores start at
        100 and move by rules (a number marked shared -30, on several profiles -10, a personal
        label +5, a switchboard label -5, verified +2, a matching extension +3) with recency
        adding at most 1 as a tie-break: a lead of 10 needs a real difference (the caller's own
        number against a shared one, a mobile against a switchboard), never recency or a
        verification alone. ``ambiguous``: several and no clear first; the agent picks.
        ``unknown``: nobody holds the number. ``withheld``: no number to look up.
Rule 3 (payload). ``customer`` is the full profile of the first candidate for ``unique`` and
        ``ranked``, else ``null``. ``candidates`` lists at most ``max_candidates`` (id, display
        name, score, reasons), best first, for every match; ``candidates_total`` counts them all.
        ``unknown`` and ``withheld`` pops carry ``actions``: ``create_customer`` (the number
        and caller name prefilled when there are any) and, with a number, ``link_number`` (add
        it to a customer the agent finds).
Rule 4 (failure). A store failure never loses the pop: the payload keeps the call facts, has
        ``customer: null`` and ``error: {code, message}``, and the failure is logged with the
        call and the pop. ``match`` is ``null`` when the lookup itself failed, and what the
        lookup found when only the profile read failed (the candidates stay). No ``actions``
        then: offering to create a customer who may exist makes duplicates.
Rule 5 (early lookup). ``prefetch(number)`` starts the lookup and the profile read of an
        inbound caller before any agent rings (the pipeline calls it on the call's first change
        with a caller number, in the dialplan, an IVR or a queue): the first pop of that number
        within ``prefetch_age`` seconds takes the answer instead of asking the store on the
        ring's critical path. Each answer serves one pop (a later pop of the number asks
        again), so what a pop shows is at most as old as the caller's time before the ring; an
        early lookup that failed is asked again; ``forget(number)`` drops an answer no pop took
        (the call ended first).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any, Final

from customers.identities import is_anonymous
from customers.model import (
    Candidate,
    Consent,
    Customer,
    DoNotCall,
    Identity,
    Interaction,
    Note,
    Profile,
    Value,
)
from customers.store import CustomerError, CustomerStore, InvalidInput, NotFound
from screenpop.tracker import ShowPop

__all__ = ["CLEAR_LEAD", "PopAssembler", "payload_json"]

log = logging.getLogger(__name__)

CLEAR_LEAD: Final = 10.0
"""Points the first candidate must score above the second to be shown without asking (Rule 2)."""

_CUSTOMERS_API: Final = "/api/customers"


def payload_json(payload: Mapping[str, Any]) -> str:
    """The payload as compact JSON, non-ASCII kept (``Müller``, not ``M\\u00fcller``).

    Raises ``ValueError`` on NaN or infinity rather than send what ``JSON.parse`` rejects.
    """
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


class PopAssembler:
    """Builds the payload of each ``ShowPop`` from the call facts and the customer store."""

    def __init__(
        self,
        store: CustomerStore,
        *,
        per_channel: int = 3,
        max_candidates: int = 5,
        prefetch_age: float = 60.0,
        max_prefetched: int = 10_000,
    ) -> None:
        if per_channel < 1:
            raise ValueError(f"per_channel: expected at least 1, got {per_channel}")
        if max_candidates < 1:
            raise ValueError(f"max_candidates: expected at least 1, got {max_candidates}")
        self.store = store
        self.per_channel = per_channel
        self.max_candidates = max_candidates
        self.prefetch_age = prefetch_age
        self.max_prefetched = max_prefetched
        self._early: dict[str, tuple[float, asyncio.Task[tuple[list[Candidate], Profile | None]]]] = {}
        """Rule 5: number -> (when, the lookup and profile read started for it)."""

    def prefetch(self, number: str) -> None:
        """Rule 5: look ``number`` up now, for the pop that will follow."""
        if not number or is_anonymous(number) or number in self._early:
            return
        now = time.monotonic()
        if len(self._early) >= self.max_prefetched:
            self._forget_old(now)
            if len(self._early) >= self.max_prefetched:
                return
        task = asyncio.create_task(self._lookup_and_profile(number), name=f"pop-prefetch-{number}")
        task.add_done_callback(_retrieve)
        self._early[number] = (now, task)

    @property
    def prefetched(self) -> int:
        """Rule 5: early answers waiting for their pop."""
        return len(self._early)

    def forget(self, number: str) -> None:
        """Rule 5: drop the early answer for ``number`` if no pop took it."""
        early = self._early.pop(number, None)
        if early is not None:
            early[1].cancel()

    def _forget_old(self, now: float) -> None:
        for number, (started, task) in list(self._early.items()):
            if now - started > self.prefetch_age:
                task.cancel()
                del self._early[number]

    async def _lookup_and_profile(self, number: str) -> tuple[list[Candidate], Profile | None]:
        candidates = await self.store.lookup_phone(number)
        profile = None
        if _match(candidates) in ("unique", "ranked"):
            # The store's reads run in the loop's thread (~0.4 and ~0.7 ms of CPU here): a turn of
            # the loop between them lets a ring that came meanwhile go first.
            await asyncio.sleep(0)
            profile = await self.store.profile(candidates[0].customer.id, per_channel=self.per_channel)
        return candidates, profile

    async def _early_answer(self, number: str) -> tuple[list[Candidate], Profile | None] | None:
        early = self._early.pop(number, None)
        if early is None:
            return None
        started, task = early
        if time.monotonic() - started > self.prefetch_age:
            task.cancel()
            return None
        try:
            return await task
        except Exception:
            return None

    def assemble_now(self, show: ShowPop) -> dict[str, Any] | None:
        """The pop payload for ``show`` from an early answer that is already in (Rule 5), without
        waiting for anything; ``None`` when there is none (``assemble`` then asks the store)."""
        facts = show.facts
        if facts.get("direction") == "outbound":
            return None
        number = _text(facts.get("caller_num"))
        early = None if number is None else self._early.get(number)
        if number is None or early is None:
            return None
        started, task = early
        if not task.done() or task.cancelled() or task.exception() is not None:
            return None
        if time.monotonic() - started > self.prefetch_age:
            return None
        del self._early[number]
        candidates, profile = task.result()
        return self._fill(_new_payload(show), facts, candidates, profile)

    async def assemble(self, show: ShowPop) -> dict[str, Any]:
        """The pop payload for ``show`` (see the module's rules)."""
        facts = show.facts
        payload = _new_payload(show)
        outbound = facts.get("direction") == "outbound"
        lead = _text(facts.get("customer_id")) if outbound else None
        number = _text(facts.get("remote_num") if outbound else facts.get("caller_num"))
        early = await self._early_answer(number) if number is not None and lead is None else None
        if early is not None:
            return self._fill(payload, facts, early[0], early[1])
        try:
            candidates = await self._candidates(payload, lead, number)
        except Exception as exc:
            _failed(payload, show, "lookup", exc)
            return payload
        if candidates is None:
            payload["match"] = "withheld"
            payload["actions"] = _actions(None, _caller_name(facts))
            return payload
        if self._matched(payload, facts, candidates) not in ("unique", "ranked"):
            return payload
        try:
            profile = await self.store.profile(candidates[0].customer.id, per_channel=self.per_channel)
        except Exception as exc:
            _failed(payload, show, "profile", exc)
            return payload
        payload["customer"] = _profile(profile)
        return payload

    def _fill(
        self,
        payload: dict[str, Any],
        facts: Mapping[str, Any],
        candidates: list[Candidate],
        profile: Profile | None,
    ) -> dict[str, Any]:
        """The payload from an early answer (Rule 5): what ``assemble`` builds from the store."""
        payload["lookup"] = {"by": "phone", "value": _text(facts.get("caller_num"))}
        if self._matched(payload, facts, candidates) != "unknown" and profile is not None:
            payload["customer"] = _profile(profile)
        return payload

    def _matched(self, payload: dict[str, Any], facts: Mapping[str, Any], candidates: list[Candidate]) -> str:
        """The candidates and the match into ``payload`` (Rule 2), with the actions an unknown
        caller's pop offers (Rule 3); returns the match."""
        payload["candidates"] = [_candidate(c) for c in candidates[: self.max_candidates]]
        payload["candidates_total"] = len(candidates)
        match = _match(candidates)
        payload["match"] = match
        if match == "unknown":
            payload["actions"] = _actions(payload["lookup"], _caller_name(facts))
        return match

    async def _candidates(
        self, payload: dict[str, Any], lead: str | None, number: str | None
    ) -> list[Candidate] | None:
        """Rule 1. ``None``: withheld, nobody to look up. Sets ``payload["lookup"]``."""
        if lead is not None:
            payload["lookup"] = {"by": "customer_id", "value": lead}
            try:
                customer = await self.store.get_customer(lead)
            except (NotFound, InvalidInput):
                log.info("pop lead %s not in the customer store; looking up the number", lead)
            else:
                reasons = [f"campaign lead {lead}"]
                if customer.id != lead:
                    reasons.append(f"merged into {customer.id}")
                return [Candidate(customer=customer, score=100.0, reasons=tuple(reasons))]
        if number is None or is_anonymous(number):
            payload["lookup"] = None
            return None
        payload["lookup"] = {"by": "phone", "value": number}
        try:
            return await self.store.lookup_phone(number)
        except InvalidInput:
            # Not a phone number (an internal extension, a SIP user name): nobody to find by it.
            payload["lookup"]["valid"] = False
            return []


def _new_payload(show: ShowPop) -> dict[str, Any]:
    facts = show.facts
    return {
        "pop_id": show.pop_id,
        "agent_id": show.agent_id,
        "call_id": show.call_id,
        "call": dict(facts),
        "campaign": _campaign(facts),
        "lookup": None,
        "match": None,
        "customer": None,
        "candidates": [],
        "candidates_total": 0,
    }


def _retrieve(task: asyncio.Task[Any]) -> None:
    """An early lookup nobody awaited: its failure is not worth a warning (the pop asks again)."""
    if not task.cancelled():
        task.exception()


def _failed(payload: dict[str, Any], show: ShowPop, step: str, exc: Exception) -> None:
    """Rule 4: keep the pop, say what failed, log the details (never sent to the page)."""
    code = exc.code if isinstance(exc, CustomerError) else "internal-error"
    log.error(
        "pop %s: customer %s failed (%s) call_id=%s agent_id=%s",
        show.pop_id,
        step,
        code,
        show.call_id,
        show.agent_id,
        exc_info=exc,
    )
    payload["customer"] = None
    payload["error"] = {"code": code, "message": f"the customer {step} failed; the call details are shown"}


def _match(candidates: Sequence[Candidate]) -> str:
    """Rule 2."""
    if not candidates:
        return "unknown"
    if len(candidates) == 1:
        return "unique"
    if candidates[0].score - candidates[1].score >= CLEAR_LEAD:
        return "ranked"
    return "ambiguous"


def _actions(lookup: Mapping[str, Any] | None, caller_name: str | None) -> list[dict[str, Any]]:
    """Rule 3: what an unknown or withheld caller's pop may offer. ``href``/``method`` are the
    customer REST API's (docs/api.md); ``{customer_id}`` is the customer the agent picks."""
    number = None
    if lookup is not None and lookup.get("by") == "phone" and lookup.get("valid", True):
        number = str(lookup["value"])
    prefill: dict[str, Any] = {}
    if caller_name is not None:
        prefill["display_name"] = caller_name
    if number is not None:
        prefill["identities"] = [{"kind": "phone", "value": number, "label": ""}]
    actions: list[dict[str, Any]] = [
        {"action": "create_customer", "method": "POST", "href": _CUSTOMERS_API, "prefill": prefill}
    ]
    if number is not None:
        actions.append(
            {
                "action": "link_number",
                "method": "POST",
                "href": _CUSTOMERS_API + "/{customer_id}/identities",
                "search": _CUSTOMERS_API + "?q=",
                "body": {"kind": "phone", "value": number},
            }
        )
    return actions


def _text(value: object) -> str | None:
    if not isinstance(value, str):
        return None
    return value.strip() or None


def _caller_name(facts: Mapping[str, Any]) -> str | None:
    """The caller's name when it names somebody (not ``<unknown>``, not the number again)."""
    key = "remote_name" if facts.get("direction") == "outbound" else "caller_name"
    name = _text(facts.get(key))
    if name is None or is_anonymous(name) or name == _text(facts.get("caller_num")):
        return None
    return name


def _campaign(facts: Mapping[str, Any]) -> dict[str, Any] | None:
    campaign, lead = _text(facts.get("campaign_id")), _text(facts.get("customer_id"))
    if campaign is None and (lead is None or facts.get("direction") != "outbound"):
        return None
    return {"campaign_id": campaign, "lead": lead}


# --- serialisation: plain values, enums by value ------------------------------------------------


def _candidate(candidate: Candidate) -> dict[str, Any]:
    return {
        "id": candidate.customer.id,
        "display_name": candidate.customer.display_name,
        "score": candidate.score,
        "reasons": list(candidate.reasons),
    }


def _profile(profile: Profile) -> dict[str, Any]:
    return {
        **_customer(profile.customer),
        "identities": [_identity(identity) for identity in profile.customer.identities],
        "latest": {
            channel: [_interaction(item) for item in items] for channel, items in profile.latest.items()
        },
        "notes": [_note(note) for note in profile.notes],
        "consent": _consent(profile.consent),
        "value": _value(profile.value),
        "segments": list(profile.segments),
    }


def _customer(customer: Customer) -> dict[str, Any]:
    return {
        "id": customer.id,
        "display_name": customer.display_name,
        "given_name": customer.given_name,
        "family_name": customer.family_name,
        "company": customer.company,
        "language": customer.language,
        "timezone": customer.timezone,
        "birthday": customer.birthday,
        "attributes": dict(customer.attributes),
        "created_at": customer.created_at,
        "updated_at": customer.updated_at,
    }


def _identity(identity: Identity) -> dict[str, Any]:
    return {
        "kind": identity.kind.value,
        "value": identity.value,
        "system": identity.system,
        "raw": identity.raw,
        "label": identity.label,
        "extension": identity.extension,
        "shared": identity.shared,
        "verified": identity.verified,
    }


def _interaction(item: Interaction) -> dict[str, Any]:
    return {
        "id": item.id,
        "channel": item.channel.value,
        "at": item.at,
        "direction": item.direction,
        "summary": item.summary,
        "data": dict(item.data),
    }


def _note(note: Note) -> dict[str, Any]:
    return {"id": note.id, "at": note.at, "author": note.author, "text": note.text, "pinned": note.pinned}


def _dnc(entry: DoNotCall) -> dict[str, Any]:
    return {
        "scope": entry.scope.value,
        "target": entry.target,
        "source": entry.source,
        "at": entry.at,
        "until": entry.until,
        "reason": entry.reason,
    }


def _consent(consent: Consent) -> dict[str, Any]:
    return {
        "channels": dict(consent.channels),
        "quiet_hours": list(consent.quiet_hours) if consent.quiet_hours is not None else None,
        "do_not_call": [_dnc(entry) for entry in consent.do_not_call],
        "updated_at": consent.updated_at,
    }


def _value(value: Value | None) -> dict[str, Any] | None:
    if value is None:
        return None
    return {
        "score": value.score,
        "recency_days": value.recency_days,
        "frequency": value.frequency,
        "monetary": value.monetary,
        "source": value.source,
        "explanation": value.explanation,
        "computed_at": value.computed_at,
    }
