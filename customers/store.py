"""The one interface every customer query goes through.

``CustomerStore`` is what the importer, the REST API, the screen-pop and the dialer use; the
embedded default is ``SQLiteStore`` (``customers.sqlite_store``, aiosqlite, WAL). A PostgreSQL
store can stand behind the same interface later: nothing outside ``customers/`` writes SQL.

Errors: every method raises ``CustomerError`` subclasses with a stable ``code`` (kebab-case) and
a message that says what and where; a failed write changes nothing (one transaction per call).
"""

from __future__ import annotations

import abc
import functools
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol, cast

from customers.model import (
    BatchResult,
    CallPermission,
    Candidate,
    Channel,
    Consent,
    ConsentScope,
    Customer,
    CustomerFacts,
    Identity,
    IdentityKind,
    Interaction,
    NewCustomer,
    Note,
    Profile,
    Value,
)

PLAIN_FIELDS = ("given_name", "family_name", "company", "language", "timezone", "birthday")

IdentityHead = tuple[str, str, str, str, str, str, int, int]
"""An identity in its stored form, as plain values: (kind, system, value, raw, label, extension,
shared, verified); ``value`` normalised (E.164, lower-cased email ...), ``label`` trimmed."""

PlainCustomer = tuple[str, str, tuple[str, ...], dict[str, Any], tuple[IdentityHead, ...], float | None]
"""A checked row as plain values, the importer's unit (cheap to make and to pickle): (key,
display_name, the ``PLAIN_FIELDS`` in order with "" for none, attributes, identities, value
score or None). Whoever makes one has checked it: a display name, fields trimmed, a valid time
zone and birthday, identities normalised without repeats of a (kind, system, value) being
needed, a score in 0..100. The store still refuses what only it limits (a field's length)."""


IdentityKey = tuple[str, str, str]
"""(kind, system, value) of an identity in its stored form: what a lookup and a holder share."""


class IdentityFilter:
    """The identity keys a store may hold already, as a bitmap of their hashes: a clear bit
    proves a key is new, a set bit only says "maybe" (another key of the same hash, ~1-3% of
    new keys at the sizes the importer asks for). The importer's worker asks it about every
    identity of every row, in the file's order, so a row's identity is marked when the store
    held it at the start or an earlier row of the import has it; the store then looks up the
    holders of the marked ones only (``plain_preparer``'s ``seen``).

    The bits come from Python's ``hash`` (seeded per interpreter): a filter is good in the
    process that made it and in processes forked from it after, never in another one.
    ``token`` ties the filter to the store that seeded it: the store trusts marks made with it
    only while it is the only writer since the seeding."""

    __slots__ = ("bits", "mask", "token")

    def __init__(self, capacity: int, token: str) -> None:
        size = 1 << 20
        while size < 16 * capacity and size < 1 << 30:
            size <<= 1
        self.bits = bytearray(size >> 3)
        self.mask = size - 1
        self.token = token

    def add(self, key: IdentityKey) -> None:
        slot = hash(key) & self.mask
        self.bits[slot >> 3] |= 1 << (slot & 7)

    def seen(self, key: IdentityKey) -> bool:
        """Whether ``key`` may be held already (then it is checked); marks it held from now on."""
        slot = hash(key) & self.mask
        byte, bit = slot >> 3, 1 << (slot & 7)
        bits = self.bits
        if bits[byte] & bit:
            return True
        bits[byte] |= bit
        return False


class PlainPreparer(Protocol):
    """``CustomerStore.plain_preparer``'s function: a batch of ``PlainCustomer``s, and the
    import's ``IdentityFilter`` when it has one, to what ``create_prepared`` takes."""

    def __call__(self, batch: Sequence[PlainCustomer], seen: IdentityFilter | None = None) -> object: ...


class CustomerError(Exception):
    """Base of every error of the customer store; ``code`` is stable for APIs."""

    code = "customer-error"
    status = 400


class NotFound(CustomerError):
    code = "not-found"
    status = 404


class InvalidInput(CustomerError):
    """A field that cannot be stored: ``field`` names it (``identities[1].value``)."""

    code = "invalid-input"
    status = 422

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class Conflict(CustomerError):
    """The write contradicts what is stored (an identity already on another customer and not
    marked shared, a merge of a profile into itself)."""

    code = "conflict"
    status = 409


