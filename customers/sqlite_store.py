"""``SQLiteStore``: the embedded customer store (aiosqlite, WAL).

How it runs:

1. One aiosqlite connection per store. Every public method is *one* job on the connection's
   worker thread: a synchronous function that gets the ``sqlite3.Connection`` and runs its
   statements inside one explicit transaction (``BEGIN IMMEDIATE`` to write, ``BEGIN`` to read
   several tables at one snapshot). Jobs run one after the other, so two tasks can never interleave
   statements inside each other's transactions, a failing job rolls back everything it wrote, and
   a screen-pop costs one thread hop instead of one per statement. The exceptions are the two
   reads of every ringing call, the caller lookup (``lookup_phone``) and the pop's ``profile``:
   they run on a second, read-only connection in the caller's thread, without the hop. On a busy
   host the hop was most of their latency: the worker thread gives the GIL back at every
   ``sqlite3_step`` and waits up to the switch interval (5 ms) to get it again while the event
   loop parses AMI, and their Python work competed with the loop's for the same GIL anyway
   (measured in the screen-pop bench: ~0.5 ms of loop time per pop against 2 ms and more of
   waiting). WAL readers never wait for the writer and see everything committed before their
   transaction starts. In-memory databases have no second connection and use the first.
2. The connection is in autocommit mode (``isolation_level=None``): the only transactions are the
   ones we open.
3. ``open()`` refuses a database from a newer schema before writing anything, then sets WAL,
   ``synchronous=NORMAL``, foreign keys and a busy timeout, then applies pending migrations.
4. Merged profiles stay as rows with ``merged_into`` pointing at the survivor; every method that
   takes a customer id follows it (merges re-point older merges, so it is one step).
5. ``sqlite3`` errors leave as ``CustomerError``s: ``IntegrityError`` as ``Conflict``, others as
   ``StorageError``.
6. An import's batch (``create_prepared``) looks up the other holders of only the identities its
   ``IdentityFilter`` marked, and only while the writing connection's ``PRAGMA data_version``
   (another connection committed) and ``total_changes`` (a write through this one) are what they
   were after the filter's seeding or the import's last batch. Any other write turns the filter
   off for good: from then on every identity's holders are looked up, as without a filter.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import math
import re
import secrets
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from itertools import repeat
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar, cast
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import aiosqlite

from customers import consent as policy
from customers.identities import (
    IdentityRow,
    fast_email,
    fast_phone,
    identity_row,
    is_anonymous,
    normalise_identity,
    normalise_phone,
    parse_kind,
    phone_time_zones,
    row_identity,
)
from customers.migrate import MIGRATIONS_DIR, check_version, load_migrations, migrate
from customers.model import (
    BatchResult,
    CallPermission,
    Candidate,
    Channel,
    Consent,
    ConsentScope,
    Customer,
    CustomerFacts,
    DoNotCall,
    Identity,
    IdentityKind,
    Interaction,
    NewCustomer,
    Note,
    Profile,
    Value,
)
from customers.store import (
    Conflict,
    CustomerError,
    CustomerStore,
    IdentityFilter,
    IdentityKey,
    InvalidInput,
    NotFound,
    PlainCustomer,
    PlainPreparer,
)

__all__ = ["IdentityConflict", "SQLiteStore", "StorageError", "StoreBusy", "StoreClosed"]

log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")

FIELDS = ("given_name", "family_name", "company", "language", "timezone", "birthday")
_CUSTOMER_COLUMNS = (
    "id, display_name, given_name, family_name, company, language, timezone, birthday, attributes, "
    "created_at, updated_at, merged_into"
)
_IDENTITY_COLUMNS = "kind, system, value, raw, label, extension, shared, verified, source, created_at"
_INTERACTION_COLUMNS = "id, customer_id, channel, at, direction, summary, data, source, external_id"
_NOTE_COLUMNS = "id, customer_id, at, author, text, pinned"
_VALUE_COLUMNS = "score, recency_days, frequency, monetary, source, explanation, computed_at"
_CUSTOMER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}")
_BIRTHDAY = re.compile(r"(\d{4}|-)-(\d{2})-(\d{2})")
_DIRECTIONS = frozenset({"", "inbound", "outbound", "internal"})
_CHUNK = 500  # values per IN (...) list: well under SQLite's variable limit
_PERSONAL_LABELS = frozenset({"mobile", "cell", "cellphone", "home", "personal", "private", "direct"})
_SHARED_LABELS = frozenset(
    {"switchboard", "office", "work", "main", "reception", "company", "front desk", "fax"}
)
# latest_by_channel: one index seek (interactions_latest) per channel, newest first.
_LATEST_SQL = " UNION ALL ".join(
    f"SELECT * FROM (SELECT {_INTERACTION_COLUMNS} FROM interactions "
    f"WHERE customer_id = ?1 AND channel = '{channel.value}' ORDER BY at DESC, id DESC LIMIT ?2)"
    for channel in Channel
)


_CHANNEL_NAMES = tuple(channel.value for channel in Channel)
# iter_facts: one row per customer of a batch's id range, in one pass over interactions_latest
# (which holds channel and at: only order rows read the table, for their amount). One row per
# customer, not per (customer, channel): making Python rows is most of the cost.
_FACTS_SQL = (
    "SELECT customer_id, max(at), "
    + ", ".join(f"sum(channel = '{name}')" for name in _CHANNEL_NAMES)
    + ", max(CASE WHEN channel = 'order' THEN at END), "
    "sum(CASE WHEN channel = 'order' THEN CAST(json_extract(data, '$.amount') AS REAL) END) "
    "FROM interactions INDEXED BY interactions_latest WHERE customer_id BETWEEN ? AND ? "
    "GROUP BY customer_id"
)


# Holders first (MATERIALIZED: their last contact is looked up once per holder, not once per
# identity of the join below), then each holder's identities, one output row per identity.
_LOOKUP_SQL = (
    "WITH holders AS MATERIALIZED (SELECT i.customer_id, i.shared, i.label, i.verified, i.extension, "
    "(SELECT at FROM interactions WHERE customer_id = i.customer_id ORDER BY at DESC, id DESC LIMIT 1) "
    "AS last_at, "
    "(SELECT channel FROM interactions WHERE customer_id = i.customer_id ORDER BY at DESC, id DESC LIMIT 1) "
    "AS last_channel, "
    + ", ".join(f"c.{column} AS c_{column}" for column in _CUSTOMER_COLUMNS.split(", "))
    + " FROM identities AS i JOIN customers AS c ON c.id = i.customer_id "
    "WHERE i.kind = ? AND i.system = ? AND i.value = ? AND c.merged_into IS NULL) "
    "SELECT h.customer_id, h.shared, h.label, h.verified, h.extension, h.c_created_at, h.last_at, "
    "h.last_channel, "
    + ", ".join(f"h.c_{column}" for column in _CUSTOMER_COLUMNS.split(", "))
    + ", "
    + ", ".join(f"j.{column}" for column in _IDENTITY_COLUMNS.split(", "))
    + " FROM holders AS h JOIN identities AS j ON j.customer_id = h.customer_id "
    "ORDER BY h.customer_id, j.created_at, j.kind, j.value"
)


class StorageError(CustomerError):
    """SQLite failed (disk full, locked past the busy timeout, corrupt file)."""

    code = "storage-error"
    status = 500


class StoreClosed(StorageError):
    code = "store-closed"
    status = 503


class StoreBusy(StorageError):
    """Another writer held the database past the busy timeout: try again shortly."""

    code = "store-busy"
    status = 503


_BUSY_CODES = frozenset({sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED})


def _storage_error(path: object, exc: sqlite3.Error) -> StorageError:
    code = getattr(exc, "sqlite_errorcode", None)
    # Extended codes (SQLITE_BUSY_SNAPSHOT ...) keep the primary code in the low byte.
    if code is not None and code & 0xFF in _BUSY_CODES:
        return StoreBusy(f"{path}: {exc}")
    return StorageError(f"{path}: {exc}")


class IdentityConflict(Conflict):
    """An identity is already on another customer and not marked shared."""

    def __init__(self, field: str, identity: Identity, holders: Sequence[str]) -> None:
        what = f"{identity.kind.value} {identity.value}"
        if identity.system:
            what += f" ({identity.system})"
        super().__init__(
            f"{field}: {what} already belongs to customer {', '.join(holders)}; "
            "mark it shared to give it to several customers, or merge the profiles"
        )
        self.field = field
        self.identity = identity
        self.holders = tuple(holders)


# --- small helpers ------------------------------------------------------------------------------


def _dumps(value: Mapping[str, Any], field: str) -> str:
    if not isinstance(value, Mapping):
        raise InvalidInput(field, f"expected an object, got {type(value).__name__}")
    try:
        return json.dumps(dict(value), separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidInput(field, f"not JSON-serialisable: {exc}") from None


def _loads(text: str | None) -> dict[str, Any]:
    if not text or text == "{}":
        return {}
    loaded = json.loads(text)
    return loaded if isinstance(loaded, dict) else {}


@lru_cache(maxsize=1024)
def _zone_ok(name: str) -> bool:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return False
    return True


def _check_field(name: str, value: object, where: str = "") -> str:
    field = f"{where}{name}"
    if name not in FIELDS and name != "display_name":
        raise InvalidInput(field, f"unknown field (one of display_name, {', '.join(FIELDS)})")
    if not isinstance(value, str):
        raise InvalidInput(field, f"expected a string, got {type(value).__name__}")
    text = value.strip()
    if len(text) > 1000:
        raise InvalidInput(field, "longer than 1000 characters")
    if name == "display_name" and not text:
        raise InvalidInput(field, "empty")
    if name == "timezone" and text and not _zone_ok(text):
        raise InvalidInput(field, f"unknown IANA time zone {text!r} (e.g. Europe/Berlin)")
    if name == "birthday" and text:
        match = _BIRTHDAY.fullmatch(text)
        ok = match is not None and 1 <= int(match.group(2)) <= 12 and 1 <= int(match.group(3)) <= 31
        if not ok:
            raise InvalidInput(field, f"expected YYYY-MM-DD or --MM-DD, got {text!r}")
    return text


_FREE_TEXT = frozenset({"given_name", "family_name", "company", "language"})


def _check_fields(fields: Mapping[str, object], where: str = "") -> dict[str, str]:
    checked = {}
    for name, value in fields.items():
        if name in _FREE_TEXT and type(value) is str and len(value) <= 1000:
            checked[name] = value.strip()  # the common case without the checks' call
        else:
            checked[name] = _check_field(name, value, where)
    return checked


def _plain_pair(item: object, region: str, source: str, now: float) -> IdentityRow | None:
    """The row of a ``("phone", "+14155550123")`` or ``("email", "a@b.c")`` pair, or of a phone
    ``Identity`` (the importer's, already E.164), in a plain form; None for everything else
    (``identity_row`` then does the full job, errors included)."""
    if type(item) is Identity:
        if item.kind is not IdentityKind.PHONE or type(item.value) is not str or type(item.label) is not str:
            return None
        e164 = fast_phone(item.value.strip(), region)
        if e164 is None:
            return None
        return (
            "phone",
            "",
            e164,
            item.raw or item.value,
            item.label.strip(),
            item.extension,
            int(bool(item.shared)),
            int(bool(item.verified)),
            item.source or source,
            item.created_at or now,
        )
    if type(item) is not tuple or len(item) != 2:
        return None
    kind, raw = item
    if type(raw) is not str:
        return None
    if kind == "phone" or kind is IdentityKind.PHONE:
        e164 = fast_phone(raw.strip(), region)
        return None if e164 is None else ("phone", "", e164, raw, "", "", 0, 0, source, now)
    if kind == "email" or kind is IdentityKind.EMAIL:
        email = fast_email(raw)
        return None if email is None else ("email", "", email, raw, "", "", 0, 0, source, now)
    return None


def _channel(channel: Channel | str, field: str = "channel") -> Channel:
    if isinstance(channel, Channel):
        return channel
    try:
        return Channel(str(channel).strip().lower())
    except ValueError:
        known = ", ".join(c.value for c in Channel)
        raise InvalidInput(field, f"unknown channel {channel!r} (one of {known})") from None


def _scope(scope: ConsentScope | str) -> ConsentScope:
    if isinstance(scope, ConsentScope):
        return scope
    try:
        return ConsentScope(str(scope).strip().lower())
    except ValueError:
        raise InvalidInput("scope", f"unknown scope {scope!r} (customer or number)") from None


def _check_value(value: Value, field: str = "value") -> Value:
    if not isinstance(value, Value):
        raise InvalidInput(field, f"expected a Value, got {type(value).__name__}")
    if not 0 <= value.score <= 100:
        raise InvalidInput(f"{field}.score", f"expected 0..100, got {value.score}")
    return value


def _ago(seconds: float) -> str:
    if seconds < 90:
        return "just now"
    for unit, size, until in (("minute", 60, 5400), ("hour", 3600, 36 * 3600), ("day", 86400, None)):
        if until is None or seconds < until:
            amount = round(seconds / size)
            return f"{amount} {unit} ago" if amount == 1 else f"{amount} {unit}s ago"
    raise AssertionError("unreachable")


def _chunks(items: Sequence[T], size: int = _CHUNK) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _marks(count: int) -> str:
    return ",".join("?" * count)


@contextmanager
def _transaction(conn: sqlite3.Connection, *, write: bool = True) -> Iterator[None]:
    """One transaction: committed when the block ends, rolled back when it raises."""
    conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
    try:
        yield
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


# --- row conversions ----------------------------------------------------------------------------


def _customer(row: Sequence[Any], identities: Sequence[Identity] = ()) -> Customer:
    return Customer(
        id=row[0],
        display_name=row[1],
        given_name=row[2],
        family_name=row[3],
        company=row[4],
        language=row[5],
        timezone=row[6],
        birthday=row[7],
        attributes=_loads(row[8]),
        identities=tuple(identities),
        created_at=row[9],
        updated_at=row[10],
        merged_into=row[11],
    )


def _interaction(row: Sequence[Any]) -> Interaction:
    return Interaction(
        id=row[0],
        customer_id=row[1],
        channel=Channel(row[2]),
        at=row[3],
        direction=row[4],
        summary=row[5],
        data=_loads(row[6]),
        source=row[7],
        external_id=row[8],
    )


def _note(row: Sequence[Any]) -> Note:
    return Note(id=row[0], customer_id=row[1], at=row[2], author=row[3], text=row[4], pinned=bool(row[5]))


def _value(row: Sequence[Any]) -> Value:
    return Value(
        score=row[0],
        recency_days=row[1],
        frequency=row[2],
        monetary=row[3],
        source=row[4],
        explanation=row[5],
        computed_at=row[6],
    )


def _dnc(row: Sequence[Any]) -> DoNotCall:
    return DoNotCall(
        scope=ConsentScope(row[0]), target=row[1], source=row[2], at=row[3], until=row[4], reason=row[5]
    )


class _IdClock:
    """Time-ordered ids, increasing within a process: milliseconds, a sequence within the
    millisecond, then randomness (another process making ids in the same millisecond). New rows
    land at the right edge of every index keyed by customer id. One per process: an import's
    worker makes the ids of the rows it prepares."""

    __slots__ = ("last_ms", "seq")

    def __init__(self) -> None:
        self.last_ms = 0
        self.seq = 0

    def ids(self, count: int) -> list[str]:
        ms = time.time_ns() // 1_000_000
        if ms <= self.last_ms:
            ms = self.last_ms
        else:
            self.seq = -1
        noise = secrets.token_hex(6 * count)
        ids = []
        for n in range(count):
            self.seq += 1
            if self.seq > 0xFFFF:
                ms, self.seq = ms + 1, 0
            ids.append(f"{ms:012x}{self.seq:04x}{noise[12 * n : 12 * n + 12]}")
        self.last_ms = ms
        return ids


_ID_CLOCK = _IdClock()


_Row = tuple[int, str | None, tuple[Any, ...], str, list[tuple[Any, ...]], tuple[Any, ...] | None]
"""One ``create_customers`` row after validation, its SQL parameters prepared outside the
connection's thread (the thread's share of the GIL is the import's bottleneck), as a plain tuple
(an import's worker process hands thousands a batch over: plain tuples unpickle 4x faster than
objects): (index in the batch, key or None, the customers row (a new id first), attributes, the
identities rows (``_IDENTITY_INSERT``'s parameters, the new id last), the customer_values row
(the new id first) or None). A row whose key exists is stored under that profile's id instead."""


def _update_of(customer: tuple[Any, ...]) -> dict[str, str]:
    """What a row sets on a profile whose key exists: display_name, the non-empty fields."""
    changes = {"display_name": customer[1]}
    changes.update((name, text) for name, text in zip(FIELDS, customer[2:8], strict=True) if text)
    return changes


def _imported_value(cid: str, score: float, source: str, now: float) -> tuple[Any, ...]:
    origin = source if source.startswith("import") else f"import:{source or 'batch'}"
    return (cid, float(score), None, 0, 0.0, origin, f"imported score {score:g}", now)


_IDENTITY_INSERT = (
    "INSERT INTO identities (kind, system, value, raw, label, extension, shared, verified, source, "
    "created_at, customer_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (kind, system, value, customer_id) DO UPDATE SET "
    "label = CASE WHEN excluded.label <> '' THEN excluded.label ELSE label END, "
    "shared = max(shared, excluded.shared)"
)


def _identity_rows(
    identities: Iterable[Identity | tuple[IdentityKind | str, str]], region: str, *, source: str, now: float
) -> list[tuple[str, IdentityRow]]:
    """Normalised identity rows with their field names (``identities[2]``), without repeats."""
    if type(identities) in (str, bytes, dict):
        raise InvalidInput("identities", "expected a list of identities")
    seen: set[tuple[str, str, str]] = set()
    rows: list[tuple[str, IdentityRow]] = []
    for index, item in enumerate(identities):
        row = _plain_pair(item, region, source, now)  # the importer's common case, inlined
        if row is None:
            row = identity_row(
                item, region=region, field=f"identities[{index}]", source=source, created_at=now
            )
        key = row[:3]
        if key not in seen:
            seen.add(key)
            rows.append((f"identities[{index}]", row))
    return rows


def _check_row(index: int, item: NewCustomer, now: float, region: str) -> _Row:
    if not isinstance(item, NewCustomer):
        raise InvalidInput("row", f"expected a NewCustomer, got {type(item).__name__}")
    fields = _check_fields(item.fields)
    name = item.display_name.strip() if isinstance(item.display_name, str) else ""
    if not name:
        # A row from a CRM export may have only the parts of the name.
        name = " ".join(p for p in (fields.get("given_name"), fields.get("family_name")) if p)
    name = _check_field("display_name", name)
    score = item.value
    if score is not None and (not isinstance(score, int | float) or not 0 <= score <= 100):
        raise InvalidInput("value", f"expected a score 0..100, got {score!r}")
    key = item.key.strip() if isinstance(item.key, str) and item.key.strip() else None
    source = item.source if isinstance(item.source, str) else ""
    identities = _identity_rows(item.identities, region, source=source, now=now)
    attributes = _dumps(item.attributes, "attributes") if item.attributes else "{}"
    cid = _ID_CLOCK.ids(1)[0]
    return (
        index,
        key,
        (cid, name, *[fields.get(field, "") for field in FIELDS], attributes, source, key, now, now),
        attributes,
        [(*row, cid) for _, row in identities],
        None if score is None else _imported_value(cid, score, source, now),
    )


@dataclass(slots=True)
class _Prepared:
    """A batch checked and turned into the statements' parameters (possibly in another process):
    ``create_prepared`` only runs the SQL. Column-wise (one list per statement, not one tuple
    per row), so the writer hands the lists to ``executemany`` as they are; pickled as one
    string (``_pack``), which an import's worker makes and the writer splits in C."""

    now: float
    rejected: list[tuple[int, str]]
    indexes: list[int]
    """Each row's index in the batch."""
    customers: list[tuple[Any, ...]]
    """Each row's customers row (``_CUSTOMER_INSERT``'s parameters: the new id first, the key
    at 10)."""
    counts: list[int]
    """How many of ``identities`` each row has, in order."""
    identities: list[tuple[Any, ...]]
    """``_IDENTITY_INSERT``'s parameters, the rows' identities one after the other (new id last)."""
    values: list[tuple[Any, ...] | None] | None = None
    """Each row's customer_values row (the new id first) or None; None: no row has one."""
    checks: set[IdentityKey] | None = None
    """The identity keys whose holders must be looked up (the ``IdentityFilter`` marked them);
    None: all of them."""
    token: str | None = None
    """The filter's ``token``: the store trusts ``checks`` only for the filter it seeded."""

    @classmethod
    def of_rows(cls, rows: Sequence[_Row], rejected: list[tuple[int, str]], now: float) -> _Prepared:
        values = [row[5] for row in rows]
        return cls(
            now,
            rejected,
            [row[0] for row in rows],
            [row[2] for row in rows],
            [len(row[4]) for row in rows],
            [identity for row in rows for identity in row[4]],
            values if any(value is not None for value in values) else None,
        )

    def rows(self) -> list[_Row]:
        """Row-wise, for the rows that update stored profiles (``_merge_rows``)."""
        rows: list[_Row] = []
        at = 0
        values = self.values or [None] * len(self.indexes)
        for index, customer, count, value in zip(
            self.indexes, self.customers, self.counts, values, strict=True
        ):
            rows.append((index, customer[10], customer, customer[8], self.identities[at : at + count], value))
            at += count
        return rows

    def __reduce__(self) -> tuple[Any, ...]:
        packed = _pack(self)
        if packed is None:
            return (
                _Prepared,
                (
                    self.now,
                    self.rejected,
                    self.indexes,
                    self.customers,
                    self.counts,
                    self.identities,
                    self.values,
                    self.checks,
                    self.token,
                ),
            )
        return (_unpack, packed)


_SEP = "\x1f"
"""Between the strings of a packed batch; a batch with one in its text is pickled as it is."""


def _pack(prepared: _Prepared) -> tuple[Any, ...] | None:
    """The batch as (one string of its texts, bytes of its identities' flags, the rest as is):
    pickling ~70k short strings and 9k tuples a batch cost the worker ~12 us a row, this ~4.
    None when the batch does not have the shape (one source and time, keys, 0/1 flags)."""
    if not prepared.customers:
        return None
    now = prepared.now
    source = prepared.customers[0][9]
    texts: list[str] = []
    extend, append = texts.extend, texts.append
    for customer in prepared.customers:
        if customer[9] != source or customer[10] is None or customer[11] != now or customer[12] != now:
            return None
        extend(customer[:9])
        append(customer[10])
    flags = bytearray()
    flag = flags.append
    for identity in prepared.identities:
        if (
            identity[8] != source
            or identity[9] != now
            or not 0 <= identity[6] <= 1
            or not 0 <= identity[7] <= 1
        ):
            return None
        extend(identity[:6])
        append(identity[10])
        flag(identity[6])
        flag(identity[7])
    try:
        text = _SEP.join(texts)
    except TypeError:  # not all strings
        return None
    if text.count(_SEP) != len(texts) - 1:
        return None
    return (
        text,
        bytes(flags),
        source,
        now,
        prepared.rejected,
        prepared.indexes,
        prepared.counts,
        prepared.values,
        prepared.checks,
        prepared.token,
    )


def _unpack(  # noqa: PLR0917 - pickle calls it with the arguments _pack made
    text: str,
    flags: bytes,
    source: str,
    now: float,
    rejected: list[tuple[int, str]],
    indexes: list[int],
    counts: list[int],
    values: list[tuple[Any, ...] | None] | None,
    checks: set[IdentityKey] | None,
    token: str | None,
) -> _Prepared:
    texts = text.split(_SEP)
    rows = len(indexes)
    c = iter(texts[: 10 * rows])
    customers = list(zip(c, c, c, c, c, c, c, c, c, repeat(source, rows), c, repeat(now), repeat(now)))
    i = iter(texts[10 * rows :])
    f = iter(flags)
    identities = list(zip(i, i, i, i, i, i, f, f, repeat(source), repeat(now), i))
    if len(customers) != rows or len(identities) != sum(counts) or len(flags) != 2 * len(identities):
        raise ValueError("a packed batch that does not add up")
    return _Prepared(now, rejected, indexes, customers, counts, identities, values, checks, token)


def _prepare(region: str, now: float, batch: Sequence[NewCustomer]) -> _Prepared:
    """``SQLiteStore.batch_preparer``'s work: every row checked and its SQL parameters built."""
    rows: list[_Row] = []
    rejected: list[tuple[int, str]] = []
    for index, item in enumerate(batch):
        try:
            rows.append(_check_row(index, item, now, region))
        except CustomerError as exc:
            rejected.append((index, str(exc)))
    return _Prepared.of_rows(rows, rejected, now)


def _prepare_plain(
    source: str, now: float, batch: Sequence[PlainCustomer], seen: IdentityFilter | None = None
) -> _Prepared:
    """``SQLiteStore.plain_preparer``'s work: the statements' parameters of rows the importer has
    checked and normalised (``PlainCustomer``), refusing only what the store limits (a field
    over 1000 characters, attributes that are no JSON object). With ``seen``, the identities it
    marks (maybe held already) are the only ones whose holders ``create_prepared`` looks up."""
    rejected: list[tuple[int, str]] = []
    indexes: list[int] = []
    customers: list[tuple[Any, ...]] = []
    counts: list[int] = []
    identities: list[tuple[Any, ...]] = []
    values: list[tuple[Any, ...] | None] = []
    scored = False
    checks: set[IdentityKey] = set()
    marked = None if seen is None else seen.seen
    ids = iter(_ID_CLOCK.ids(len(batch)))
    for index, (key, name, fields, attributes, heads, score) in enumerate(batch):
        cid = next(ids)
        try:
            for field, text in zip(FIELDS, fields, strict=True):
                if len(text) > 1000:
                    _check_field(field, text)
            if len(name) > 1000:
                _check_field("display_name", name)
            encoded = _dumps(attributes, "attributes") if attributes else "{}"
        except CustomerError as exc:
            rejected.append((index, str(exc)))
            continue
        count = 0
        unique: set[tuple[str, str, str]] = set()
        for head in heads:
            key3 = head[:3]
            if len(heads) > 1:
                if key3 in unique:
                    continue
                unique.add(key3)
            identities.append((*head, source, now, cid))
            count += 1
            if marked is not None and marked(key3):
                checks.add(key3)
        indexes.append(index)
        customers.append((cid, name, *fields, encoded, source, key or None, now, now))
        counts.append(count)
        if score is None:
            values.append(None)
        else:
            values.append(_imported_value(cid, score, source, now))
            scored = True
    return _Prepared(
        now,
        rejected,
        indexes,
        customers,
        counts,
        identities,
        values if scored else None,
        None if seen is None else checks,
        None if seen is None else seen.token,
    )


class SQLiteStore(CustomerStore):
    """The customer store on one SQLite file (or ``":memory:"``).

    ``default_region`` reads national phone forms (``"US"``: ``(415) 555-0123``); ``clock`` gives
    the time stamps (tests pass a fixed one); ``migrations_dir`` is for tests of the runner.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        default_region: str = "US",
        clock: Callable[[], float] = time.time,
        busy_timeout: float = 5.0,
        migrations_dir: Path | None = None,
    ) -> None:
        self.path = str(path)
        self.default_region = default_region.upper()
        self.clock = clock
        self.busy_timeout = busy_timeout
        self.migrations_dir = migrations_dir or MIGRATIONS_DIR
        self._db: aiosqlite.Connection | None = None
        self._reader: sqlite3.Connection | None = None
        # The import's IdentityFilter (identity_filter): its token, and (data_version,
        # total_changes) of the writing connection after the last write the filter knows of.
        # Both only touched on the connection's thread.
        self._filter_token: str | None = None
        self._filter_marks: tuple[int, int] = (-1, -1)

    def __repr__(self) -> str:
        return f"SQLiteStore({self.path!r}, default_region={self.default_region!r})"

    # --- lifecycle -------------------------------------------------------------------------------

    async def open(self) -> None:
        if self._db is not None:
            return
        db = await aiosqlite.connect(self.path, isolation_level=None, timeout=self.busy_timeout)
        self._db = db
        try:
            await self._run(self._open)
        except BaseException:
            self._db = None
            await db.close()
            raise
        if self.path != ":memory:" and not self.path.startswith("file::memory:"):
            reader = sqlite3.connect(
                self.path, isolation_level=None, timeout=self.busy_timeout, check_same_thread=False
            )
            reader.execute("PRAGMA query_only = ON")
            reader.execute("PRAGMA cache_size = -16384")  # identities' and timelines' upper pages
            self._reader = reader

    def _open(self, conn: sqlite3.Connection) -> None:
        migrations = load_migrations(self.migrations_dir)
        # Before any write, journal mode included: a newer schema is not ours to touch.
        check_version(conn, migrations, self.path)
        if self.path != ":memory:" and not self.path.startswith("file::memory:"):
            conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000):d}")
        conn.execute("PRAGMA temp_store = MEMORY")
        conn.execute("PRAGMA cache_size = -65536")  # 64 MiB: the hot index pages of a 1M store
        # 40 MiB of WAL between checkpoints, not 4: an import's batch re-dirties the same index
        # pages, and each checkpoint copied them again (COMMIT: 23 µs a row of ~110, now ~6).
        conn.execute("PRAGMA wal_autocheckpoint = 10000")
        migrate(conn, self.migrations_dir, where=self.path)

    async def __aenter__(self) -> SQLiteStore:
        await self.open()
        return self

    async def close(self) -> None:
        reader, self._reader = self._reader, None
        if reader is not None:
            reader.close()
        db, self._db = self._db, None
        if db is None:
            return
        try:
            await db.execute("PRAGMA optimize")
        except sqlite3.Error:
            log.debug("PRAGMA optimize failed on close", exc_info=True)
        await db.close()

    async def _run(
        self, fn: Callable[Concatenate[sqlite3.Connection, P], T], /, *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """Run ``fn(conn, ...)`` as one job on the connection's thread (see rule 1)."""
        db = self._db
        if db is None:
            raise StoreClosed(f"customer store {self.path} is not open")
        try:
            # aiosqlite's own primitive (its execute/commit are built on it): runs a callable on the
            # connection's worker thread, in order with everything else on this connection.
            result = await db._execute(fn, db._conn, *args, **kwargs)  # type: ignore[no-untyped-call]
        except sqlite3.IntegrityError as exc:
            raise Conflict(f"{self.path}: {exc}") from exc
        except sqlite3.Error as exc:
            raise _storage_error(self.path, exc) from exc
        return cast(T, result)

    # --- id resolution ---------------------------------------------------------------------------

    def _new_id(self) -> str:
        return self._new_ids(1)[0]

    def _new_ids(self, count: int) -> list[str]:
        return _ID_CLOCK.ids(count)

    @staticmethod
    def _resolve(conn: sqlite3.Connection, customer_id: str) -> str:
        """The live customer for ``customer_id`` (following a merge); ``NotFound`` if none."""
        if not isinstance(customer_id, str):
            raise NotFound(f"customer {customer_id!r} not found")
        row = conn.execute("SELECT merged_into FROM customers WHERE id = ?", (customer_id,)).fetchone()
        if row is None:
            raise NotFound(f"customer {customer_id} not found")
        return customer_id if row[0] is None else str(row[0])

    @staticmethod
    def _identities_of(conn: sqlite3.Connection, customer_ids: Sequence[str]) -> dict[str, list[Identity]]:
        found: dict[str, list[Identity]] = {cid: [] for cid in customer_ids}
        for chunk in _chunks(list(customer_ids)):
            rows = conn.execute(
                f"SELECT customer_id, {_IDENTITY_COLUMNS} FROM identities "
                f"WHERE customer_id IN ({_marks(len(chunk))}) ORDER BY created_at, kind, value",
                tuple(chunk),
            ).fetchall()
            for row in rows:
                found[row[0]].append(row_identity(row[1:]))
        return found

    def _load_customers(self, conn: sqlite3.Connection, customer_ids: Sequence[str]) -> dict[str, Customer]:
        rows: list[Any] = []
        for chunk in _chunks(list(customer_ids)):
            rows += conn.execute(
                f"SELECT {_CUSTOMER_COLUMNS} FROM customers WHERE id IN ({_marks(len(chunk))})", tuple(chunk)
            ).fetchall()
        identities = self._identities_of(conn, [row[0] for row in rows])
        return {row[0]: _customer(row, identities[row[0]]) for row in rows}

    def _load_customer(self, conn: sqlite3.Connection, customer_id: str) -> Customer:
        row = conn.execute(
            f"SELECT {_CUSTOMER_COLUMNS} FROM customers WHERE id = ?", (customer_id,)
        ).fetchone()
        if row is None:
            raise NotFound(f"customer {customer_id} not found")
        return _customer(row, self._identities_of(conn, [customer_id])[customer_id])

    # --- profiles and identities ----------------------------------------------------------------

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
        now = self.clock()
        name = _check_field("display_name", display_name)
        checked = _check_fields(fields)
        attrs = _dumps(attributes or {}, "attributes")
        if customer_id is not None and (
            not isinstance(customer_id, str) or _CUSTOMER_ID.fullmatch(customer_id) is None
        ):
            raise InvalidInput("customer_id", "1-128 letters, digits and . _ : @ - (starting alphanumeric)")
        items = self._coerce_all(identities, source=source, now=now)
        cid = customer_id or self._new_id()
        return await self._run(
            self._create_customer,
            cid=cid,
            name=name,
            fields=checked,
            attrs=attrs,
            items=items,
            source=source,
            now=now,
        )

    def _coerce_all(
        self, identities: Iterable[Identity | tuple[IdentityKind | str, str]], *, source: str, now: float
    ) -> list[tuple[str, Identity]]:
        """Normalised identities with their field names, without repeats."""
        return [
            (field, row_identity(row))
            for field, row in self._identity_rows(identities, source=source, now=now)
        ]

    def _identity_rows(
        self, identities: Iterable[Identity | tuple[IdentityKind | str, str]], *, source: str, now: float
    ) -> list[tuple[str, IdentityRow]]:
        return _identity_rows(identities, self.default_region, source=source, now=now)

    def _create_customer(
        self,
        conn: sqlite3.Connection,
        *,
        cid: str,
        name: str,
        fields: dict[str, str],
        attrs: str,
        items: list[tuple[str, Identity]],
        source: str,
        now: float,
    ) -> Customer:
        with _transaction(conn):
            if conn.execute("SELECT 1 FROM customers WHERE id = ?", (cid,)).fetchone():
                raise Conflict(f"customer_id: customer {cid} already exists")
            conn.execute(
                "INSERT INTO customers (id, display_name, given_name, family_name, company, language, "
                "timezone, birthday, attributes, source, created_at, updated_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (cid, name, *(fields.get(f, "") for f in FIELDS), attrs, source, now, now),
            )
            self._index_names(conn, "id = ?", (cid,))
            for field, identity in items:
                self._put_identity(conn, cid, identity, field)
            return self._load_customer(conn, cid)

    def _put_identity(self, conn: sqlite3.Connection, cid: str, identity: Identity, field: str) -> Identity:
        """Give ``identity`` to ``cid`` (in the caller's transaction). Another holder is a
        ``Conflict`` unless this one says shared or every other holder does (then this one is
        stored shared too). ``shared`` is per holder: a number that is Alice's own mobile (not
        shared) and on Bob's profile as shared is Alice's first."""
        key = (identity.kind.value, identity.system, identity.value)
        holders = conn.execute(
            "SELECT customer_id, shared FROM identities WHERE kind = ? AND system = ? AND value = ?", key
        ).fetchall()
        others = [row for row in holders if row[0] != cid]
        shared = identity.shared
        if others:
            if not identity.shared and not all(row[1] for row in others):
                raise IdentityConflict(field, identity, [row[0] for row in others])
            shared = True
        row = conn.execute(
            "INSERT INTO identities (kind, system, value, customer_id, raw, label, extension, shared, "
            "verified, source, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (kind, system, value, customer_id) DO UPDATE SET "
            "label = CASE WHEN excluded.label <> '' THEN excluded.label ELSE label END, "
            "extension = CASE WHEN excluded.extension <> '' THEN excluded.extension ELSE extension END, "
            "shared = max(shared, excluded.shared), verified = max(verified, excluded.verified) "
            f"RETURNING {_IDENTITY_COLUMNS}",
            (
                *key,
                cid,
                identity.raw,
                identity.label,
                identity.extension,
                int(shared),
                int(identity.verified),
                identity.source,
                identity.created_at,
            ),
        ).fetchone()
        return row_identity(row)

    async def get_customer(self, customer_id: str) -> Customer:
        return await self._run(self._get_customer, customer_id)

    def _get_customer(self, conn: sqlite3.Connection, customer_id: str) -> Customer:
        with _transaction(conn, write=False):
            return self._load_customer(conn, self._resolve(conn, customer_id))

    async def update_customer(
        self, customer_id: str, *, attributes: Mapping[str, Any] | None = None, **fields: str
    ) -> Customer:
        """Set the given fields; ``attributes`` is a patch (keys set, a ``None`` value deletes)."""
        checked = _check_fields(fields)
        patch = _dumps(attributes, "attributes") if attributes is not None else None
        return await self._run(self._update_customer, customer_id, checked, patch, self.clock())

    def _update_customer(
        self,
        conn: sqlite3.Connection,
        customer_id: str,
        fields: dict[str, str],
        patch: str | None,
        now: float,
    ) -> Customer:
        with _transaction(conn):
            cid = self._resolve(conn, customer_id)
            sets = [f"{name} = ?" for name in fields]  # names checked against FIELDS
            params: list[Any] = list(fields.values())
            if patch is not None:
                sets.append("attributes = json_patch(attributes, ?)")
                params.append(patch)
            sets.append("updated_at = ?")
            params += [now, cid]
            conn.execute(f"UPDATE customers SET {', '.join(sets)} WHERE id = ?", params)
            return self._load_customer(conn, cid)

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
    ) -> Identity:
        now = self.clock()
        identity = normalise_identity(
            kind,
            value,
            system=system,
            region=self.default_region,
            field="identity",
            label=label,
            shared=shared,
            source=source,
            created_at=now,
        )
        return await self._run(self._add_identity, customer_id, identity, now)

    def _add_identity(
        self, conn: sqlite3.Connection, customer_id: str, identity: Identity, now: float
    ) -> Identity:
        with _transaction(conn):
            cid = self._resolve(conn, customer_id)
            stored = self._put_identity(conn, cid, identity, "identity")
            conn.execute("UPDATE customers SET updated_at = ? WHERE id = ?", (now, cid))
            return stored

    async def remove_identity(
        self, customer_id: str, kind: IdentityKind | str, value: str, system: str = ""
    ) -> None:
        identity = normalise_identity(kind, value, system=system, region=self.default_region)
        await self._run(self._remove_identity, customer_id, identity, self.clock())

    def _remove_identity(
        self, conn: sqlite3.Connection, customer_id: str, identity: Identity, now: float
    ) -> None:
        with _transaction(conn):
            cid = self._resolve(conn, customer_id)
            gone = conn.execute(
                "DELETE FROM identities WHERE kind = ? AND system = ? AND value = ? AND customer_id = ?",
                (identity.kind.value, identity.system, identity.value, cid),
            ).rowcount
            if not gone:
                raise NotFound(f"customer {cid} has no {identity.kind.value} {identity.value}")
            conn.execute("UPDATE customers SET updated_at = ? WHERE id = ?", (now, cid))

    # --- lookups ---------------------------------------------------------------------------------

    async def lookup(self, kind: IdentityKind | str, value: str, *, system: str = "") -> list[Candidate]:
        parsed, kind_system = parse_kind(kind)
        system = (system or kind_system).strip().lower()
        if parsed is IdentityKind.PHONE:
            return await self.lookup_phone(value)
        if parsed is IdentityKind.EXTERNAL and system == "key":
            # NewCustomer.key lives in its own column; it answers as an external id of system "key".
            key = value.strip() if isinstance(value, str) else ""
            return await self._run(self._lookup_key, key, self.clock())
        identity = normalise_identity(parsed, value, system=system, region=self.default_region, field="value")
        return await self._run(self._lookup, identity, "", self.clock())

    async def lookup_phone(self, raw: str, *, region: str | None = None) -> list[Candidate]:
        if is_anonymous(raw):
            return []
        phone = normalise_phone(raw, (region or self.default_region).upper(), field="number")
        identity = Identity(kind=IdentityKind.PHONE, value=phone.e164, raw=raw, extension=phone.extension)
        reader = self._reader
        if reader is None:
            return await self._run(self._lookup, identity, phone.extension, self.clock())
        try:
            return self._lookup(reader, identity, phone.extension, self.clock())
        except sqlite3.Error as exc:
            raise _storage_error(self.path, exc) from exc

    def _lookup_key(self, conn: sqlite3.Connection, key: str, now: float) -> list[Candidate]:
        with _transaction(conn, write=False):
            row = conn.execute(
                "SELECT coalesce(merged_into, id) FROM customers WHERE import_key = ?", (key,)
            ).fetchone()
            if row is None:
                return []
            customer = self._load_customer(conn, row[0])
            return [Candidate(customer=customer, score=100.0, reasons=(f"import key {key}",))]

    def _lookup(
        self, conn: sqlite3.Connection, identity: Identity, extension: str, now: float
    ) -> list[Candidate]:
        # One statement (one snapshot, no BEGIN/COMMIT round trips): every holder's row, its last
        # contact and all its identities, one output row per identity of a holder.
        holders: dict[str, tuple[Any, ...]] = {}
        identities: dict[str, list[Identity]] = {}
        for row in conn.execute(_LOOKUP_SQL, (identity.kind.value, identity.system, identity.value)):
            cid = row[0]
            if cid not in holders:
                holders[cid] = row
                identities[cid] = []
            identities[cid].append(row_identity(row[20:]))
        if not holders:
            return []
        customers = {cid: _customer(row[8:20], identities[cid]) for cid, row in holders.items()}
        rows = [row[:8] for row in holders.values()]
        what = "number" if identity.kind is IdentityKind.PHONE else identity.kind.value
        exact = f"exact {identity.kind.value} {identity.value}"
        if identity.system:
            exact += f" ({identity.system})"
        owners = sum(1 for row in rows if not row[1])  # holders not marked shared
        ranked: list[tuple[float, float, float, str, Candidate]] = []
        for cid, shared, label, verified, own_extension, created_at, last_at, last_channel in rows:
            score = 100.0
            reasons = [exact]
            if shared:
                score -= 30
                reasons.append(
                    f"shared {what} ({len(rows)} customers)" if len(rows) > 1 else f"shared {what}"
                )
            elif owners > 1:
                score -= 10
                reasons.append(f"{what} also on {len(rows) - 1} other profile(s): possible duplicate")
            elif len(rows) > 1:
                reasons.append(f"own {what}, shared by {len(rows) - 1} other profile(s)")
            lowered = label.lower()
            if lowered in _PERSONAL_LABELS:
                score += 5
                reasons.append(f"labelled {label}")
            elif lowered in _SHARED_LABELS:
                score -= 5
                reasons.append(f"labelled {label}")
            elif label:
                reasons.append(f"labelled {label}")
            if verified:
                score += 2
                reasons.append("verified")
            if extension and own_extension == extension:
                score += 3
                reasons.append(f"extension {extension} matches")
            if last_at is not None:
                # Recency breaks ties within the rules above, never overrides them: (0, 1].
                score += 1 / (1 + max(0.0, now - last_at) / 86400)
                reasons.append(f"last {last_channel} {_ago(now - last_at)}")
            else:
                reasons.append("no interaction yet")
            candidate = Candidate(customer=customers[cid], score=round(score, 4), reasons=tuple(reasons))
            ranked.append((-score, -(last_at or 0.0), created_at, cid, candidate))
        ranked.sort(key=lambda item: item[:4])
        return [item[4] for item in ranked]

    async def search(self, query: str, *, limit: int = 20) -> list[Customer]:
        text = query.strip() if isinstance(query, str) else ""
        if not text or limit <= 0:
            return []
        phone: str | None = None
        digits = re.sub(r"[\s().\-/+]", "", text)
        if digits.isdigit() and len(digits) >= 6:
            try:
                phone = normalise_phone(text, self.default_region).e164
            except InvalidInput:
                phone = None
        return await self._run(self._search, text, phone, digits if digits.isdigit() else "", limit)

    def _search(
        self, conn: sqlite3.Connection, text: str, phone: str | None, digits: str, limit: int
    ) -> list[Customer]:
        found: list[str] = []

        def add(rows: Iterable[Sequence[Any]]) -> None:
            for row in rows:
                if row[0] is not None and row[0] not in found:
                    found.append(row[0])

        live = "SELECT coalesce(c.merged_into, c.id) FROM customers AS c"
        with _transaction(conn, write=False):
            if phone:
                add(
                    conn.execute(
                        "SELECT customer_id FROM identities "
                        "WHERE kind = 'phone' AND system = '' AND value = ?",
                        (phone,),
                    )
                )
            if digits and len(found) < limit:
                # A fragment of a number: a scan of the phone identities (the PK's 'phone' range).
                add(
                    conn.execute(
                        "SELECT customer_id FROM identities WHERE kind = 'phone' AND system = '' "
                        "AND value LIKE ? LIMIT ?",
                        (f"%{digits}%", limit),
                    )
                )
            lowered = text.lower()
            if len(found) < limit and not digits:
                # Email by prefix (an index range); a domain ("@acme.com", "acme.com") by a scan
                # of the email identities, only when the query gives no local part.
                add(
                    conn.execute(
                        "SELECT customer_id FROM identities WHERE kind = 'email' AND system = '' "
                        "AND value >= ? AND value < ? LIMIT ?",
                        (lowered, lowered + "\U0010ffff", limit),
                    )
                )
                domain = lowered.startswith("@") or ("." in lowered and "@" not in lowered)
                if len(found) < limit and domain:
                    add(
                        conn.execute(
                            "SELECT customer_id FROM identities WHERE kind = 'email' AND system = '' "
                            "AND value LIKE ? ESCAPE '\\' LIMIT ?",
                            (f"%{_like_escape(lowered)}%", limit),
                        )
                    )
            if len(found) < limit and not digits:
                match = _fts_query(text)
                if match:
                    add(
                        conn.execute(
                            f"{live} JOIN customers_fts AS f ON f.rowid = c.pk "
                            "WHERE customers_fts MATCH ? ORDER BY f.rank LIMIT ?",
                            (match, limit * 2),
                        )
                    )
            if not found and not digits:
                # Scripts without word breaks (CJK names): a plain substring scan as a last resort.
                pattern = f"%{_like_escape(text)}%"
                add(
                    conn.execute(
                        f"{live} WHERE c.merged_into IS NULL AND (c.display_name LIKE ?1 ESCAPE '\\' "
                        "OR c.company LIKE ?1 ESCAPE '\\' OR c.family_name LIKE ?1 ESCAPE '\\' "
                        "OR c.given_name LIKE ?1 ESCAPE '\\') LIMIT ?2",
                        (pattern, limit),
                    )
                )
            ids = found[:limit]
            customers = self._load_customers(conn, ids)
        return [customers[cid] for cid in ids if cid in customers]

    async def merge(self, keep_id: str, merge_id: str, *, actor: str = "") -> Customer:
        return await self._run(self._merge, keep_id, merge_id, actor, self.clock())

    def _merge(
        self, conn: sqlite3.Connection, keep_id: str, merge_id: str, actor: str, now: float
    ) -> Customer:
        with _transaction(conn):
            rows = {
                row[0]: row
                for row in conn.execute(
                    f"SELECT {_CUSTOMER_COLUMNS} FROM customers WHERE id IN (?, ?)", (keep_id, merge_id)
                )
            }
            for cid in (keep_id, merge_id):
                if cid not in rows:
                    raise NotFound(f"customer {cid} not found")
            if keep_id == merge_id:
                raise Conflict(f"cannot merge customer {keep_id} into itself")
            for cid in (keep_id, merge_id):
                if rows[cid][11] is not None:
                    raise Conflict(f"customer {cid} was already merged into {rows[cid][11]}")
            keep, gone = rows[keep_id], rows[merge_id]
            moved: dict[str, int] = {}
            args = (keep_id, merge_id)
            moved["identities"] = conn.execute(
                "UPDATE OR IGNORE identities SET customer_id = ? WHERE customer_id = ?", args
            ).rowcount
            # What is left were identities both held: keep's copy stays.
            conn.execute("DELETE FROM identities WHERE customer_id = ?", (merge_id,))
            moved["interactions"] = conn.execute(
                "UPDATE interactions SET customer_id = ? WHERE customer_id = ?", args
            ).rowcount
            moved["notes"] = conn.execute(
                "UPDATE notes SET customer_id = ? WHERE customer_id = ?", args
            ).rowcount
            # Consent: a "no" from either profile wins; keep's quiet hours, else merge's.
            conn.execute(
                "INSERT INTO channel_permissions (customer_id, channel, allowed, updated_at) "
                "SELECT ?, channel, allowed, updated_at FROM channel_permissions WHERE customer_id = ? "
                "ON CONFLICT (customer_id, channel) DO UPDATE SET "
                "allowed = min(allowed, excluded.allowed), updated_at = max(updated_at, excluded.updated_at)",
                args,
            )
            conn.execute("DELETE FROM channel_permissions WHERE customer_id = ?", (merge_id,))
            conn.execute(
                "INSERT OR IGNORE INTO quiet_hours (customer_id, start_time, end_time, updated_at) "
                "SELECT ?, start_time, end_time, updated_at FROM quiet_hours WHERE customer_id = ?",
                args,
            )
            conn.execute("DELETE FROM quiet_hours WHERE customer_id = ?", (merge_id,))
            moved["do_not_call"] = conn.execute(
                "UPDATE OR IGNORE do_not_call SET target = ? WHERE scope = 'customer' AND target = ?", args
            ).rowcount
            conn.execute("DELETE FROM do_not_call WHERE scope = 'customer' AND target = ?", (merge_id,))
            moved["segments"] = conn.execute(
                "UPDATE OR IGNORE segment_members SET customer_id = ? WHERE customer_id = ?", args
            ).rowcount
            conn.execute("DELETE FROM segment_members WHERE customer_id = ?", (merge_id,))
            conn.execute(
                "INSERT OR IGNORE INTO customer_values (customer_id, score, recency_days, frequency, "
                "monetary, source, explanation, computed_at) SELECT ?, score, recency_days, frequency, "
                "monetary, source, explanation, computed_at FROM customer_values WHERE customer_id = ?",
                args,
            )
            conn.execute("DELETE FROM customer_values WHERE customer_id = ?", (merge_id,))
            # Profile fields: keep's, with merge's filling the blanks; attributes likewise.
            fill = {name: gone[2 + i] for i, name in enumerate(FIELDS) if not keep[2 + i] and gone[2 + i]}
            attributes = {**_loads(gone[8]), **_loads(keep[8])}
            sets = "".join(f"{name} = ?, " for name in fill)
            conn.execute(
                f"UPDATE customers SET {sets}attributes = ?, updated_at = ? WHERE id = ?",
                (
                    *fill.values(),
                    json.dumps(attributes, separators=(",", ":"), ensure_ascii=False),
                    now,
                    keep_id,
                ),
            )
            conn.execute(
                "UPDATE customers SET merged_into = ?, updated_at = ? WHERE id = ? OR merged_into = ?",
                (keep_id, now, merge_id, merge_id),
            )
            conn.execute(
                "INSERT INTO merges (keep_id, merge_id, at, actor, moved) VALUES (?, ?, ?, ?, ?)",
                (keep_id, merge_id, now, actor, json.dumps(moved)),
            )
            log.info("customer %s merged into %s by %s: %s", merge_id, keep_id, actor or "-", moved)
            return self._load_customer(conn, keep_id)

    async def duplicate_identities(self, *, limit: int = 1000) -> list[tuple[Identity, tuple[str, ...]]]:
        """Identities that more than one holder has *not* marked shared (a number on two profiles
        as each one's own: the same person twice, most likely); the holders are all listed."""
        return await self._run(self._duplicate_identities, limit)

    def _duplicate_identities(
        self, conn: sqlite3.Connection, limit: int
    ) -> list[tuple[Identity, tuple[str, ...]]]:
        rows = conn.execute(
            "SELECT kind, system, value, group_concat(customer_id, ' ') FROM identities "
            "GROUP BY kind, system, value HAVING sum(shared = 0) > 1 "
            "ORDER BY kind, system, value LIMIT ?",
            (limit,),
        ).fetchall()
        return [
            (Identity(kind=IdentityKind(kind), value=value, system=system), tuple(sorted(holders.split(" "))))
            for kind, system, value, holders in rows
        ]

    # --- batches ---------------------------------------------------------------------------------

    async def create_customers(self, batch: Sequence[NewCustomer]) -> BatchResult:
        now = self.clock()
        rows: list[_Row] = []
        rejected: list[tuple[int, str]] = []
        for index, item in enumerate(batch):
            try:
                rows.append(_check_row(index, item, now, self.default_region))
            except CustomerError as exc:
                rejected.append((index, str(exc)))
            if index % 256 == 255:
                # ~25 us a row: let pops and the bus through between slices of a large batch.
                await asyncio.sleep(0)
        return await self.create_prepared(_Prepared.of_rows(rows, rejected, now))

    def batch_preparer(self) -> Callable[[Sequence[NewCustomer]], object]:
        return functools.partial(_prepare, self.default_region, self.clock())

    def plain_preparer(self, source: str) -> PlainPreparer:
        return functools.partial(_prepare_plain, source, self.clock())

    async def identity_filter(self, *, expected: int, max_stored: int) -> IdentityFilter | None:
        return await self._run(self._identity_filter, expected, max_stored)

    def _identity_filter(
        self, conn: sqlite3.Connection, expected: int, max_stored: int
    ) -> IdentityFilter | None:
        with _transaction(conn, write=False):
            version = conn.execute("PRAGMA data_version").fetchone()[0]
            # Counted up to the limit only: a small import into a large store reads little.
            stored = conn.execute(
                "SELECT count(*) FROM (SELECT 1 FROM identities LIMIT ?)", (max_stored + 1,)
            ).fetchone()[0]
            if stored > max_stored:
                return None
            seen = IdentityFilter(stored + max(0, expected), secrets.token_hex(8))
            add = seen.add
            for key in conn.execute("SELECT kind, system, value FROM identities"):
                add(key)
        self._filter_token = seen.token
        self._filter_marks = (version, conn.total_changes)
        return seen

    def _trusted_checks(self, conn: sqlite3.Connection, prepared: _Prepared) -> set[IdentityKey] | None:
        """The batch's ``checks`` if they can be trusted: made with the filter this store seeded,
        and nobody but these batches wrote since (another connection's commit changes
        ``data_version``, a write through this one ``total_changes``). Else None, and the filter
        is dropped for good: every later batch looks up all its identities' holders."""
        if prepared.checks is None or prepared.token is None or prepared.token != self._filter_token:
            return None
        marks = (conn.execute("PRAGMA data_version").fetchone()[0], conn.total_changes)
        if marks != self._filter_marks:
            log.info(
                "customer store %s: written by another writer during an import: every identity's "
                "holders are looked up from now on",
                self.path,
            )
            self._filter_token = None
            return None
        return prepared.checks

    def _filter_written(self, conn: sqlite3.Connection) -> None:
        """This batch's writes are ones the filter knows of (its worker marked their keys)."""
        if self._filter_token is not None:
            self._filter_marks = (self._filter_marks[0], conn.total_changes)

    async def create_prepared(self, prepared: object) -> BatchResult:
        if not isinstance(prepared, _Prepared):
            # What the base class's default preparer returns: the batch itself.
            return await self.create_customers(cast("Sequence[NewCustomer]", prepared))
        rejected = prepared.rejected
        if not prepared.indexes:
            return BatchResult(rejected=tuple(rejected))
        result = await self._run(self._create_customers, prepared)
        return BatchResult(
            created=result.created,
            updated=result.updated,
            rejected=tuple(sorted(rejected + list(result.rejected))),
            duplicates=result.duplicates,
        )

    def _create_customers(self, conn: sqlite3.Connection, prepared: _Prepared) -> BatchResult:
        """Store the batch's rows: a row whose key exists (stored, or earlier in the batch)
        updates that profile, the others become the profiles their rows were prepared as."""
        customers = prepared.customers
        with _transaction(conn):
            checks = self._trusted_checks(conn, prepared)
            # Keys already stored (a re-run) or repeated within the batch update one profile.
            keys = [customer[10] for customer in customers if customer[10] is not None]
            known: dict[str, str] = {}
            for chunk in _chunks(keys):
                for key, cid in conn.execute(
                    "SELECT import_key, coalesce(merged_into, id) FROM customers "
                    f"WHERE import_key IN ({_marks(len(chunk))})",
                    tuple(chunk),
                ):
                    known[key] = cid
            if not known and len(set(keys)) == len(keys):
                # An import's common case: every row a new profile, as prepared.
                ids = [customer[0] for customer in customers]
                identities = prepared.identities
                holders = self._holders(conn, identities, checks)
                self._insert_customers(conn, list(customers))
                conn.executemany(_IDENTITY_INSERT, identities)
                if prepared.values is not None:
                    self._insert_values(conn, [value for value in prepared.values if value is not None])
                duplicates = self._duplicates(
                    prepared.indexes, prepared.counts, identities, ids, holders, only=checks
                )
                self._filter_written(conn)
                return BatchResult(created=tuple(ids), duplicates=tuple(duplicates))
            result = self._merge_rows(conn, prepared.rows(), known, prepared.now)
            self._filter_written(conn)
            return result

    def _merge_rows(
        self, conn: sqlite3.Connection, rows: list[_Row], known: dict[str, str], now: float
    ) -> BatchResult:
        """``_create_customers`` when keys exist already or repeat within the batch."""
        created: list[str] = []
        updated: dict[str, None] = {}  # ordered set
        ids: list[str] = []
        existing: list[bool] = []
        for row in rows:
            key, new_id = row[1], row[2][0]
            if key is not None and key in known:
                ids.append(known[key])
                existing.append(True)
            else:
                if key is not None:
                    known[key] = new_id
                ids.append(new_id)
                existing.append(False)
        # Other holders of the batch's identities, stored or earlier in this batch.
        holders = self._holders(conn, [identity for row in rows for identity in row[4]])
        new_customers: list[tuple[Any, ...]] = []
        pending: set[str] = set()  # created, not yet inserted
        fresh: set[str] = set()  # created by this batch
        new_identities: list[tuple[Any, ...]] = []
        values: list[tuple[Any, ...]] = []
        for (_, _, customer, attributes, identity_rows, value), cid, stored in zip(
            rows, ids, existing, strict=True
        ):
            if stored:
                if cid in pending:
                    # The key came earlier in this batch: that row must be stored first.
                    self._insert_customers(conn, new_customers)
                    pending.clear()
                elif cid not in fresh:
                    updated[cid] = None
                update = _update_of(customer)
                sets = "".join(f"{name} = ?, " for name in update)  # names checked
                conn.execute(
                    f"UPDATE customers SET {sets}attributes = json_patch(attributes, ?), updated_at = ? "
                    "WHERE id = ?",
                    (*update.values(), attributes, now, cid),
                )
                new_identities += [(*identity[:-1], cid) for identity in identity_rows]
                if value is not None:
                    values.append((cid, *value[1:]))
            else:
                created.append(cid)
                fresh.add(cid)
                pending.add(cid)
                new_customers.append(customer)
                new_identities += identity_rows
                if value is not None:
                    values.append(value)
        # Customers before their identities and values (foreign keys).
        self._insert_customers(conn, new_customers)
        conn.executemany(_IDENTITY_INSERT, new_identities)
        self._insert_values(conn, values)
        duplicates = self._duplicates(
            [row[0] for row in rows], [len(row[4]) for row in rows], new_identities, ids, holders
        )
        return BatchResult(created=tuple(created), updated=tuple(updated), duplicates=tuple(duplicates))

    @staticmethod
    def _duplicates(
        indexes: list[int],
        counts: list[int],
        identities: list[tuple[Any, ...]],
        ids: list[str],
        holders: dict[tuple[str, str, str], list[str]],
        *,
        only: set[IdentityKey] | None = None,
    ) -> list[tuple[int, Identity, tuple[str, ...]]]:
        """(index, identity, other holders) of the rows' identities (``counts[n]`` of
        ``identities`` for row ``n``, whose profile is ``ids[n]``) that other profiles hold,
        stored (``holders``) or earlier in the batch; not for identities marked shared. With
        ``only``, the other keys are known to be new and held once in the batch: skipped."""
        duplicates: list[tuple[int, Identity, tuple[str, ...]]] = []
        first: dict[tuple[str, str, str], str] = {}  # the batch's first holder, when no other
        if only is not None and not only:
            return duplicates
        at = 0
        for index, count, cid in zip(indexes, counts, ids, strict=True):
            for identity in identities[at : at + count]:
                key = identity[:3]
                if only is not None and key not in only:
                    continue
                owners = holders.get(key)
                if owners is None:
                    held = first.get(key)
                    if held is None:
                        first[key] = cid
                        continue
                    owners = holders[key] = [held]
                others = tuple(owner for owner in owners if owner != cid)
                if others and not identity[6]:  # not marked shared
                    duplicates.append((index, row_identity(identity), others))
                if cid not in owners:
                    owners.append(cid)
            at += count
        return duplicates

    @staticmethod
    def _insert_values(conn: sqlite3.Connection, values: list[tuple[Any, ...]]) -> None:
        if values:
            conn.executemany(
                "INSERT INTO customer_values (customer_id, score, recency_days, frequency, monetary, source, "
                "explanation, computed_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (customer_id) DO UPDATE SET score = excluded.score, source = excluded.source, "
                "explanation = excluded.explanation, computed_at = excluded.computed_at",
                values,
            )

    @staticmethod
    def _index_names(conn: sqlite3.Connection, where: str, params: tuple[Any, ...]) -> None:
        """Index new customers' names for ``search`` (the FTS table has no insert trigger)."""
        conn.execute(
            "INSERT INTO customers_fts (rowid, display_name, given_name, family_name, company) "
            f"SELECT pk, display_name, given_name, family_name, company FROM customers WHERE {where}",
            params,
        )

    @classmethod
    def _insert_customers(cls, conn: sqlite3.Connection, rows: list[tuple[Any, ...]]) -> None:
        """Insert and index (names) new customers; empties ``rows``."""
        if not rows:
            return
        # New rows get larger pks (INTEGER PRIMARY KEY takes max + 1): those are the ones to index,
        # before any later statement of the batch may update them (the FTS update trigger).
        last_pk = conn.execute("SELECT coalesce(max(pk), 0) FROM customers").fetchone()[0]
        conn.executemany(
            "INSERT INTO customers (id, display_name, given_name, family_name, company, language, "
            "timezone, birthday, attributes, source, import_key, created_at, updated_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
        cls._index_names(conn, "pk > ?", (last_pk,))
        rows.clear()

    @staticmethod
    def _holders(
        conn: sqlite3.Connection, identities: list[tuple[Any, ...]], only: set[IdentityKey] | None = None
    ) -> dict[tuple[str, str, str], list[str]]:
        """Stored holders of the (kind, system, value) of ``identities`` (with ``only``: of those
        keys), one IN list per (kind, system)."""
        by_scope: dict[tuple[str, str], set[str]] = {}
        keys: Iterable[Sequence[Any]] = identities if only is None else only
        for kind, system, value, *_ in keys:
            scope = by_scope.get((kind, system))
            if scope is None:
                scope = by_scope[kind, system] = set()
            scope.add(value)
        holders: dict[tuple[str, str, str], list[str]] = {}
        for (kind, system), values in by_scope.items():
            for chunk in _chunks(sorted(values)):
                for value, cid in conn.execute(
                    "SELECT value, customer_id FROM identities WHERE kind = ? AND system = ? "
                    f"AND value IN ({_marks(len(chunk))})",
                    (kind, system, *chunk),
                ):
                    holders.setdefault((kind, system, value), []).append(cid)
        return holders

    # --- timeline and notes ---------------------------------------------------------------------

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
        kind = _channel(channel)
        if direction not in _DIRECTIONS:
            raise InvalidInput(
                "direction", f"expected inbound, outbound, internal or empty, got {direction!r}"
            )
        now = self.clock()
        when = now if at is None else at
        if not isinstance(when, int | float) or math.isnan(when):
            raise InvalidInput("at", f"expected epoch seconds, got {at!r}")
        payload = _dumps(data or {}, "data")
        if not isinstance(external_id, str) or not isinstance(source, str):
            raise InvalidInput("external_id", "source and external_id are strings")
        return await self._run(
            self._append,
            customer_id=customer_id,
            channel=kind.value,
            at=float(when),
            direction=direction,
            summary=summary,
            data=payload,
            source=source,
            external_id=external_id.strip(),
            now=now,
        )

    def _append(
        self,
        conn: sqlite3.Connection,
        *,
        customer_id: str,
        channel: str,
        at: float,
        direction: str,
        summary: str,
        data: str,
        source: str,
        external_id: str,
        now: float,
    ) -> Interaction:
        with _transaction(conn):
            cid = self._resolve(conn, customer_id)
            if external_id:
                row = conn.execute(
                    f"SELECT {_INTERACTION_COLUMNS} FROM interactions WHERE source = ? AND external_id = ?",
                    (source, external_id),
                ).fetchone()
                if row is not None:
                    stored = _interaction(row)
                    if stored.customer_id != cid:
                        raise Conflict(
                            f"external_id: {source or '-'}:{external_id} is already on the timeline of "
                            f"customer {stored.customer_id}, not {cid}"
                        )
                    return stored
            row = conn.execute(
                "INSERT INTO interactions (customer_id, channel, at, direction, summary, data, source, "
                "external_id, recorded_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
                f"RETURNING {_INTERACTION_COLUMNS}",
                (cid, channel, at, direction, summary, data, source, external_id, now),
            ).fetchone()
            return _interaction(row)

    async def timeline(
        self,
        customer_id: str,
        *,
        channels: Sequence[Channel | str] | None = None,
        before: float | None = None,
        limit: int = 50,
    ) -> list[Interaction]:
        names = [_channel(c, f"channels[{i}]").value for i, c in enumerate(channels)] if channels else []
        return await self._run(self._timeline, customer_id, names, before, limit)

    def _timeline(
        self,
        conn: sqlite3.Connection,
        customer_id: str,
        channels: list[str],
        before: float | None,
        limit: int,
    ) -> list[Interaction]:
        with _transaction(conn, write=False):
            cid = self._resolve(conn, customer_id)
            where = ["customer_id = ?"]
            params: list[Any] = [cid]
            if channels:
                where.append(f"channel IN ({_marks(len(channels))})")
                params += channels
            if before is not None:
                where.append("at < ?")
                params.append(before)
            params.append(limit)
            rows = conn.execute(
                f"SELECT {_INTERACTION_COLUMNS} FROM interactions WHERE {' AND '.join(where)} "
                "ORDER BY at DESC, id DESC LIMIT ?",
                params,
            ).fetchall()
        return [_interaction(row) for row in rows]

    async def latest_by_channel(self, customer_id: str, per_channel: int = 3) -> dict[str, list[Interaction]]:
        return await self._run(self._latest_by_channel, customer_id, per_channel)

    def _latest_by_channel(
        self, conn: sqlite3.Connection, customer_id: str, per_channel: int
    ) -> dict[str, list[Interaction]]:
        with _transaction(conn, write=False):
            return self._latest(conn, self._resolve(conn, customer_id), per_channel)

    @staticmethod
    def _latest(conn: sqlite3.Connection, cid: str, per_channel: int) -> dict[str, list[Interaction]]:
        latest: dict[str, list[Interaction]] = {}
        for row in conn.execute(_LATEST_SQL, (cid, per_channel)):
            latest.setdefault(row[2], []).append(_interaction(row))
        return latest

    async def add_note(self, customer_id: str, author: str, text: str, *, pinned: bool = False) -> Note:
        if not isinstance(author, str) or not author.strip():
            raise InvalidInput("author", "empty")
        if not isinstance(text, str) or not text.strip():
            raise InvalidInput("text", "empty")
        return await self._run(
            self._add_note,
            customer_id=customer_id,
            author=author.strip(),
            text=text,
            pinned=pinned,
            now=self.clock(),
        )

    def _add_note(
        self, conn: sqlite3.Connection, *, customer_id: str, author: str, text: str, pinned: bool, now: float
    ) -> Note:
        with _transaction(conn):
            cid = self._resolve(conn, customer_id)
            row = conn.execute(
                f"INSERT INTO notes (customer_id, at, author, text, pinned) VALUES (?, ?, ?, ?, ?) "
                f"RETURNING {_NOTE_COLUMNS}",
                (cid, now, author, text, int(pinned)),
            ).fetchone()
            return _note(row)

    async def notes(self, customer_id: str, *, limit: int = 20) -> list[Note]:
        """Pinned notes first, then the newest."""
        return await self._run(self._notes_of, customer_id, limit)

    def _notes_of(self, conn: sqlite3.Connection, customer_id: str, limit: int) -> list[Note]:
        with _transaction(conn, write=False):
            return self._notes(conn, self._resolve(conn, customer_id), limit)

    @staticmethod
    def _notes(conn: sqlite3.Connection, cid: str, limit: int) -> list[Note]:
        rows = conn.execute(
            f"SELECT {_NOTE_COLUMNS} FROM notes WHERE customer_id = ? "
            "ORDER BY pinned DESC, at DESC, id DESC LIMIT ?",
            (cid, limit),
        ).fetchall()
        return [_note(row) for row in rows]

    # --- consent --------------------------------------------------------------------------------

    async def consent(self, customer_id: str) -> Consent:
        return await self._run(self._consent_of, customer_id, self.clock())

    def _consent_of(self, conn: sqlite3.Connection, customer_id: str, now: float) -> Consent:
        with _transaction(conn, write=False):
            return self._consent(conn, self._resolve(conn, customer_id), now)

    @staticmethod
    def _consent(conn: sqlite3.Connection, cid: str, now: float) -> Consent:
        """The customer's consent; ``do_not_call`` holds the entries in force at ``now``: the
        customer's own and those of the numbers the customer holds."""
        updated = 0.0
        channels: dict[str, bool] = {}
        for channel, allowed, at in conn.execute(
            "SELECT channel, allowed, updated_at FROM channel_permissions WHERE customer_id = ?", (cid,)
        ):
            channels[channel] = bool(allowed)
            updated = max(updated, at)
        quiet = conn.execute(
            "SELECT start_time, end_time, updated_at FROM quiet_hours WHERE customer_id = ?", (cid,)
        ).fetchone()
        if quiet is not None:
            updated = max(updated, quiet[2])
        entries = [
            _dnc(row)
            for row in conn.execute(
                "SELECT scope, target, source, at, until, reason FROM do_not_call "
                "WHERE scope = 'customer' AND target = ?1 AND (until IS NULL OR until > ?2) "
                "UNION ALL SELECT d.scope, d.target, d.source, d.at, d.until, d.reason "
                "FROM identities AS i JOIN do_not_call AS d ON d.scope = 'number' AND d.target = i.value "
                "WHERE i.customer_id = ?1 AND i.kind = 'phone' AND (d.until IS NULL OR d.until > ?2)",
                (cid, now),
            )
        ]
        for entry in entries:
            updated = max(updated, entry.at)
        return Consent(
            customer_id=cid,
            channels=channels,
            quiet_hours=(quiet[0], quiet[1]) if quiet is not None else None,
            do_not_call=tuple(sorted(entries, key=lambda e: (e.at, e.scope.value, e.target, e.source))),
            updated_at=updated,
        )

    async def set_channel_permission(
        self, customer_id: str, channel: Channel | str, allowed: bool
    ) -> Consent:
        name = _channel(channel).value
        if not isinstance(allowed, bool):
            raise InvalidInput("allowed", f"expected true or false, got {allowed!r}")
        return await self._run(self._set_permission, customer_id, name, allowed, self.clock())

    def _set_permission(
        self, conn: sqlite3.Connection, customer_id: str, channel: str, allowed: bool, now: float
    ) -> Consent:
        with _transaction(conn):
            cid = self._resolve(conn, customer_id)
            conn.execute(
                "INSERT INTO channel_permissions (customer_id, channel, allowed, updated_at) "
                "VALUES (?, ?, ?, ?) "
                "ON CONFLICT (customer_id, channel) DO UPDATE SET allowed = excluded.allowed, "
                "updated_at = excluded.updated_at",
                (cid, channel, int(allowed), now),
            )
            return self._consent(conn, cid, now)

    async def set_quiet_hours(self, customer_id: str, start: str | None, end: str | None) -> Consent:
        """Local ``start``-``end`` (``"21:00"``, ``"08:00"``: across midnight); both ``None`` clears."""
        span: tuple[str, str] | None = None
        if start is None and end is None:
            span = None
        elif start is None or end is None:
            raise InvalidInput("quiet_hours", "give both start and end, or neither to clear them")
        else:
            span = policy.validate_span((start, end), "quiet_hours")
        return await self._run(self._set_quiet_hours, customer_id, span, self.clock())

    def _set_quiet_hours(
        self, conn: sqlite3.Connection, customer_id: str, span: tuple[str, str] | None, now: float
    ) -> Consent:
        with _transaction(conn):
            cid = self._resolve(conn, customer_id)
            if span is None:
                conn.execute("DELETE FROM quiet_hours WHERE customer_id = ?", (cid,))
            else:
                conn.execute(
                    "INSERT INTO quiet_hours (customer_id, start_time, end_time, updated_at) "
                    "VALUES (?, ?, ?, ?) "
                    "ON CONFLICT (customer_id) DO UPDATE SET start_time = excluded.start_time, "
                    "end_time = excluded.end_time, updated_at = excluded.updated_at",
                    (cid, *span, now),
                )
            return self._consent(conn, cid, now)

    def _dnc_target(self, scope: ConsentScope, target: str) -> str:
        if scope is ConsentScope.NUMBER:
            return normalise_phone(target, self.default_region, field="target").e164
        if not isinstance(target, str) or not target.strip():
            raise InvalidInput("target", "empty customer id")
        return target.strip()

    async def add_do_not_call(
        self,
        scope: ConsentScope | str,
        target: str,
        *,
        source: str,
        reason: str = "",
        until: float | None = None,
    ) -> None:
        """One entry per (scope, target, source); adding it again replaces it."""
        parsed = _scope(scope)
        normal = self._dnc_target(parsed, target)
        if not isinstance(source, str) or not source.strip():
            raise InvalidInput("source", "say where the do-not-call comes from (customer request, registry)")
        if until is not None and not isinstance(until, int | float):
            raise InvalidInput("until", f"expected epoch seconds, got {until!r}")
        await self._run(
            self._add_dnc,
            scope=parsed,
            target=normal,
            source=source.strip(),
            reason=reason,
            until=until,
            now=self.clock(),
        )

    def _add_dnc(
        self,
        conn: sqlite3.Connection,
        *,
        scope: ConsentScope,
        target: str,
        source: str,
        reason: str,
        until: float | None,
        now: float,
    ) -> None:
        with _transaction(conn):
            if scope is ConsentScope.CUSTOMER:
                target = self._resolve(conn, target)
            conn.execute(
                "INSERT INTO do_not_call (scope, target, source, at, until, reason) "
                "VALUES (?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (scope, target, source) DO UPDATE SET at = excluded.at, until = excluded.until, "
                "reason = excluded.reason",
                (scope.value, target, source, now, until, reason),
            )

    async def remove_do_not_call(self, scope: ConsentScope | str, target: str) -> None:
        """Removes every entry (all sources) for the target; ``NotFound`` if there is none."""
        parsed = _scope(scope)
        await self._run(self._remove_dnc, parsed, self._dnc_target(parsed, target))

    def _remove_dnc(self, conn: sqlite3.Connection, scope: ConsentScope, target: str) -> None:
        with _transaction(conn):
            if scope is ConsentScope.CUSTOMER:
                target = self._resolve(conn, target)
            gone = conn.execute(
                "DELETE FROM do_not_call WHERE scope = ? AND target = ?", (scope.value, target)
            ).rowcount
            if not gone:
                raise NotFound(f"no do-not-call entry for {scope.value} {target}")

    async def may_call(
        self,
        number: str,
        now: float,
        *,
        purpose: str = "service",
        window: tuple[str, str] = ("08:00", "21:00"),
    ) -> CallPermission:
        e164 = normalise_phone(number, self.default_region, field="number").e164
        holders, number_dnc = await self._run(self._call_facts, e164)
        return policy.decide(
            e164,
            now,
            holders=holders,
            number_dnc=number_dnc,
            number_zones=phone_time_zones(e164),
            purpose=purpose,
            window=window,
        )

    def _call_facts(self, conn: sqlite3.Connection, e164: str) -> tuple[list[policy.Holder], list[DoNotCall]]:
        with _transaction(conn, write=False):
            number_dnc = [
                _dnc(row)
                for row in conn.execute(
                    "SELECT scope, target, source, at, until, reason FROM do_not_call "
                    "WHERE scope = 'number' AND target = ?",
                    (e164,),
                )
            ]
            holders: list[policy.Holder] = []
            for cid, name, zone in conn.execute(
                "SELECT c.id, c.display_name, c.timezone FROM identities AS i "
                "JOIN customers AS c ON c.id = i.customer_id "
                "WHERE i.kind = 'phone' AND i.system = '' AND i.value = ? AND c.merged_into IS NULL "
                "ORDER BY c.id",
                (e164,),
            ).fetchall():
                entries = tuple(
                    _dnc(row)
                    for row in conn.execute(
                        "SELECT scope, target, source, at, until, reason FROM do_not_call "
                        "WHERE scope = 'customer' AND target = ?",
                        (cid,),
                    )
                )
                permission = conn.execute(
                    "SELECT allowed FROM channel_permissions WHERE customer_id = ? AND channel = 'call'",
                    (cid,),
                ).fetchone()
                quiet = conn.execute(
                    "SELECT start_time, end_time FROM quiet_hours WHERE customer_id = ?", (cid,)
                ).fetchone()
                holders.append(
                    policy.Holder(
                        customer_id=cid,
                        display_name=name,
                        timezone=zone,
                        do_not_call=entries,
                        call_permission=None if permission is None else bool(permission[0]),
                        quiet_hours=(quiet[0], quiet[1]) if quiet is not None else None,
                    )
                )
        return holders, number_dnc

    # --- value and segments ---------------------------------------------------------------------

    async def set_value(self, customer_id: str, value: Value) -> None:
        _check_value(value)
        await self._run(self._set_value, customer_id, value)

    def _set_value(self, conn: sqlite3.Connection, customer_id: str, value: Value) -> None:
        with _transaction(conn):
            cid = self._resolve(conn, customer_id)
            self._upsert_values(conn, [(cid, value)])

    @staticmethod
    def _upsert_values(conn: sqlite3.Connection, values: Sequence[tuple[str, Value]]) -> None:
        conn.executemany(
            "INSERT INTO customer_values (customer_id, score, recency_days, frequency, monetary, source, "
            "explanation, computed_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (customer_id) DO UPDATE SET score = excluded.score, "
            "recency_days = excluded.recency_days, frequency = excluded.frequency, "
            "monetary = excluded.monetary, source = excluded.source, explanation = excluded.explanation, "
            "computed_at = excluded.computed_at",
            [
                (
                    cid,
                    v.score,
                    v.recency_days,
                    v.frequency,
                    v.monetary,
                    v.source,
                    v.explanation,
                    v.computed_at,
                )
                for cid, v in values
            ],
        )

    async def value(self, customer_id: str) -> Value | None:
        return await self._run(self._value_of, customer_id)

    def _value_of(self, conn: sqlite3.Connection, customer_id: str) -> Value | None:
        with _transaction(conn, write=False):
            return self._value(conn, self._resolve(conn, customer_id))

    @staticmethod
    def _value(conn: sqlite3.Connection, cid: str) -> Value | None:
        row = conn.execute(
            f"SELECT {_VALUE_COLUMNS} FROM customer_values WHERE customer_id = ?", (cid,)
        ).fetchone()
        return _value(row) if row is not None else None

    async def iter_facts(self, *, batch: int = 5000) -> AsyncIterator[list[CustomerFacts]]:
        if batch <= 0:
            raise InvalidInput("batch", "must be positive")
        after = ""
        while True:
            facts = await self._run(self._facts, after, batch)
            if not facts:
                return
            yield facts
            after = facts[-1].customer_id

    @staticmethod
    def _facts(conn: sqlite3.Connection, after: str, batch: int) -> list[CustomerFacts]:
        with _transaction(conn, write=False):
            customers = conn.execute(
                "SELECT id, created_at, birthday, attributes FROM customers "
                "WHERE id > ? AND merged_into IS NULL ORDER BY id LIMIT ?",
                (after, batch),
            ).fetchall()
            if not customers:
                return []
            first, last = customers[0][0], customers[-1][0]
            contacts = {row[0]: row for row in conn.execute(_FACTS_SQL, (first, last))}
            imported = dict(
                conn.execute(
                    "SELECT customer_id, score FROM customer_values "
                    "WHERE customer_id BETWEEN ? AND ? AND source LIKE 'import%'",
                    (first, last),
                ).fetchall()
            )
        facts: list[CustomerFacts] = []
        for cid, created_at, birthday, attributes in customers:
            row = contacts.get(cid)
            if row is None:
                facts.append(
                    CustomerFacts(
                        customer_id=cid,
                        created_at=created_at,
                        birthday=birthday,
                        attributes=_loads(attributes),
                        imported_value=imported.get(cid),
                    )
                )
                continue
            counts = {channel: n for channel, n in zip(_CHANNEL_NAMES, row[2:10], strict=True) if n}
            facts.append(
                CustomerFacts(
                    customer_id=cid,
                    created_at=created_at,
                    birthday=birthday,
                    attributes=_loads(attributes),
                    last_contact_at=row[1],
                    contacts_by_channel=counts,
                    orders=counts.get("order", 0),
                    spend=row[11] or 0.0,
                    last_order_at=row[10],
                    imported_value=imported.get(cid),
                )
            )
        return facts

    async def set_values(self, values: Iterable[tuple[str, Value]]) -> int:
        items = list(values)
        for index, (_, value) in enumerate(items):
            _check_value(value, f"values[{index}]")
        return await self._run(self._set_values, items)

    def _set_values(self, conn: sqlite3.Connection, items: list[tuple[str, Value]]) -> int:
        with _transaction(conn):
            live = self._live_ids(conn, [cid for cid, _ in items], "values")
            self._upsert_values(conn, [(live[cid], value) for cid, value in items])
        return len(items)

    @staticmethod
    def _live_ids(conn: sqlite3.Connection, customer_ids: Sequence[str], field: str) -> dict[str, str]:
        """Each id's live customer (following a merge); ``NotFound`` naming the first unknown id,
        before any write (not as a foreign-key error)."""
        wanted = list(dict.fromkeys(customer_ids))
        live: dict[str, str] = {}
        for chunk in _chunks(wanted):
            for cid, survivor in conn.execute(
                f"SELECT id, coalesce(merged_into, id) FROM customers WHERE id IN ({_marks(len(chunk))})",
                tuple(chunk),
            ):
                live[cid] = survivor
            for cid in chunk:
                if cid not in live:
                    raise NotFound(f"{field}: customer {cid!r} not found")
        return live

    async def set_segments(self, segment: str, customer_ids: Iterable[str], computed_at: float) -> int:
        if not isinstance(segment, str) or not segment.strip():
            raise InvalidInput("segment", "empty segment name")
        return await self._run(self._set_segments, segment.strip(), list(customer_ids), computed_at)

    def _set_segments(
        self, conn: sqlite3.Connection, segment: str, customer_ids: list[str], computed_at: float
    ) -> int:
        with _transaction(conn):
            live = self._live_ids(conn, customer_ids, "customer_ids")
            members = list(dict.fromkeys(live[cid] for cid in customer_ids))
            conn.execute("DELETE FROM segment_members WHERE segment = ?", (segment,))
            conn.executemany(
                "INSERT INTO segment_members (segment, customer_id, computed_at) VALUES (?, ?, ?)",
                [(segment, cid, computed_at) for cid in members],
            )
        return len(members)

    async def segment_names(self) -> list[str]:
        return await self._run(self._segment_names)

    @staticmethod
    def _segment_names(conn: sqlite3.Connection) -> list[str]:
        with _transaction(conn, write=False):
            return [row[0] for row in conn.execute("SELECT DISTINCT segment FROM segment_members ORDER BY 1")]

    async def segments_of(self, customer_id: str) -> list[str]:
        return await self._run(self._segments_of, customer_id)

    def _segments_of(self, conn: sqlite3.Connection, customer_id: str) -> list[str]:
        with _transaction(conn, write=False):
            return self._segments(conn, self._resolve(conn, customer_id))

    @staticmethod
    def _segments(conn: sqlite3.Connection, cid: str) -> list[str]:
        return [
            row[0]
            for row in conn.execute(
                "SELECT segment FROM segment_members WHERE customer_id = ? ORDER BY segment", (cid,)
            )
        ]

    async def segment_members(self, segment: str, *, limit: int | None = None) -> list[str]:
        return await self._run(self._segment_members, segment, -1 if limit is None else limit)

    @staticmethod
    def _segment_members(conn: sqlite3.Connection, segment: str, limit: int) -> list[str]:
        return [
            row[0]
            for row in conn.execute(
                "SELECT customer_id FROM segment_members WHERE segment = ? ORDER BY customer_id LIMIT ?",
                (segment, limit),
            )
        ]

    # --- the pop ------------------------------------------------------------------------------

    async def profile(self, customer_id: str, *, per_channel: int = 3, notes: int = 5) -> Profile:
        reader = self._reader
        if reader is None:
            return await self._run(self._profile, customer_id, per_channel, notes, self.clock())
        try:
            return self._profile(reader, customer_id, per_channel, notes, self.clock())
        except sqlite3.Error as exc:
            raise _storage_error(self.path, exc) from exc

    def _profile(
        self, conn: sqlite3.Connection, customer_id: str, per_channel: int, notes: int, now: float
    ) -> Profile:
        with _transaction(conn, write=False):
            cid = self._resolve(conn, customer_id)
            customer = self._load_customer(conn, cid)
            latest = self._latest(conn, cid, per_channel)
            return Profile(
                customer=customer,
                latest={channel: tuple(items) for channel, items in latest.items()},
                notes=tuple(self._notes(conn, cid, notes)),
                consent=self._consent(conn, cid, now),
                value=self._value(conn, cid),
                segments=tuple(self._segments(conn, cid)),
            )


def _like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _fts_query(text: str) -> str:
    """Every word as a quoted prefix term (``"mül"* "acme"*``): no FTS5 syntax from the user."""
    words = re.findall(r"\w+", text)
    return " ".join(f'"{word}"*' for word in words[:8])
