"""Customer import: CSV and JSON lines into the store, in batches, resumable after any crash.

The pieces, each usable alone: ``load_mapping`` reads the YAML column mapping (errors name the
file, key and line); ``read_records`` turns a file into numbered records (or the reason one could
not be read); ``RowConverter`` turns a record into a ``NewCustomer`` or a reject reason;
``import_file`` drives them against a ``CustomerStore`` and is what the CLI and the bench share.

Rules an import keeps:

Rule 1. Every record of the input ends in exactly one place: stored (created or updated) or in
  the reject file, with its row number, the reason and the raw text.
Rule 2. A row number is the line of the file where the record starts (1-based; a CSV header is
  line 1), i.e. the row a spreadsheet shows, and what ``sed -n Np`` prints.
Rule 3. Every stored row has a key (``NewCustomer.key``): ``<source>:<key column>`` when the
  mapping names a key column, else ``<source>#<hash of the row's values>``. The store updates the
  profile that has the key instead of creating another, so re-running an import creates nothing
  new. A hashed key follows the row's content: an edited row is a new row (map a key column when
  the feeding system has ids).
Rule 4. The checkpoint is written after the batch it covers is committed and after that batch's
  rejects are on disk (fsync, then an atomic rename). It holds the byte offset of the first record
  after that batch and the size of the reject file at that moment. A killed import (even SIGKILL)
  has lost nothing the checkpoint counts; ``resume`` truncates the reject file back to the
  recorded size and reads on from the offset. Rows committed after the last checkpoint are read
  again and land on their keys (rule 3).
Rule 5. A record that cannot be parsed (bad CSV quoting, a line that is not a JSON object, bytes
  that are not in the file's encoding) is rejected alone: a quoted field left open swallows at most
  ``max_record_lines`` lines, after which reading restarts on the line after the one it opened on.
Rule 6. Every stored identity that another profile holds is reported as a duplicate, whether the
  holder was stored before the import or came from an earlier row of it. To spare the store a
  holder look-up per identity, an ``IdentityFilter`` (the stored keys at the start, then every
  key of every row in the file's order, kept where the rows are read) marks the identities that
  may have a holder; the store looks up those only, and trusts the marks only while nobody else
  has written to it since the filter was made (else it looks up every identity again, so a
  holder added by a live service during the import is still found). Same findings either way.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import dataclasses
import gc
import hashlib
import io
import json
import multiprocessing
import os
import re
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import IO, Any, Literal

import jsonschema
import phonenumbers
import yaml

from customers.identities import (
    _prefix_rules,
    is_anonymous,
    normalise_email,
    normalise_phone,
    normalise_value,
)
from customers.model import Identity, IdentityKind, NewCustomer
from customers.store import (
    PLAIN_FIELDS,
    CustomerError,
    CustomerStore,
    IdentityFilter,
    IdentityHead,
    InvalidInput,
    PlainCustomer,
    PlainPreparer,
    new_customer,
)

__all__ = [
    "AttributeColumn",
    "CheckpointMismatch",
    "DuplicateFinding",
    "IdentityColumn",
    "ImportFailed",
    "ImportMapping",
    "ImportProgress",
    "ImportReport",
    "MappingError",
    "Record",
    "RowConverter",
    "import_file",
    "infer_mapping",
    "load_mapping",
    "read_records",
]

Format = Literal["csv", "jsonl"]
STATE_VERSION = 1
HEAD_BYTES = 1 << 20
"""The checkpoint fingerprints the input by size, mtime and a SHA-256 of its first MiB."""


class ImportFailed(CustomerError):
    """The import cannot start or go on (not a bad row: those are rejected and reported)."""

    code = "import-failed"


class MappingError(ImportFailed):
    """The mapping is invalid or names a column the file does not have."""

    code = "bad-mapping"


class CheckpointMismatch(ImportFailed):
    """``resume`` was asked but the checkpoint belongs to another file, mapping or database."""

    code = "checkpoint-mismatch"


# --- the mapping ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class IdentityColumn:
    """A column holding one kind of identity (several per cell when ``split`` is set)."""

    column: str
    label: str = ""
    system: str = ""
    """For external ids and IM handles: the system or network (``shop``, ``whatsapp``)."""
    shared: bool = False
    split: str = ""


@dataclass(frozen=True, slots=True)
class AttributeColumn:
    name: str
    column: str
    type: str = "auto"
    """``auto`` (text from CSV, the JSON value from JSON lines), ``str``, ``int``, ``float``,
    ``bool`` or ``json`` (a JSON document in a CSV cell)."""


@dataclass(frozen=True, slots=True)
class ImportMapping:
    """Which column feeds which field. Column names are CSV header names or JSON keys (a dotted
    path such as ``contact.email`` reaches into nested objects)."""

    format: Format | None = None
    delimiter: str = ","
    encoding: str = "utf-8"
    source: str | None = None
    region: str | None = None
    """ISO country national numbers are read in; default: the store's settings."""
    key: str | None = None
    display_name: tuple[str, ...] = ()
    """Joined with spaces; empty: given and family name, else the company."""
    given_name: str | None = None
    family_name: str | None = None
    company: str | None = None
    language: str | None = None
    timezone: str | None = None
    birthday: str | None = None
    birthday_format: str | None = None
    """``strptime`` format (``%d/%m/%Y``); without it ``YYYY-MM-DD`` or ``--MM-DD``."""
    phones: tuple[IdentityColumn, ...] = ()
    emails: tuple[IdentityColumn, ...] = ()
    members: tuple[IdentityColumn, ...] = ()
    external: tuple[IdentityColumn, ...] = ()
    im: tuple[IdentityColumn, ...] = ()
    attributes: tuple[AttributeColumn, ...] = ()
    value: str | None = None
    max_record_lines: int = 100
    origin: str = ""
    """Where it was read (for messages); empty for a mapping built in code or inferred."""
    lines: Mapping[str, int] = field(default_factory=dict, compare=False, repr=False)

    def columns(self) -> list[tuple[str, str]]:
        """Every (mapping key, column) the mapping reads, for checking against a CSV header."""
        found: list[tuple[str, str]] = []
        for name in ("key", "given_name", "family_name", "company", "language", "timezone", "birthday"):
            column = getattr(self, name)
            if column:
                found.append((name, column))
        if self.value:
            found.append(("value", self.value))
        found += [(f"display_name[{i}]", c) for i, c in enumerate(self.display_name)]
        for group in ("phones", "emails", "members"):
            found += [(f"{group}[{i}]", spec.column) for i, spec in enumerate(getattr(self, group))]
        found += [(f"external.{spec.system}", spec.column) for spec in self.external]
        found += [(f"im.{spec.system}", spec.column) for spec in self.im]
        found += [(f"attributes.{spec.name}", spec.column) for spec in self.attributes]
        return found

    def fingerprint(self) -> str:
        """Changes when the mapping would store something else (a resume must not mix two)."""
        data = dataclasses.asdict(self)
        data.pop("origin")
        data.pop("lines")
        return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def where(self, key: str) -> str:
        line = self.lines.get(re.split(r"[\[.]", key, maxsplit=1)[0])
        if self.origin and line:
            return f"{self.origin}:{line}"
        return self.origin or "mapping"