class CustomerStore(abc.ABC):
    """Async customer store. ``open()`` creates or upgrades the schema; ``close()`` releases it."""

    # --- lifecycle -------------------------------------------------------------------------------

    @abc.abstractmethod
    async def open(self) -> None: ...

    @abc.abstractmethod
    async def close(self) -> None: ...

    async def __aenter__(self) -> CustomerStore:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- profiles and identities ----------------------------------------------------------------

    @abc.abstractmethod
    async def create_customer(
        self,
        display_name: str,
        *,
        identities: Iterable[Identity | tuple[IdentityKind | str, str]] = (),
        attributes: Mapping[str, Any] | None = None,
        customer_id: str | None = None,
        source: str = "",
        **fields: str,
    ) -> Customer:
        """Create a profile (``fields``: given_name, family_name, company, language, timezone,
        birthday). Identities are normalised (phones to E.164 with the default region); one
        already on another customer raises ``Conflict`` unless marked shared."""

    @abc.abstractmethod
    async def create_customers(self, batch: Sequence[NewCustomer]) -> BatchResult:
        """Store a batch in one transaction (the importer's path; thousands of rows a call).
        Invalid rows are rejected with their index and reason and the others kept; a row whose
        ``key`` exists updates that profile, so re-running an import is idempotent. Identities
        already held by another customer are stored and reported as duplicates."""

    def batch_preparer(self) -> Callable[[Sequence[NewCustomer]], object]:
        """A picklable function doing the checking and preparing part of ``create_customers``
        (CPU only, no I/O), so an importer can run it in another process and hand its result to
        ``create_prepared``. Ask for one per batch: it carries the batch's time stamp. The default
        prepares nothing."""
        return _unprepared

    def plain_preparer(self, source: str) -> PlainPreparer:
        """As ``batch_preparer()``, for rows the caller has checked and normalised already
        (``PlainCustomer``): the store trusts them and only builds its statements. ``source``
        is what the rows store as theirs (``import:crm``). The default makes ``NewCustomer``s
        (and ignores ``seen``)."""
        return functools.partial(_plain_to_new, source, self.batch_preparer())

    async def identity_filter(self, *, expected: int, max_stored: int) -> IdentityFilter | None:
        """An ``IdentityFilter`` holding every identity key stored now, sized for ``expected``
        more, for an import's ``plain_preparer`` to mark the identities whose holders must be
        looked up; None when the store holds more than ``max_stored`` identities (reading them
        would cost more than it saves) or cannot tell. The default: None (every identity is
        checked)."""
        return None

    async def create_prepared(self, prepared: object) -> BatchResult:
        """Store what ``batch_preparer()`` returned, as ``create_customers`` stores its batch."""
        return await self.create_customers(cast("Sequence[NewCustomer]", prepared))

    @abc.abstractmethod
    async def get_customer(self, customer_id: str) -> Customer:
        """The profile with its identities; a merged id returns the surviving profile."""

    @abc.abstractmethod
    async def update_customer(
        self, customer_id: str, *, attributes: Mapping[str, Any] | None = None, **fields: str
    ) -> Customer: ...

    @abc.abstractmethod
    async def add_identity(
        self,
        customer_id: str,
        kind: IdentityKind | str,
        value: str,
        *,
        system: str = "",
        label: str = "",
        shared: bool = False,
        source: str = "",
    ) -> Identity: ...

    @abc.abstractmethod
    async def remove_identity(
        self, customer_id: str, kind: IdentityKind | str, value: str, system: str = ""
    ) -> None: ...

    @abc.abstractmethod
    async def lookup(self, kind: IdentityKind | str, value: str, *, system: str = "") -> list[Candidate]:
        """Customers holding this identity, best first; ``[]`` when none. Never picks silently:
        a shared number gives every holder, ranked (recent contact, how the number is labelled)."""

    @abc.abstractmethod
    async def lookup_phone(self, raw: str, *, region: str | None = None) -> list[Candidate]:
        """``lookup`` for a phone number in any form (national, international, ``00``-prefixed,
        punctuated, with extension): the caller-id path of a screen-pop."""

    @abc.abstractmethod
    async def search(self, query: str, *, limit: int = 20) -> list[Customer]:
        """Free-text search over names, company, emails and numbers."""

    @abc.abstractmethod
    async def merge(self, keep_id: str, merge_id: str, *, actor: str = "") -> Customer:
        """Move identities, timeline, notes and consent of ``merge_id`` into ``keep_id``; the
        merged profile remains as a pointer (``merged_into``). Both histories are kept."""

    @abc.abstractmethod
    async def duplicate_identities(self, *, limit: int = 1000) -> list[tuple[Identity, tuple[str, ...]]]:
        """Identities held by more than one customer and not marked shared."""

    # --- timeline and notes ---------------------------------------------------------------------

    @abc.abstractmethod
    async def append_interaction(
        self,
        customer_id: str,
        channel: Channel | str,
        *,
        at: float | None = None,
        direction: str = "",
        summary: str = "",
        data: Mapping[str, Any] | None = None,
        source: str = "",
        external_id: str = "",
    ) -> Interaction:
        """Append to the timeline (never updated, never deleted). The same
        ``(source, external_id)`` twice returns the stored one."""

    @abc.abstractmethod
    async def timeline(
        self,
        customer_id: str,
        *,
        channels: Sequence[Channel | str] | None = None,
        before: float | None = None,
        limit: int = 50,
    ) -> list[Interaction]:
        """Newest first."""

    @abc.abstractmethod
    async def latest_by_channel(
        self, customer_id: str, per_channel: int = 3
    ) -> dict[str, list[Interaction]]: ...

    @abc.abstractmethod
    async def add_note(self, customer_id: str, author: str, text: str, *, pinned: bool = False) -> Note: ...

    @abc.abstractmethod
    async def notes(self, customer_id: str, *, limit: int = 20) -> list[Note]: ...

    # --- consent --------------------------------------------------------------------------------

    @abc.abstractmethod
    async def consent(self, customer_id: str) -> Consent: ...

    @abc.abstractmethod
    async def set_channel_permission(
        self, customer_id: str, channel: Channel | str, allowed: bool
    ) -> Consent: ...

    @abc.abstractmethod
    async def set_quiet_hours(self, customer_id: str, start: str | None, end: str | None) -> Consent: ...

    @abc.abstractmethod
    async def add_do_not_call(
        self,
        scope: ConsentScope | str,
        target: str,
        *,
        source: str,
        reason: str = "",
        until: float | None = None,
    ) -> None:
        """Customer-level (target: customer id) or number-level (target: any phone form)."""

    @abc.abstractmethod
    async def remove_do_not_call(self, scope: ConsentScope | str, target: str) -> None: ...

    @abc.abstractmethod
    async def may_call(
        self,
        number: str,
        now: float,
        *,
        purpose: str = "service",
        window: tuple[str, str] = ("08:00", "21:00"),
    ) -> CallPermission:
        """May we call this number now, and if not, why: number- and customer-level do-not-call,
        the call channel permission (marketing needs an explicit yes), quiet hours and the calling
        window in the callee's local time (the customer's time zone, else the number's)."""

    # --- value and segments ---------------------------------------------------------------------

    @abc.abstractmethod
    async def set_value(self, customer_id: str, value: Value) -> None: ...

    @abc.abstractmethod
    async def value(self, customer_id: str) -> Value | None: ...

    @abc.abstractmethod
    def iter_facts(self, *, batch: int = 5000) -> AsyncIterator[list[CustomerFacts]]:
        """Every live (not merged) customer's facts, in batches: the input of value scoring and
        segment rules."""

    @abc.abstractmethod
    async def set_values(self, values: Iterable[tuple[str, Value]]) -> int:
        """Store many values in one transaction; returns how many."""

    @abc.abstractmethod
    async def set_segments(self, segment: str, customer_ids: Iterable[str], computed_at: float) -> int:
        """Replace the members of one segment (bulk); returns how many."""

    @abc.abstractmethod
    async def segment_names(self) -> list[str]:
        """The segments that have members, by name."""

    @abc.abstractmethod
    async def segments_of(self, customer_id: str) -> list[str]: ...

    @abc.abstractmethod
    async def segment_members(self, segment: str, *, limit: int | None = None) -> list[str]: ...

    # --- the pop ------------------------------------------------------------------------------

    @abc.abstractmethod
    async def profile(self, customer_id: str, *, per_channel: int = 3, notes: int = 5) -> Profile:
        """Everything a screen-pop shows, in one read transaction."""


def _unprepared(batch: Sequence[NewCustomer]) -> object:
    return batch


def new_customer(plain: PlainCustomer, source: str) -> NewCustomer:
    """A ``PlainCustomer`` as the ``NewCustomer`` it stands for (``source``: its rows' source)."""
    key, display, fields, attributes, heads, score = plain
    return NewCustomer(
        display_name=display,
        identities=tuple(
            Identity(
                IdentityKind(kind),
                value,
                system=system,
                raw=raw,
                label=label,
                extension=extension,
                shared=bool(shared),
                verified=bool(verified),
                source=source,
            )
            for kind, system, value, raw, label, extension, shared, verified in heads
        ),
        fields={name: text for name, text in zip(PLAIN_FIELDS, fields, strict=True) if text},
        attributes=attributes,
        key=key,
        source=source,
        value=score,
    )


def _plain_to_new(
    source: str,
    prepare: Callable[[Sequence[NewCustomer]], object],
    batch: Sequence[PlainCustomer],
    seen: IdentityFilter | None = None,
) -> object:
    return prepare([new_customer(plain, source) for plain in batch])
