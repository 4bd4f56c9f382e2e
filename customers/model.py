"""The customer store's values: profiles, identities, interactions, notes, consent, value.

Frozen dataclasses of plain values (JSON-able through ``dataclasses.asdict``), shared by the
store, the importer, the REST API and the screen-pop. Times are UTC epoch seconds (floats).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any


class IdentityKind(Enum):
    PHONE = "phone"
    """E.164 (``+14155550123``); ``raw`` keeps what was given, ``extension`` any extension."""
    EMAIL = "email"
    """Compared case-insensitively (stored lower-cased)."""
    MEMBER = "member"
    """A member / loyalty card number (spaces and dashes removed)."""
    EXTERNAL = "external"
    """An id in another system: ``system`` names it (shop, erp, helpdesk), ``value`` the id."""
    IM = "im"
    """An instant-messaging handle: ``system`` is the network (wechat, whatsapp, ...)."""


class Channel(Enum):
    CALL = "call"
    EMAIL = "email"
    WEB = "web"
    CHAT = "chat"
    SMS = "sms"
    FAX = "fax"
    VISIT = "visit"
    ORDER = "order"


@dataclass(frozen=True, slots=True)
class Identity:
    kind: IdentityKind
    value: str
    """Normalised: E.164 for phones, lower-case for emails, the bare id otherwise."""
    system: str = ""
    """For EXTERNAL and IM identities: which system or network; empty otherwise."""
    raw: str = ""
    """As it was given (``(415) 555-0123 ext. 12``)."""
    label: str = ""
    """Free text: ``home``, ``mobile``, ``switchboard``."""
    extension: str = ""
    shared: bool = False
    """Known to belong to more than one customer (a family landline, a company switchboard)."""
    verified: bool = False
    source: str = ""
    """Where it came from: ``import:crm.csv``, ``api:shop``, ``agent:alice``."""
    created_at: float = 0.0


@dataclass(frozen=True, slots=True)
class Customer:
    id: str
    display_name: str
    given_name: str = ""
    family_name: str = ""
    company: str = ""
    language: str = ""
    timezone: str = ""
    """IANA zone (``Europe/Berlin``) for calling windows; derived from the phone when empty."""
    birthday: str = ""
    """``YYYY-MM-DD`` or ``--MM-DD`` when the year is unknown."""
    attributes: dict[str, Any] = field(default_factory=dict)
    identities: tuple[Identity, ...] = ()
    created_at: float = 0.0
    updated_at: float = 0.0
    merged_into: str | None = None
    """Set on a profile merged into another; lookups follow it."""


@dataclass(frozen=True, slots=True)
class Interaction:
    """One entry of the append-only timeline."""

    id: int
    customer_id: str
    channel: Channel
    at: float
    direction: str = ""
    """``inbound`` / ``outbound`` / empty when it does not apply (a web visit)."""
    summary: str = ""
    data: dict[str, Any] = field(default_factory=dict)
    """Channel facts: for a call ``queue``, ``agent``, ``wait``, ``talk``, ``disposition``,
    ``call_id``; for an order ``amount`` and ``currency``; for email ``subject`` ..."""
    source: str = ""
    external_id: str = ""
    """Idempotency key from the feeding system; appending the same (source, external_id) twice
    stores it once."""


@dataclass(frozen=True, slots=True)
class Note:
    id: int
    customer_id: str
    at: float
    author: str
    text: str
    pinned: bool = False


class ConsentScope(Enum):
    CUSTOMER = "customer"
    NUMBER = "number"


@dataclass(frozen=True, slots=True)
class DoNotCall:
    """A do-not-call entry: a whole customer, or one number (whoever it belongs to)."""

    scope: ConsentScope
    target: str
    """Customer id, or an E.164 number."""
    source: str
    """``customer request``, ``national registry``, ``agent:bob`` ..."""
    at: float
    until: float | None = None
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Consent:
    customer_id: str
    channels: dict[str, bool] = field(default_factory=dict)
    """Per-channel permission (``{"call": True, "sms": False, "email": True}``); absent = unknown,
    which the policy treats as allowed for service contact and denied for marketing."""
    quiet_hours: tuple[str, str] | None = None
    """Local ``("21:00", "08:00")``: no calls between them, in the customer's time zone."""
    do_not_call: tuple[DoNotCall, ...] = ()
    updated_at: float = 0.0


@dataclass(frozen=True, slots=True)
class CallPermission:
    """The answer to "may we call this number now, and if not, why"."""

    allowed: bool
    reasons: tuple[str, ...] = ()
    """Every rule that forbids the call, in words an agent or a manager can act on."""
    number: str = ""
    customer_ids: tuple[str, ...] = ()
    local_time: str = ""
    """The callee's local time used for the window check (``2026-11-29 21:14 America/New_York``)."""
    next_allowed_at: float | None = None


@dataclass(frozen=True, slots=True)
class Value:
    """How much a customer is worth, and why."""

    score: float
    """0..100."""
    recency_days: float | None = None
    frequency: int = 0
    monetary: float = 0.0
    source: str = "rfm"
    """``rfm`` (computed from the timeline's orders) or ``import:<system>``."""
    explanation: str = ""
    computed_at: float = 0.0


@dataclass(frozen=True, slots=True)
class Candidate:
    """One answer of a lookup; several mean the identity is shared or ambiguous."""

    customer: Customer
    score: float
    """Higher is better; the list is sorted by it."""
    reasons: tuple[str, ...]
    """Why this one: ``exact phone +14155550123``, ``shared number``, ``last called 2 days ago``."""


@dataclass(frozen=True, slots=True)
class Profile:
    """Everything a screen-pop shows for one customer, assembled in one call."""

    customer: Customer
    latest: dict[str, tuple[Interaction, ...]]
    """Latest interactions per channel name, newest first."""
    notes: tuple[Note, ...]
    consent: Consent
    value: Value | None
    segments: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class NewCustomer:
    """One profile to create in a batch (the importer's unit)."""

    display_name: str
    identities: tuple[Identity | tuple[IdentityKind | str, str], ...] = ()
    fields: dict[str, str] = field(default_factory=dict)
    """given_name, family_name, company, language, timezone, birthday."""
    attributes: dict[str, Any] = field(default_factory=dict)
    key: str = ""
    """A stable id in the feeding system (``crm:10042``): a second batch with the same key
    updates that profile (adds identities and attributes) instead of creating another one."""
    source: str = ""
    value: float | None = None
    """A value score (0..100) imported from another system."""


@dataclass(frozen=True, slots=True)
class BatchResult:
    created: tuple[str, ...] = ()
    updated: tuple[str, ...] = ()
    """Customer ids whose ``key`` already existed."""
    rejected: tuple[tuple[int, str], ...] = ()
    """(index in the batch, reason) for rows that were not stored."""
    duplicates: tuple[tuple[int, Identity, tuple[str, ...]], ...] = ()
    """(index, identity, other holders): stored, but the identity is on another profile too."""


@dataclass(frozen=True, slots=True)
class CustomerFacts:
    """What segment rules and value scoring read about one customer, computed in bulk."""

    customer_id: str
    created_at: float
    birthday: str = ""
    attributes: dict[str, Any] = field(default_factory=dict)
    last_contact_at: float | None = None
    """Newest interaction of any channel."""
    contacts_by_channel: dict[str, int] = field(default_factory=dict)
    orders: int = 0
    spend: float = 0.0
    """Sum of ``data["amount"]`` over the ``order`` interactions."""
    last_order_at: float | None = None
    imported_value: float | None = None