_COLUMN = {"type": "string", "minLength": 1}
_IDENTITY_ITEM = {
    "oneOf": [
        _COLUMN,
        {
            "type": "object",
            "additionalProperties": False,
            "required": ["column"],
            "properties": {
                "column": _COLUMN,
                "label": {"type": "string"},
                "shared": {"type": "boolean"},
                "split": {"type": "string", "minLength": 1},
            },
        },
    ]
}
_IDENTITY_LIST = {"oneOf": [_IDENTITY_ITEM, {"type": "array", "items": _IDENTITY_ITEM}]}
_SYSTEM_MAP = {"type": "object", "additionalProperties": _IDENTITY_ITEM}
MAPPING_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "format": {"enum": ["csv", "jsonl"]},
        "delimiter": {"type": "string", "minLength": 1, "maxLength": 1},
        "encoding": {"type": "string", "minLength": 1},
        "source": {"type": "string", "pattern": "^[^:#\\s]+$"},
        "region": {"type": "string", "pattern": "^[A-Z]{2}$"},
        "key": _COLUMN,
        "display_name": {"oneOf": [_COLUMN, {"type": "array", "items": _COLUMN, "minItems": 1}]},
        "given_name": _COLUMN,
        "family_name": _COLUMN,
        "company": _COLUMN,
        "language": _COLUMN,
        "timezone": _COLUMN,
        "birthday": {
            "oneOf": [
                _COLUMN,
                {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["column"],
                    "properties": {"column": _COLUMN, "format": {"type": "string", "minLength": 2}},
                },
            ]
        },
        "phones": _IDENTITY_LIST,
        "emails": _IDENTITY_LIST,
        "member": _IDENTITY_LIST,
        "external": _SYSTEM_MAP,
        "im": _SYSTEM_MAP,
        "attributes": {
            "oneOf": [
                {"type": "array", "items": _COLUMN},
                {
                    "type": "object",
                    "additionalProperties": {
                        "oneOf": [
                            _COLUMN,
                            {
                                "type": "object",
                                "additionalProperties": False,
                                "required": ["column"],
                                "properties": {
                                    "column": _COLUMN,
                                    "type": {"enum": ["auto", "str", "int", "float", "bool", "json"]},
                                },
                            },
                        ]
                    },
                },
            ]
        },
        "value": _COLUMN,
        "max_record_lines": {"type": "integer", "minimum": 1},
    },
}


def load_mapping(path: str | Path) -> ImportMapping:
    """Read and validate a mapping file; every error names the file, the line and the key."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise MappingError(f"{file}: cannot read the mapping: {exc.strerror or exc}") from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise MappingError(f"{file}: not valid YAML: {exc}") from None
    lines: dict[str, int] = {}
    if isinstance(node, yaml.MappingNode):
        for key_node, _ in node.value:
            lines[str(key_node.value)] = key_node.start_mark.line + 1
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise MappingError(f"{file}: the mapping must be a YAML mapping of field: column")
    return mapping_from_dict(data, origin=str(file), lines=lines)


def mapping_from_dict(
    data: Mapping[str, Any], *, origin: str = "", lines: Mapping[str, int] | None = None
) -> ImportMapping:
    lines = dict(lines or {})
    problems = []
    validator = jsonschema.Draft202012Validator(MAPPING_SCHEMA)
    for error in sorted(validator.iter_errors(dict(data)), key=lambda e: list(map(str, e.absolute_path))):
        key = ".".join(str(p) for p in error.absolute_path)
        top = key.split(".")[0]
        where = f"{origin}:{lines[top]}" if origin and top in lines else (origin or "mapping")
        if error.validator == "additionalProperties" and not error.absolute_path:
            known = ", ".join(sorted(MAPPING_SCHEMA["properties"]))
            extra = ", ".join(sorted(set(error.instance) - set(MAPPING_SCHEMA["properties"])))
            problems.append(f"{where}: unknown key {extra}; expected one of {known}")
        elif error.validator == "oneOf":
            problems.append(f"{where}: {key}: {_describe_one_of(key)}")
        else:
            problems.append(f"{where}: {key or '(top level)'}: {error.message}")
    if problems:
        raise MappingError("invalid mapping:\n  " + "\n  ".join(problems))

    def identities(value: Any, *, system: str = "") -> tuple[IdentityColumn, ...]:
        items = value if isinstance(value, list) else [value]
        out = []
        for item in items:
            if isinstance(item, str):
                out.append(IdentityColumn(item, system=system))
            else:
                out.append(
                    IdentityColumn(
                        item["column"],
                        label=item.get("label", ""),
                        system=system,
                        shared=item.get("shared", False),
                        split=item.get("split", ""),
                    )
                )
        return tuple(out)

    attributes: list[AttributeColumn] = []
    raw_attributes = data.get("attributes", {})
    if isinstance(raw_attributes, list):
        attributes = [AttributeColumn(column, column) for column in raw_attributes]
    else:
        for name, spec in raw_attributes.items():
            if isinstance(spec, str):
                attributes.append(AttributeColumn(str(name), spec))
            else:
                attributes.append(AttributeColumn(str(name), spec["column"], spec.get("type", "auto")))
    birthday = data.get("birthday")
    display = data.get("display_name", ())
    return ImportMapping(
        format=data.get("format"),
        delimiter=data.get("delimiter", ","),
        encoding=data.get("encoding", "utf-8"),
        source=data.get("source"),
        region=data.get("region"),
        key=data.get("key"),
        display_name=(display,) if isinstance(display, str) else tuple(display),
        given_name=data.get("given_name"),
        family_name=data.get("family_name"),
        company=data.get("company"),
        language=data.get("language"),
        timezone=data.get("timezone"),
        birthday=birthday["column"] if isinstance(birthday, dict) else birthday,
        birthday_format=birthday.get("format") if isinstance(birthday, dict) else None,
        phones=identities(data["phones"]) if "phones" in data else (),
        emails=identities(data["emails"]) if "emails" in data else (),
        members=identities(data["member"]) if "member" in data else (),
        external=tuple(
            spec
            for system, item in data.get("external", {}).items()
            for spec in identities(item, system=str(system))
        ),
        im=tuple(
            spec
            for network, item in data.get("im", {}).items()
            for spec in identities(item, system=str(network))
        ),
        attributes=tuple(attributes),
        value=data.get("value"),
        max_record_lines=data.get("max_record_lines", 100),
        origin=origin,
        lines=lines,
    )


def _describe_one_of(key: str) -> str:
    top = key.partition(".")[0]
    if top in ("phones", "emails", "member"):
        return (
            "expected a column name, {column: NAME, label: ..., shared: ..., split: ...}, or a list of them"
        )
    if top in ("external", "im"):
        return "expected system: column (or system: {column: NAME, label: ...})"
    if top == "attributes":
        return (
            "expected name: column, name: {column: NAME, type: int|float|bool|str|json}, or a list of columns"
        )
    if top == "birthday":
        return "expected a column name or {column: NAME, format: '%d/%m/%Y'}"
    return "expected a column name or a list of column names"


# Header names understood without a mapping file (compared case-insensitively, with spaces and
# dashes read as underscores). Everything else becomes an attribute named after its column.
_ALIASES: dict[str, tuple[str, ...]] = {
    "key": ("key", "id", "customer_id", "customer_no", "customer_number"),
    "display_name": ("display_name", "name", "full_name"),
    "given_name": ("given_name", "first_name", "firstname"),
    "family_name": ("family_name", "last_name", "lastname", "surname"),
    "company": ("company", "organization", "organisation"),
    "language": ("language", "lang"),
    "timezone": ("timezone", "time_zone", "tz"),
    "birthday": ("birthday", "birth_date", "date_of_birth", "dob"),
    "value": ("value", "value_score"),
}
_PHONE_ALIASES = {
    "phone": "",
    "phone_number": "",
    "telephone": "",
    "tel": "",
    "mobile": "mobile",
    "cell": "mobile",
    "home_phone": "home",
    "work_phone": "work",
}
_EMAIL_ALIASES = ("email", "e_mail", "email_address", "mail")
_MEMBER_ALIASES = ("member", "member_id", "member_no", "loyalty_card")


def infer_mapping(columns: Sequence[str]) -> ImportMapping:
    """The mapping used without a mapping file, from a CSV header or a first JSON object's keys."""
    by_name = {re.sub(r"[\s\-]+", "_", column.strip().lower()): column for column in columns}
    used: set[str] = set()

    def pick(aliases: Sequence[str]) -> str | None:
        for alias in aliases:
            if alias in by_name:
                used.add(by_name[alias])
                return by_name[alias]
        return None

    picked = {target: pick(aliases) for target, aliases in _ALIASES.items()}
    phones = []
    for alias, label in _PHONE_ALIASES.items():
        if alias in by_name:
            used.add(by_name[alias])
            phones.append(IdentityColumn(by_name[alias], label=label))
    emails = []
    for alias in _EMAIL_ALIASES:
        if alias in by_name:
            used.add(by_name[alias])
            emails.append(IdentityColumn(by_name[alias]))
    member = pick(_MEMBER_ALIASES)
    display = picked.pop("display_name")
    return ImportMapping(
        key=picked["key"],
        display_name=(display,) if display else (),
        given_name=picked["given_name"],
        family_name=picked["family_name"],
        company=picked["company"],
        language=picked["language"],
        timezone=picked["timezone"],
        birthday=picked["birthday"],
        value=picked["value"],
        phones=tuple(phones),
        emails=tuple(emails),
        members=(IdentityColumn(member),) if member else (),
        attributes=tuple(AttributeColumn(c, c) for c in columns if c not in used and c.strip()),
    )


# --- reading records ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Record:
    """One record of the input: its row (rule 2), its values, or why it could not be read."""

    row: int
    values: Mapping[str, Any] | None
    raw: str
    """The record's text as it was in the file, without the final line break."""
    problem: str = ""
    """Why it could not be read (``values`` is None then)."""
    fields: tuple[str, ...] = ()
    """CSV: the parsed fields, in file order (what a hashed key is computed from)."""


class _Runaway(Exception):
    """A record grew past ``max_record_lines``: a quoted field was left open."""


class _LineFeed:
    """Hands the csv module one decoded line at a time, remembering the lines of the current
    record and the byte offset, so a bad record can be rejected alone and reading resumed."""

    __slots__ = ("_file", "_pending", "bad_encoding", "encoding", "limit", "lines", "offset")

    def __init__(self, file: IO[bytes], encoding: str, limit: int, offset: int) -> None:
        self._file = file
        self._pending: deque[bytes] = deque()
        self.encoding = encoding
        self.limit = limit
        self.lines: list[bytes] = []
        self.offset = offset
        self.bad_encoding = False

    def __iter__(self) -> _LineFeed:
        return self

    def __next__(self) -> str:
        if self._pending:
            data = self._pending.popleft()
        else:
            data = self._file.readline()
            if not data:
                raise StopIteration
        self.lines.append(data)
        self.offset += len(data)
        if len(self.lines) > self.limit:
            raise _Runaway
        try:
            return data.decode(self.encoding)
        except UnicodeDecodeError:
            self.bad_encoding = True
            return data.decode(self.encoding, "replace")

    def start_record(self) -> None:
        self.lines = []
        self.bad_encoding = False

    def push_back(self, lines: Sequence[bytes]) -> None:
        """Read these lines again (they follow the line a bad record started on)."""
        self._pending.extendleft(reversed(lines))
        self.offset -= sum(len(line) for line in lines)


def _raw(lines: Sequence[bytes], encoding: str) -> str:
    return b"".join(lines).decode(encoding, "replace").rstrip("\r\n")


class RecordReader:
    """Numbered records of a CSV or JSON-lines file, from the start or from a byte offset.

    ``offset`` and ``line`` are where the next record starts: what a checkpoint stores.
    """

    def __init__(
        self,
        file: IO[bytes],
        fmt: Format,
        *,
        delimiter: str = ",",
        encoding: str = "utf-8",
        max_record_lines: int = 100,
    ) -> None:
        self._file = file
        self.format: Format = fmt
        self.delimiter = delimiter
        self.encoding = encoding
        self.max_record_lines = max_record_lines
        self.header: tuple[str, ...] = ()
        self.header_offset = 0
        self.line = 1
        self.offset = 0

    def read_header(self) -> tuple[str, ...]:
        """CSV: read the header line (an empty file has none). JSON lines: nothing to read."""
        if self.format != "csv":
            return ()
        head = self._file.read(3)
        self.offset = 3 if head == b"\xef\xbb\xbf" else 0
        self._file.seek(self.offset)
        feed = _LineFeed(self._file, self.encoding, self.max_record_lines, self.offset)
        reader = csv.reader(feed, delimiter=self.delimiter, strict=True)
        while True:
            feed.start_record()
            try:
                fields = next(reader, None)
            except (csv.Error, _Runaway) as exc:
                raise ImportFailed(f"line {self.line}: cannot read the CSV header: {exc}") from None
            self.line += len(feed.lines)
            if fields is None:
                break
            if fields:
                if feed.bad_encoding:
                    raise ImportFailed(f"line {self.line - 1}: the header is not {self.encoding} text")
                self.header = tuple(name.strip() for name in fields)
                break
        self.offset = self.header_offset = feed.offset
        return self.header

    def seek(self, offset: int, line: int) -> None:
        self._file.seek(offset)
        self.offset, self.line = offset, line

    def __iter__(self) -> Iterator[Record]:
        self._file.seek(self.offset)
        if self.format == "csv":
            return self._csv_records()
        return self._json_records()

    def _csv_records(self) -> Iterator[Record]:
        header = self.header
        width = len(header)
        feed = _LineFeed(self._file, self.encoding, self.max_record_lines, self.offset)
        reader = csv.reader(feed, delimiter=self.delimiter, strict=True)
        while True:
            feed.start_record()
            row = self.line
            try:
                fields = next(reader, None)
            except (csv.Error, _Runaway) as exc:
                lines = feed.lines
                if isinstance(exc, _Runaway):
                    problem = (
                        f"a quoted field is still open after {self.max_record_lines} lines (a missing quote?)"
                    )
                else:
                    problem = f"malformed CSV: {exc}"
                    if len(lines) > 1:
                        problem += f" (in a record that starts here and runs {len(lines)} lines)"
                # Only the line the record started on is rejected; the lines the open quote
                # swallowed are read again as records of their own.
                feed.push_back(lines[1:])
                self.line += 1
                self.offset = feed.offset
                reader = csv.reader(feed, delimiter=self.delimiter, strict=True)
                yield Record(row, None, _raw(lines[:1], self.encoding), problem)
                continue
            self.line += len(feed.lines)
            self.offset = feed.offset
            if fields is None:
                return
            if not fields:
                continue  # a blank line
            lines = feed.lines
            if feed.bad_encoding:
                yield Record(row, None, _raw(lines, self.encoding), f"not {self.encoding} text")
                continue
            if len(fields) > width and any(fields[width:]):
                yield Record(
                    row,
                    None,
                    _raw(lines, self.encoding),
                    f"{len(fields)} fields but the header has {width} (an unquoted delimiter?)",
                )
                continue
            yield Record(
                row, dict(zip(header, fields, strict=False)), _raw(lines, self.encoding), "", tuple(fields)
            )

    def _json_records(self) -> Iterator[Record]:
        readline = self._file.readline
        while True:
            data = readline()
            if not data:
                return
            row = self.line
            self.line += 1
            self.offset += len(data)
            if not data.strip():
                continue
            try:
                text = data.decode(self.encoding)
            except UnicodeDecodeError:
                yield Record(row, None, _raw([data], self.encoding), f"not {self.encoding} text")
                continue
            try:
                value = json.loads(text)
            except json.JSONDecodeError as exc:
                yield Record(
                    row, None, text.rstrip("\r\n"), f"not valid JSON: {exc.msg} at column {exc.colno}"
                )
                continue
            if not isinstance(value, dict):
                kind = type(value).__name__.replace("NoneType", "null").replace("dict", "object")
                yield Record(row, None, text.rstrip("\r\n"), f"a JSON {kind}, not an object")
                continue
            yield Record(row, value, text.rstrip("\r\n"))


def read_records(
    path: str | Path, fmt: Format | None = None, mapping: ImportMapping | None = None
) -> list[Record]:
    """Every record of a (small) file: for tests and tools; ``import_file`` streams instead."""
    mapping = mapping or ImportMapping()
    with open(path, "rb") as file:
        reader = RecordReader(
            file,
            fmt or mapping.format or guess_format(path),
            delimiter=mapping.delimiter,
            encoding=mapping.encoding,
            max_record_lines=mapping.max_record_lines,
        )
        reader.read_header()
        return list(reader)


def guess_format(path: str | Path) -> Format:
    suffix = Path(path).suffix.lower()
    if suffix in (".jsonl", ".ndjson", ".json", ".jsonlines"):
        return "jsonl"
    return "csv"


# --- rows to customers ----------------------------------------------------------------------------

_BIRTHDAY_NO_YEAR = re.compile(r"--(\d\d)-(\d\d)")
_TIMEZONES: frozenset[str] | None = None


def _timezones() -> frozenset[str]:
    global _TIMEZONES
    if _TIMEZONES is None:
        import zoneinfo

        _TIMEZONES = frozenset(zoneinfo.available_timezones())
    return _TIMEZONES


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, int | float):
        return str(value)
    return json.dumps(value, ensure_ascii=False)


def _lookup(values: Mapping[str, Any], column: str) -> Any:
    value = values.get(column)
    if value is None and "." in column and column not in values:
        value = values
        for part in column.split("."):
            if not isinstance(value, Mapping):
                return None
            value = value.get(part)
    return value


_PLAIN_PHONE = re.compile(r"\+?[0-9 ().\-]+")
_PHONE_PUNCTUATION = str.maketrans("", "", " ().-+")
_POSSIBLE = (phonenumbers.ValidationResult.IS_POSSIBLE, phonenumbers.ValidationResult.IS_POSSIBLE_LOCAL_ONLY)


class PhoneReader:
    """Phones to E.164 as the store reads them (``customers.identities.normalise_phone``), and
    stricter in one way: a number without an area code (possible only locally) is refused, as no
    caller id would ever match it.

    ``phonenumbers.parse`` costs about 40 us a number, more than the rest of a row's import. The
    plain forms (digits and `` ().-``, with or without a leading ``+``) whose result does not
    depend on parse's prefix rules take a short cut: a ``+`` number whose national part starts
    with neither 0 nor the country's national prefix, and, in a NANP region, 10 digits or a 1
    and 10 digits. Anything else goes through ``parse``; tests check both paths agree.
    """

    def __init__(self, region: str) -> None:
        self.region = region
        self._nanp = phonenumbers.country_code_for_region(region) == 1
        self._prefixes: dict[int, re.Pattern[str] | Literal[False] | None] = {}
        self._verdicts: dict[tuple[int, int], int] = {}
        self._rules = _prefix_rules(region)

    def read(self, raw: str) -> tuple[str, str] | str | None:
        """``(e164, extension)``, the reason the text is not a phone number, or None for a
        caller-id placeholder (``unknown``, ``withheld``): no number rather than a bad one."""
        fast = self._read_plain(raw)
        if fast is not None:
            return fast
        if raw[:2] == "00":
            dialled = self._read_international(raw)
            if dialled is not None:
                return dialled
        if is_anonymous(raw):
            return None
        try:
            # The store's own reading (``00`` prefixes, ``tel:``, extensions): one truth.
            phone = normalise_phone(raw, self.region, field="phone")
        except InvalidInput as exc:
            return str(exc).removeprefix("phone: ")
        again = self._read_plain(phone.e164)
        if isinstance(again, str):
            return again.replace(repr(phone.e164), repr(raw))
        return phone.e164, phone.extension

    def _read_international(self, raw: str) -> tuple[str, str] | None:
        """A plain ``00`` form (``0044 20 7946 0958``) as ``normalise_phone`` reads it, when that
        is certain without ``parse``: in a region whose international prefix is ``00`` it is the
        ``+`` form; in another (US: ``011``) ``parse`` first reads the digits as a national number,
        which is refused when the region has no national prefix to strip from them and their length
        is impossible there, and then reads the ``+`` form. None: ask ``parse`` (also for numbers it
        refuses, so reasons stay the store's)."""
        if not _PLAIN_PHONE.fullmatch(raw) or "+" in raw:
            return None
        digits = raw.translate(_PHONE_PUNCTUATION)
        if len(digits) <= 4 or digits[:2] != "00" or digits[2] == "0":
            return None
        rules = self._rules
        if rules is None:
            return None
        code, prefix, for_parsing, international = rules
        idd = international.match(digits) if international is not None else None
        if idd is not None:
            if idd.end() != 2:
                return None
        else:
            national = (prefix and digits.startswith(prefix)) or (
                for_parsing is not None and for_parsing.match(digits) is not None
            )
            if national or self._verdict(code, len(digits)) in _POSSIBLE:
                return None
        read = self._read_plain("+" + digits[2:])
        return read if isinstance(read, tuple) else None

    def _verdict(self, code: int, length: int) -> int:
        """``is_possible_number_with_reason`` of a number of this country and national length:
        it reads nothing else (leading zeros count in the length)."""
        verdict = self._verdicts.get((code, length))
        if verdict is None:
            number = phonenumbers.PhoneNumber(country_code=code, national_number=int("1" * length))
            verdict = self._verdicts[code, length] = phonenumbers.is_possible_number_with_reason(number)
        return verdict

    def _read_plain(self, raw: str) -> tuple[str, str] | str | None:
        if not _PLAIN_PHONE.fullmatch(raw):
            return None
        digits = raw.translate(_PHONE_PUNCTUATION)
        if raw.lstrip().startswith("+"):
            if raw.count("+") != 1 or len(digits) < 4:
                return None
            for size in (1, 2, 3):
                code = int(digits[:size])
                if code in phonenumbers.COUNTRY_CODE_TO_REGION_CODE:
                    break
            else:
                return None
            national = digits[size:]
        elif self._nanp and "+" not in raw:
            code = 1
            if len(digits) == 10 and digits[0] in "23456789":
                national = digits
            elif len(digits) == 11 and digits[0] == "1" and digits[1] in "23456789":
                national = digits[1:]
            else:
                return None
        else:
            return None
        if not 2 <= len(national) <= 17 or national[0] == "0":
            return None
        prefix = self._national_prefix(code)
        if prefix is False or (prefix is not None and prefix.match(national)):
            return None
        # Whether a number is possible depends on its country and its length only.
        verdict = self._verdict(code, len(national))
        if verdict == phonenumbers.ValidationResult.IS_POSSIBLE:
            return f"+{code}{national}", ""
        if verdict == phonenumbers.ValidationResult.IS_POSSIBLE_LOCAL_ONLY:
            return f"{raw!r} has no area code (read as a {self.region} number)"
        return f"not a phone number: {raw!r} (wrong length for +{code})"

    def _national_prefix(self, code: int) -> re.Pattern[str] | Literal[False] | None:
        """The country's national-prefix-for-parsing pattern; False: no short cut for it."""
        if code not in self._prefixes:
            region = phonenumbers.region_code_for_country_code(code)
            metadata = None
            if region not in ("001", "ZZ"):
                metadata = phonenumbers.PhoneMetadata.metadata_for_region(region)
            if metadata is None:
                self._prefixes[code] = False
            else:
                pattern = metadata.national_prefix_for_parsing
                self._prefixes[code] = re.compile(pattern) if pattern else None
        return self._prefixes[code]


class RowConverter:
    """A record's values to a ``NewCustomer`` (or the reason it cannot be one), by a mapping."""

    def __init__(self, mapping: ImportMapping, *, source: str, region: str) -> None:
        self.mapping = mapping
        self.source = source
        self.origin = f"import:{source}"
        self.phones = PhoneReader(mapping.region or region)
        self._identity_specs: list[tuple[IdentityKind, IdentityColumn, str, int]] = [
            (kind, spec, spec.label.strip(), int(spec.shared))
            for kind, specs in (
                (IdentityKind.PHONE, mapping.phones),
                (IdentityKind.EMAIL, mapping.emails),
                (IdentityKind.MEMBER, mapping.members),
                (IdentityKind.EXTERNAL, mapping.external),
                (IdentityKind.IM, mapping.im),
            )
            for spec in specs
        ]
        self._simple = [
            (name, column)
            for name in ("given_name", "family_name", "company", "language")
            if (column := getattr(mapping, name))
        ]
        self._name_columns = [
            c for c in (*mapping.display_name, mapping.given_name, mapping.family_name, mapping.company) if c
        ]

    def convert(self, record: Record) -> NewCustomer | str:
        """The record as a ``NewCustomer``, or the reason it cannot be one."""
        plain = self.convert_plain(record)
        return plain if isinstance(plain, str) else new_customer(plain, self.origin)

    def convert_plain(self, record: Record) -> PlainCustomer | str:
        """The record as a ``PlainCustomer`` (every field checked, every identity in its stored
        form: what ``CustomerStore.plain_preparer`` trusts), or the reason it cannot be one."""
        values = record.values
        if values is None:
            return record.problem
        m = self.mapping
        get = values.get
        fields: dict[str, str] = {}
        for name, column in self._simple:
            value = get(column)
            text = value.strip() if value.__class__ is str else _text(_lookup(values, column))
            if text:
                fields[name] = text
        if m.display_name:
            display = " ".join(p for p in (_text(_lookup(values, c)) for c in m.display_name) if p)
        else:
            display = ""
        if not display:
            given, family = fields.get("given_name", ""), fields.get("family_name", "")
            display = f"{given} {family}" if given and family else given or family
            if not display:
                display = fields.get("company", "")
                if not display:
                    if self._name_columns:
                        return f"no name: {', '.join(self._name_columns)} empty"
                    return "no name: the mapping names no display_name, given_name, family_name or company"
        if m.key:
            key_value = _text(_lookup(values, m.key))
            if not key_value:
                return f"{m.key}: the key column is empty"
            key = f"{self.source}:{key_value}"
        else:
            key = f"{self.source}#{_row_hash(record)}"
        if m.timezone:
            zone = _text(_lookup(values, m.timezone))
            if zone:
                if zone not in _timezones():
                    return f"{m.timezone}: {zone!r} is not an IANA time zone (Europe/Berlin)"
                fields["timezone"] = zone
        if m.birthday:
            text = _text(_lookup(values, m.birthday))
            if text:
                birthday = _birthday(text, m.birthday_format)
                if birthday is None:
                    expected = m.birthday_format or "YYYY-MM-DD or --MM-DD"
                    return f"{m.birthday}: {text!r} is not a date ({expected})"
                fields["birthday"] = birthday
        heads: list[IdentityHead] = []
        for kind, spec, label, shared in self._identity_specs:
            value = get(spec.column)
            if value.__class__ is str and not spec.split:
                value = value.strip()
                if not value:
                    continue
                texts: list[str] = [value]
            else:
                texts = _cell_values(_lookup(values, spec.column), spec.split)
            for text in texts:
                head = self._identity(kind, spec, text, label, shared)
                if head.__class__ is str:
                    return f"{spec.column}: {head}"
                if head is not None:
                    heads.append(head)  # type: ignore[arg-type]
        attributes: dict[str, Any] = {}
        for attr in m.attributes:
            value = get(attr.column)
            if value is None or value == "":
                if value is None and "." in attr.column:
                    value = _lookup(values, attr.column)
                if value is None or value == "":
                    continue
            if attr.type == "auto":
                attributes[attr.name] = value.strip() if value.__class__ is str else value
                continue
            converted = _attribute(value, attr.type)
            if isinstance(converted, _Bad):
                return f"{attr.column}: {converted.reason}"
            attributes[attr.name] = converted
        score: float | None = None
        if m.value:
            text = _text(_lookup(values, m.value))
            if text:
                try:
                    score = float(text)
                except ValueError:
                    return f"{m.value}: value {text!r} is not a number"
                if not 0 <= score <= 100:
                    return f"{m.value}: value {text} is outside 0..100"
        get_field = fields.get
        return (
            key,
            display,
            tuple([get_field(name, "") for name in PLAIN_FIELDS]),
            attributes,
            tuple(heads),
            score,
        )

    def _identity(
        self, kind: IdentityKind, spec: IdentityColumn, text: str, label: str, shared: int
    ) -> IdentityHead | str | None:
        """The identity in its stored form, the reason it cannot be, or None (a caller-id
        placeholder)."""
        if kind is IdentityKind.PHONE:
            read = self.phones.read(text)
            if read is None or isinstance(read, str):
                return read
            e164, extension = read
            return ("phone", "", e164, text, label, extension, shared, 0)
        try:
            if kind is IdentityKind.EMAIL:
                return ("email", "", normalise_email(text, field="identity"), text, label, "", shared, 0)
            normal, system, extension = normalise_value(
                kind, text, spec.system, self.phones.region, "identity"
            )
        except InvalidInput as exc:
            return str(exc).partition(": ")[2]
        return (kind.value, system, normal, text, label, extension, shared, 0)


def _cell_values(value: Any, split: str) -> list[str]:
    if value is None or value == "":
        return []
    items = value if isinstance(value, list) else [value]
    texts = [_text(item) for item in items]
    if split:
        texts = [part.strip() for text in texts for part in text.split(split)]
    return [text for text in texts if text]


def _row_hash(record: Record) -> str:
    if record.fields:
        data = "\x1f".join(record.fields).encode()
    else:
        data = json.dumps(record.values, sort_keys=True, ensure_ascii=False).encode()
    return hashlib.blake2b(data, digest_size=10).hexdigest()


def _birthday(text: str, fmt: str | None) -> str | None:
    if fmt:
        try:
            parsed = datetime.strptime(text, fmt)
        except ValueError:
            return None
        if "%Y" in fmt or "%y" in fmt:
            return parsed.date().isoformat()
        return f"--{parsed.month:02d}-{parsed.day:02d}"
    match = _BIRTHDAY_NO_YEAR.fullmatch(text)
    if match:
        try:
            date(2000, int(match[1]), int(match[2]))  # a leap year: --02-29 is a birthday
        except ValueError:
            return None
        return text
    try:
        return date.fromisoformat(text).isoformat() if len(text) == 10 else None
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class _Bad:
    reason: str


_TRUE = {"1", "true", "yes", "y", "on", "x"}
_FALSE = {"0", "false", "no", "n", "off", ""}


def _attribute(value: Any, kind: str) -> Any:
    if kind == "auto":
        return value.strip() if isinstance(value, str) else value
    text = _text(value)
    try:
        if kind == "int":
            return int(text)
        if kind == "float":
            return float(text)
        if kind == "json":
            return json.loads(text) if isinstance(value, str) else value
    except ValueError:
        article = "an" if kind == "int" else "a"
        return _Bad(f"{text!r} is not {article} {kind if kind != 'json' else 'JSON document'}")
    if kind == "bool":
        if text.lower() in _TRUE:
            return True
        if text.lower() in _FALSE:
            return False
        return _Bad(f"{text!r} is not a yes/no value")
    return text


# --- the import -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DuplicateFinding:
    """A stored row's identity that other profiles hold too."""

    row: int
    identity: Identity
    holders: tuple[str, ...]
    """The other profiles holding it."""


@dataclass(frozen=True, slots=True)
class ImportProgress:
    rows: int
    created: int
    updated: int
    rejected: int
    duplicates: int
    bytes_done: int
    bytes_total: int
    elapsed: float


@dataclass(slots=True)
class ImportReport:
    """What one ``import_file`` call did (``previous``: what earlier runs of a resumed import did)."""

    path: str
    format: Format
    source: str
    rows: int = 0
    """Records read in this run: stored plus rejected."""
    created: int = 0
    updated: int = 0
    repeated: int = 0
    """Stored rows whose key an earlier row of the same batch had: folded into its profile."""
    rejected: int = 0
    duplicates: int = 0
    """Identities stored on a row that other profiles hold too."""
    duplicate_findings: list[DuplicateFinding] = field(default_factory=list)
    """The first ``keep_duplicates`` of them."""
    batches: int = 0
    elapsed: float = 0.0
    last_row: int = 0
    """The row number of the last record the committed batches cover."""
    resumed_at: int | None = None
    """The row this run started at when it resumed."""
    complete: bool = False
    interrupted: bool = False
    previous: dict[str, int] = field(default_factory=dict)
    rejects_path: str | None = None
    state_path: str | None = None
    mapping: ImportMapping | None = None
    unmapped_columns: tuple[str, ...] = ()

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.elapsed if self.elapsed > 0 else 0.0

    def totals(self) -> dict[str, int]:
        """This run plus the earlier runs of a resumed import."""
        mine = self.counts()
        return {key: mine[key] + self.previous.get(key, 0) for key in mine}

    def counts(self) -> dict[str, int]:
        return {
            "rows": self.rows,
            "created": self.created,
            "updated": self.updated,
            "repeated": self.repeated,
            "rejected": self.rejected,
            "duplicates": self.duplicates,
        }


@dataclass(slots=True)
class _Batch:
    """The records between two checkpoints, read and converted (in the worker process, or
    here): one batch for the store plus the rows rejected on the way; committed, then written
    out, then checkpointed, in that order (rule 4)."""

    records: int = 0
    """Records read: stored plus rejected."""
    rejects: list[tuple[int, str, str]] = field(default_factory=list)
    """(row, reason, raw) of the records rejected before the store."""
    rows: list[int] = field(default_factory=list)
    """The row of each record handed to the store, in the order of ``prepared``."""
    raws: list[str] = field(default_factory=list)
    """Their text, for the rows the store refuses."""
    prepared: object = None
    end_offset: int = 0
    end_line: int = 0
    last_row: int = 0
    done: bool = False
    """The input ended in this batch."""


class _BatchReader:
    """Reads, converts and prepares the input one batch at a time, from where the checkpoint
    (or the header) left it. Made in the importing process; with a worker it moves there at
    the fork and opens the input itself, so the reading's CPU is the worker's too."""

    def __init__(
        self,
        path: Path,
        reader: RecordReader,
        converter: RowConverter,
        size: int,
        seen: IdentityFilter | None = None,
    ) -> None:
        self.path = path
        self.seen = seen
        """Marks the identities whose holders the store must look up (rule 6); it learns every
        identity of every batch, in the file's order, so it stays where the reading is."""
        self.format: Format = reader.format
        self.delimiter = reader.delimiter
        self.encoding = reader.encoding
        self.max_record_lines = reader.max_record_lines
        self.header = reader.header
        self.offset = reader.offset
        self.line = reader.line
        self.converter = converter
        self.size = size
        self._file: IO[bytes] | None = None
        self._records: Iterator[Record] | None = None
        self._reader: RecordReader | None = None

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = self._reader = self._records = None

    def next_batch(self, prepare: PlainPreparer) -> _Batch:
        """The next ``size`` records (fewer at the end of the input, then ``done``)."""
        if self._reader is None:
            self._file = open(self.path, "rb")  # noqa: SIM115 - read until the import ends
            self._reader = RecordReader(
                self._file,
                self.format,
                delimiter=self.delimiter,
                encoding=self.encoding,
                max_record_lines=self.max_record_lines,
            )
            self._reader.header = self.header
            self._reader.seek(self.offset, self.line)
            self._records = iter(self._reader)
        assert self._records is not None
        batch = _Batch()
        customers: list[PlainCustomer] = []
        convert = self.converter.convert_plain
        records = self._records
        for record in records:
            batch.records += 1
            batch.last_row = record.row
            result = convert(record)
            if isinstance(result, str):
                batch.rejects.append((record.row, result, record.raw))
            else:
                customers.append(result)
                batch.rows.append(record.row)
                batch.raws.append(record.raw)
            if batch.records >= self.size:
                break
        else:
            batch.done = True
        batch.end_offset, batch.end_line = self._reader.offset, self._reader.line
        batch.prepared = prepare(customers, self.seen)
        return batch


class _RejectFile:
    """``row,reason,raw`` CSV; created on the first reject; fsynced before each checkpoint."""

    def __init__(self, path: Path | None, *, keep: int | None) -> None:
        self.path = path
        self._file: IO[bytes] | None = None
        self.size = 0
        if path is None:
            return
        if keep is None:
            path.unlink(missing_ok=True)
        elif path.exists():
            # Rejects written after the checkpoint are written again by the resume.
            with open(path, "r+b") as file:
                self.size = min(keep, file.seek(0, os.SEEK_END))
                file.truncate(self.size)

    def write(self, rejects: Sequence[tuple[int, str, str]]) -> None:
        if self.path is None or not rejects:
            return
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "ab")  # noqa: SIM115 - held open for the whole import
            self._file.seek(0, os.SEEK_END)
            if self._file.tell() == 0:
                self._file.write(b"row,reason,raw\r\n")
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerows(rejects)
        self._file.write(buffer.getvalue().encode("utf-8"))
        self._file.flush()
        self.size = self._file.tell()

    def sync(self) -> None:
        if self._file is not None:
            os.fsync(self._file.fileno())

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def _fingerprint(path: Path) -> dict[str, Any]:
    stat = path.stat()
    with open(path, "rb") as file:
        head = hashlib.sha256(file.read(HEAD_BYTES)).hexdigest()
    return {
        "path": str(path.resolve()),
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "head_sha256": head,
    }


def _write_json_atomically(path: Path, data: Mapping[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as file:
        json.dump(data, file, indent=1)
        file.flush()
        os.fsync(file.fileno())
    os.replace(tmp, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def default_state_path(path: str | Path) -> Path:
    path = Path(path)
    return path.with_name(path.name + ".import-state.json")


def default_rejects_path(path: str | Path) -> Path:
    path = Path(path)
    return path.with_name(path.name + ".rejects.csv")


def read_state(path: str | Path) -> dict[str, Any] | None:
    """The checkpoint as stored (for tools and tests), or None when there is none."""
    try:
        data: dict[str, Any] = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    return data


# --- converting in another process --------------------------------------------------------------

_worker_batches: _BatchReader | None = None


def _start_worker(batches: _BatchReader) -> None:
    """A conversion process: the parent's signals are not its business (Ctrl-C reaches the whole
    process group; the parent finishes its batch in flight, this process's work is discarded)."""
    global _worker_batches
    _worker_batches = batches
    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    # Converting makes no reference cycles worth collecting; the collector's passes over the
    # modules' objects were ~15% of this process's time.
    gc.freeze()
    gc.disable()
    # Not the parent's pipes: whoever waits for the CLI's output must see it end with the CLI.
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.close(null)
    # A parent killed outright (SIGKILL) cannot shut the pool down: leave with it.
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.2)
        os._exit(0)

    threading.Thread(target=watch, name="import-parent-watch", daemon=True).start()


def _next_batch_in_worker(prepare: PlainPreparer) -> _Batch:
    assert _worker_batches is not None
    return _worker_batches.next_batch(prepare)


BYTES_PER_IDENTITY = 24
"""A guess of the input's bytes per identity (the bench's CSV: 27), to size the filter."""

WORKER_MIN_BYTES = 1 << 20
"""Inputs from this size on are converted in a worker process (``workers=None``)."""


async def import_file(
    store: CustomerStore,
    path: str | Path,
    mapping: ImportMapping | str | Path | None = None,
    *,
    batch: int = 2000,
    fmt: Format | None = None,
    source: str | None = None,
    region: str = "US",
    rejects: str | Path | Literal[False] | None = None,
    state: str | Path | Literal[False] | None = None,
    resume: bool = False,
    target: str = "",
    progress: Callable[[ImportProgress], None] | None = None,
    stop: asyncio.Event | None = None,
    keep_duplicates: int = 1000,
    workers: int | None = None,
    filter_identities: bool = True,
) -> ImportReport:
    """Import a CSV or JSON-lines file into ``store`` (the rules at the top of this module).

    ``mapping``: an ``ImportMapping``, a mapping file, or None to infer one from the header.
    ``rejects`` / ``state``: the reject file and the checkpoint (default: next to the input,
    ``<file>.rejects.csv`` and ``<file>.import-state.json``); False: none (a bench).
    ``target`` names the database in the checkpoint, so a resume against another one is refused.
    ``stop``: when set, the import finishes the batch in flight, checkpoints and returns
    (``interrupted``). ``progress`` is called after every committed batch.
    ``workers``: 1 converts the rows in another process (a core of its own) while this one
    writes, 0 converts them here; None: 1 for inputs of ``WORKER_MIN_BYTES`` or more.
    ``filter_identities``: False looks up the holders of every identity (rule 6 without its
    filter; the same findings, slower).
    """
    started = time.monotonic()
    path = Path(path)
    if isinstance(mapping, str | Path):
        mapping = load_mapping(mapping)
    if not path.is_file():
        raise ImportFailed(f"{path}: no such file")
    chosen = fmt or (mapping.format if mapping else None) or guess_format(path)
    src = source or (mapping.source if mapping else None) or _source_name(path)
    if not re.fullmatch(r"[^:#\s]+", src):
        raise ImportFailed(f"source {src!r}: no spaces, ':' or '#' (it prefixes every key)")
    state_path = None if state is False else Path(state) if state else default_state_path(path)
    rejects_path = None if rejects is False else Path(rejects) if rejects else default_rejects_path(path)
    report = ImportReport(
        path=str(path),
        format=chosen,
        source=src,
        rejects_path=str(rejects_path) if rejects_path else None,
        state_path=str(state_path) if state_path else None,
    )
    fingerprint = _fingerprint(path)
    size = fingerprint["size"]

    # Reading is local and CPU-bound, done between the store's awaits on purpose: a thread would
    # only add handoffs (the store's SQL already runs in its own thread).
    with open(path, "rb") as file:  # noqa: ASYNC230
        reader = RecordReader(
            file,
            chosen,
            delimiter=mapping.delimiter if mapping else ",",
            encoding=mapping.encoding if mapping else "utf-8",
            max_record_lines=mapping.max_record_lines if mapping else 100,
        )
        header = reader.read_header()
        if mapping is None:
            mapping = infer_mapping(header if chosen == "csv" else _first_object_keys(reader))
        if chosen == "csv":
            _check_columns(mapping, header, path)
            mapped = {column for _, column in mapping.columns()}
            report.unmapped_columns = tuple(c for c in header if c not in mapped)
        report.mapping = mapping
        checkpoint: dict[str, Any] = {
            "version": STATE_VERSION,
            "input": fingerprint,
            "format": chosen,
            "source": src,
            "mapping": mapping.fingerprint(),
            "target": target,
            "rejects": str(rejects_path.resolve()) if rejects_path else None,
        }
        saved = read_state(state_path) if (resume and state_path) else None
        if saved is not None:
            _check_resumable(saved, checkpoint, state_path)
            report.previous = dict(saved.get("counts", {}))
            report.last_row = saved["last_row"]
            if saved.get("complete"):
                report.complete = True
                report.elapsed = time.monotonic() - started
                return report
            reader.seek(saved["offset"], saved["line"])
            report.resumed_at = saved["line"]
        if state_path is not None:
            state_path.parent.mkdir(parents=True, exist_ok=True)  # fail here, before any write
        reject_file = _RejectFile(rejects_path, keep=saved["rejects_size"] if saved else None)
        converter = RowConverter(mapping, source=src, region=region)
        batch = max(1, batch)

        def state_of(done: _Batch, *, complete: bool = False) -> dict[str, Any] | None:
            report.last_row = done.last_row or report.last_row
            if state_path is None:
                return None
            return checkpoint | {
                "offset": done.end_offset,
                "line": done.end_line,
                "last_row": report.last_row,
                "rejects_size": reject_file.size,
                "counts": report.totals(),
                "complete": complete,
                "updated_at": time.time(),
            }

        def persist(data: dict[str, Any] | None) -> None:
            """The rejects on disk, then the checkpoint that counts them (rule 4)."""
            reject_file.sync()
            if state_path is not None and data is not None:
                _write_json_atomically(state_path, data)

        # The fsyncs of a checkpoint (~30 ms while the WAL grows) run in a thread, overlapping the
        # next batch; checkpoints still follow their commits, one after the other.
        persisting: list[asyncio.Future[None]] = []

        async def settle() -> None:
            while persisting:
                await persisting.pop()

        async def save(done: _Batch, *, complete: bool = False) -> None:
            data = state_of(done, complete=complete)
            await settle()
            persisting.append(asyncio.ensure_future(asyncio.to_thread(persist, data)))

        async def flush(done: _Batch) -> None:
            """Commit the batch's rows, then write its rejects, then checkpoint (rule 4)."""
            report.rows += done.records
            report.rejected += len(done.rejects)
            rejects = done.rejects
            if done.rows:
                result = await store.create_prepared(done.prepared)
                report.batches += 1
                report.created += len(result.created)
                report.updated += len(result.updated)
                report.repeated += (
                    len(done.rows) - len(result.rejected) - len(result.created) - len(result.updated)
                )
                for index, reason in result.rejected:
                    rejects.append((done.rows[index], reason, done.raws[index]))
                report.rejected += len(result.rejected)
                for index, identity, holders in result.duplicates:
                    report.duplicates += 1
                    if len(report.duplicate_findings) < keep_duplicates:
                        report.duplicate_findings.append(
                            DuplicateFinding(done.rows[index], identity, holders)
                        )
            await settle()  # the previous checkpoint's fsync of the reject file is done
            reject_file.write(sorted(rejects))
            await save(done)
            if progress is not None:
                progress(_progress(report, done.end_offset, size, started))

        loop = asyncio.get_running_loop()
        if workers is None:
            workers = 1 if size - reader.offset >= WORKER_MIN_BYTES else 0
        remaining = size - reader.offset
        seen = None
        if filter_identities:
            # Seeding reads every stored key (~1.5 us each) to spare ~3 us an imported identity:
            # worth it while the store holds up to about twice what the input brings.
            expected = remaining // BYTES_PER_IDENTITY
            seen = await store.identity_filter(expected=expected, max_stored=max(100_000, 2 * expected))
        batches = _BatchReader(path, reader, converter, batch, seen)
        pool: ProcessPoolExecutor | None = None
        if workers > 0:
            # fork: the child has the modules, the converter and the reader's place already (no
            # pickling, no start-up cost) and no job is running on the store's thread now.
            pool = ProcessPoolExecutor(
                1,
                mp_context=multiprocessing.get_context("fork"),
                initializer=_start_worker,
                initargs=(batches,),
            )

        def next_batch() -> asyncio.Future[_Batch]:
            """The next batch read, converted and prepared for the store: in the worker while this
            process commits the one before, or here."""
            prepare = store.plain_preparer(converter.origin)
            if pool is None:
                done = loop.create_future()
                done.set_result(batches.next_batch(prepare))
                return done
            return asyncio.wrap_future(pool.submit(_next_batch_in_worker, prepare))

        pending: asyncio.Future[_Batch] | None = next_batch()
        try:
            while pending is not None:
                current = await pending
                # Read ahead: the next batch converts while this one commits.
                pending = None if current.done else next_batch()
                await flush(current)
                if current.done:
                    report.complete = True
                    await save(current, complete=True)
                elif stop is not None and stop.is_set():
                    report.interrupted = True
                    break
            await settle()
        finally:
            if pending is not None:
                pending.cancel()
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
            batches.close()
            for task in persisting:
                with contextlib.suppress(BaseException):
                    await task
            reject_file.close()
    report.elapsed = time.monotonic() - started
    return report


def _progress(report: ImportReport, done: int, total: int, started: float) -> ImportProgress:
    return ImportProgress(
        rows=report.rows,
        created=report.created,
        updated=report.updated,
        rejected=report.rejected,
        duplicates=report.duplicates,
        bytes_done=done,
        bytes_total=total,
        elapsed=time.monotonic() - started,
    )


def _source_name(path: Path) -> str:
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", path.stem).strip("-")
    return name or "import"


def _first_object_keys(reader: RecordReader) -> list[str]:
    """JSON lines without a mapping: the keys of the first object name the columns."""
    offset, line = reader.offset, reader.line
    keys: list[str] = []
    for record in reader:
        if record.values is not None:
            keys = list(record.values)
            break
    reader.seek(offset, line)
    return keys


def _check_columns(mapping: ImportMapping, header: Sequence[str], path: Path) -> None:
    known = set(header)
    missing = [(key, column) for key, column in mapping.columns() if column not in known]
    if missing:
        shown = ", ".join(header) if header else "(the file has no header)"
        problems = [
            f"{mapping.where(key)}: {key}: no column {column!r} in {path.name}" for key, column in missing
        ]
        raise MappingError("\n  ".join([*problems, f"the columns are: {shown}"]))


def _check_resumable(saved: Mapping[str, Any], now: Mapping[str, Any], state_path: Path | None) -> None:
    fix = "re-run without --resume (a full re-run is idempotent)"
    if saved.get("version") != STATE_VERSION:
        raise CheckpointMismatch(f"{state_path}: a checkpoint of another version; {fix}")
    was, is_ = saved["input"], now["input"]
    if was["path"] != is_["path"]:
        raise CheckpointMismatch(f"{state_path}: the checkpoint is for {was['path']}; {fix}")
    if (was["size"], was["mtime_ns"], was["head_sha256"]) != (
        is_["size"],
        is_["mtime_ns"],
        is_["head_sha256"],
    ):
        raise CheckpointMismatch(f"{state_path}: {is_['path']} changed since the checkpoint; {fix}")
    for key, what in (
        ("format", "format"),
        ("source", "source"),
        ("mapping", "mapping"),
        ("target", "database"),
        ("rejects", "reject file"),
    ):
        if saved.get(key) != now.get(key):
            raise CheckpointMismatch(
                f"{state_path}: the {what} differs from the checkpoint's "
                f"({saved.get(key)!r}, now {now.get(key)!r}); {fix}"
            )
