"""Identity normalisation: what makes ``(415) 555-0123``, ``+1 415 555 0123`` and ``14155550123``
one identity.

Pure functions, no I/O. Rules:

1. Phones become E.164 (``+14155550123``) with ``phonenumbers`` and a default region for national
   forms. ``00``-prefixed international forms are accepted whatever the region's own international
   prefix is (``0044 20 7946 0958`` from a US desk). The raw form and any extension are kept beside.
   A number ``phonenumbers`` does not find *possible* (wrong length for its country) is rejected:
   ``is_valid_number`` would also reject the fictitious ranges (555-01xx) test and demo data use.
2. Caller-id placeholders (``anonymous``, ``<unknown>``, ``restricted``, empty) are not numbers:
   ``is_anonymous()`` says so and lookups answer "nobody" instead of an error.
3. Emails are compared case-insensitively (stored lower-cased) and must look like ``a@b.c``.
4. Member ids lose spaces and dashes; external ids and IM handles are scoped by ``system``
   (lower-cased); IM handles also lose a leading ``@`` and are compared case-insensitively.
5. The tuple shorthand ``("external:shop", "10042")`` / ``("im:wechat", "alice")`` names the system
   after the kind.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import phonenumbers
from phonenumbers import timezone as phone_timezone

from customers.model import Identity, IdentityKind
from customers.store import InvalidInput

__all__ = [
    "ANONYMOUS_CALLER_IDS",
    "PhoneNumber",
    "is_anonymous",
    "normalise_email",
    "normalise_identity",
    "normalise_member",
    "normalise_phone",
    "parse_kind",
    "phone_time_zones",
]

ANONYMOUS_CALLER_IDS = frozenset(
    {
        "",
        "anonymous",
        "<unknown>",
        "unknown",
        "restricted",
        "private",
        "unavailable",
        "withheld",
        "<anonymous>",
        "asterisk",  # Asterisk's default CallerID number when none is set.
    }
)

_KINDS = {kind.value: kind for kind in IdentityKind}
_PLAIN = re.compile(r"\+?[0-9(][0-9 ().\-]{4,30}")
_DROP_PUNCT = str.maketrans("", "", " ().-")
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s.]+")
_MEMBER_DROP = re.compile(r"[\s\-]+")
_PUNCT = re.compile(r"[\s().\-/]+")
_MAX_VALUE = 320  # the longest an email may be; more is not an identifier.


class PhoneNumber:
    """A normalised phone number: ``e164``, the ``extension`` ("" if none) and the ``raw`` input."""

    __slots__ = ("e164", "extension", "raw")

    def __init__(self, e164: str, extension: str, raw: str) -> None:
        self.e164 = e164
        self.extension = extension
        self.raw = raw

    def __repr__(self) -> str:
        return f"PhoneNumber({self.e164!r}, extension={self.extension!r}, raw={self.raw!r})"


def is_anonymous(raw: str | None) -> bool:
    """True for a caller id that names nobody (withheld, unknown, empty)."""
    if raw is None:
        return True
    return raw.strip().strip('"').lower() in ANONYMOUS_CALLER_IDS


@lru_cache(maxsize=512)
def _prefix_rules(region: str) -> tuple[int, str, re.Pattern[str] | None, re.Pattern[str] | None] | None:
    """A region's calling code, national prefix, national-prefix-for-parsing and international
    prefix patterns; None when phonenumbers does not know the region."""
    metadata = phonenumbers.PhoneMetadata.metadata_for_region(region.upper(), None)
    if metadata is None or not metadata.country_code:
        return None
    for_parsing = metadata.national_prefix_for_parsing
    international = metadata.international_prefix
    return (
        int(metadata.country_code),
        metadata.national_prefix or "",
        re.compile(for_parsing) if for_parsing else None,
        re.compile(international) if international else None,
    )


def _plain_national(
    national: str, rules: tuple[int, str, re.Pattern[str] | None, re.Pattern[str] | None]
) -> bool:
    """True when ``phonenumbers.parse`` would keep these national digits as they are: no
    leading zero (Italy keeps it, others strip a trunk 0), no national prefix or pattern to
    strip (Mexico's old mobile 1, Argentina's 15) and no international prefix."""
    _, prefix, for_parsing, international = rules
    if not national or national[0] == "0":
        return False
    if prefix and national.startswith(prefix):
        return False
    if for_parsing is not None and for_parsing.match(national):
        return False
    return international is None or international.match(national) is None


def fast_email(raw: str) -> str | None:
    """The stored form of a plain email (already trimmed and shaped), else None."""
    if len(raw) <= _MAX_VALUE and _EMAIL.fullmatch(raw) is not None and raw[:7].lower() != "mailto:":
        return raw.lower()
    return None


def fast_phone(text: str, region: str) -> str | None:
    """E.164 of a trimmed plain-form number, else None (``normalise_phone`` does the rest)."""
    if len(text) > 64:
        return None
    fast = _fast_path(text, region)
    return _fast_dialled(text, region) if fast is None and text[:2] == "00" else fast


def _fast_path(text: str, region: str) -> str | None:
    """E.164 for the plain forms (``+14155550123``, ``+1 (415) 555-0123``, ``(415) 555-0123``)
    without a full ``phonenumbers.parse`` (~45-90 us, most of an import row's time): the country's
    possible lengths are checked on the digits. Anything the full parse might rewrite takes the
    full path, so both paths give the same answer (tests compare them on random numbers)."""
    if _PLAIN.fullmatch(text) is None:
        return None
    digits = text.translate(_DROP_PUNCT)
    if digits[0] == "+":
        digits = digits[1:]
        for size in (1, 2, 3):
            code = int(digits[:size])
            if code in phonenumbers.COUNTRY_CODE_TO_REGION_CODE:
                break
        else:
            return None
        main_region = phonenumbers.region_code_for_country_code(code)
        rules = _prefix_rules(main_region) if main_region != phonenumbers.UNKNOWN_REGION else None
        national = digits[size:]
        if rules is None or not _plain_national(national, rules):
            return None
    else:
        rules = _prefix_rules(region)
        if rules is None:
            return None
        code, national = rules[0], digits
        # A national form that starts with the country code may be read with it stripped.
        if national.startswith(str(code)) or not _plain_national(national, rules):
            return None
    return f"+{code}{national}" if _possible(code, len(national)) else None


def _fast_dialled(text: str, region: str) -> str | None:
    """E.164 for a ``00`` form (``0044 20 7946 0958``) when ``normalise_phone``'s reading of it
    is certain without ``parse``: where ``00`` is the region's international prefix it is the
    ``+`` form; elsewhere (US: ``011``) ``parse`` first reads the digits as a national number,
    impossible when no national prefix applies and the length is not one of the region's, and
    then ``normalise_phone`` reads the ``+`` form. Tests compare both paths on random numbers."""
    if _PLAIN.fullmatch(text) is None:
        return None
    digits = text.translate(_DROP_PUNCT)
    rules = _prefix_rules(region)
    if rules is None or len(digits) <= 4 or digits[2] == "0":
        return None
    code, prefix, for_parsing, international = rules
    idd = international.match(digits) if international is not None else None
    if idd is not None:
        if idd.end() != 2:
            return None
    elif (
        (prefix and digits.startswith(prefix))
        or (for_parsing is not None and for_parsing.match(digits) is not None)
        or _possible(code, len(digits))
    ):
        return None
    return _fast_path("+" + digits[2:], region)


@lru_cache(maxsize=4096)
def _possible(code: int, length: int) -> bool:
    """``phonenumbers.is_possible_number`` reads only the calling code and the length of the
    national number (without a leading zero, which ``_fast_path`` leaves to the full parse)."""
    if length > 17:
        return False
    number = phonenumbers.PhoneNumber(country_code=code, national_number=int("1" * length))
    return bool(phonenumbers.is_possible_number(number))


def normalise_phone(raw: str, region: str = "US", *, field: str = "phone") -> PhoneNumber:
    """``raw`` in any common form to E.164 (raises ``InvalidInput`` naming ``field``)."""
    if not isinstance(raw, str):
        raise InvalidInput(field, f"expected a phone number string, got {type(raw).__name__}")
    text = raw.strip()
    if is_anonymous(text):
        raise InvalidInput(field, f"not a phone number (caller id {raw!r} names nobody)")
    if len(text) > 64:
        raise InvalidInput(field, "phone number longer than 64 characters")
    fast = _fast_path(text, region)
    if fast is None and text[:2] == "00":
        fast = _fast_dialled(text, region)
    if fast is not None:
        return PhoneNumber(fast, "", raw)
    if text[:4].lower() == "tel:":
        text = text[4:]
    elif text[:4].lower() == "sip:" or text[:5].lower() == "sips:":
        # A SIP URI as caller id: its user part (sip:+14155550123@pbx.example.com;user=phone).
        text = text.partition(":")[2].partition("@")[0].partition(";")[0]
    number = _parse(text, region)
    if number is None:
        # "0044 20 ..." dialled from a region whose international prefix is not 00 (US: 011).
        compact = _PUNCT.sub("", text)
        if compact.startswith("00") and len(compact) > 4:
            number = _parse("+" + compact[2:], region)
    if number is None:
        raise InvalidInput(field, f"not a phone number: {raw!r} (default region {region})")
    e164 = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    return PhoneNumber(e164, number.extension or "", raw)


def _parse(text: str, region: str) -> phonenumbers.PhoneNumber | None:
    try:
        number = phonenumbers.parse(text, region)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_possible_number(number):
        return None
    return number


def phone_time_zones(e164: str) -> tuple[str, ...]:
    """IANA zones the number may ring in (several for a North American toll-free or an area
    code across a zone line); ``()`` when unknown."""
    try:
        number = phonenumbers.parse(e164, None)
    except phonenumbers.NumberParseException:
        return ()
    zones = phone_timezone.time_zones_for_number(number)
    return tuple(zone for zone in zones if zone != "Etc/Unknown")


def normalise_email(raw: str, *, field: str = "email") -> str:
    text = raw.strip()
    if text[:7].lower() == "mailto:":
        text = text[7:]
    if len(text) > _MAX_VALUE or _EMAIL.fullmatch(text) is None:
        raise InvalidInput(field, f"not an email address: {raw!r}")
    return text.lower()


def normalise_member(raw: str, *, field: str = "member") -> str:
    value = _MEMBER_DROP.sub("", raw)
    if not value:
        raise InvalidInput(field, "empty member id")
    if len(value) > _MAX_VALUE:
        raise InvalidInput(field, "member id longer than 320 characters")
    return value


def parse_kind(kind: IdentityKind | str, *, field: str = "kind") -> tuple[IdentityKind, str]:
    """An ``IdentityKind`` or its name, optionally ``"external:<system>"`` / ``"im:<network>"``;
    returns the kind and the system named in it ("" if none)."""
    if isinstance(kind, IdentityKind):
        return kind, ""
    if not isinstance(kind, str):
        raise InvalidInput(field, f"unknown identity kind {kind!r}")
    exact = _KINDS.get(kind)
    if exact is not None:
        return exact, ""
    name, _, system = kind.partition(":")
    try:
        parsed = IdentityKind(name.strip().lower())
    except ValueError:
        known = ", ".join(k.value for k in IdentityKind)
        raise InvalidInput(field, f"unknown identity kind {kind!r} (one of {known})") from None
    return parsed, system.strip().lower()


IdentityRow = tuple[str, str, str, str, str, str, int, int, str, float]
"""An identity as the ``identities`` table's columns before ``customer_id``: (kind, system, value,
raw, label, extension, shared, verified, source, created_at). The importer's path builds these,
not ``Identity`` objects (a frozen dataclass costs ~4 us to make)."""

_KIND_VALUE = {kind: kind.value for kind in IdentityKind}


def normalise_value(
    kind: IdentityKind, value: object, system: str, region: str, field: str
) -> tuple[str, str, str]:
    """(stored value, system, extension) of one identity; ``InvalidInput`` names ``field``."""
    if not isinstance(value, str):
        raise InvalidInput(f"{field}.value", f"expected a string, got {type(value).__name__}")
    if kind is IdentityKind.PHONE:
        phone = normalise_phone(value, region, field=f"{field}.value")
        return phone.e164, "", phone.extension
    if kind is IdentityKind.EMAIL:
        return normalise_email(value, field=f"{field}.value"), "", ""
    if kind is IdentityKind.MEMBER:
        return normalise_member(value, field=f"{field}.value"), "", ""
    system = system.strip().lower()
    if not system:
        what = "system" if kind is IdentityKind.EXTERNAL else "network"
        raise InvalidInput(f"{field}.system", f"a {kind.value} identity needs its {what}")
    normal = value.strip()
    if kind is IdentityKind.IM:
        normal = normal.lstrip("@").casefold()
    if not normal:
        raise InvalidInput(f"{field}.value", f"empty {kind.value} id")
    if len(normal) > _MAX_VALUE:
        raise InvalidInput(f"{field}.value", f"{kind.value} id longer than 320 characters")
    return normal, system, ""


def normalise_identity(
    kind: IdentityKind | str,
    value: str,
    *,
    system: str = "",
    region: str = "US",
    field: str = "identity",
    label: str = "",
    shared: bool = False,
    verified: bool = False,
    source: str = "",
    created_at: float = 0.0,
) -> Identity:
    """One identity in its stored form; ``InvalidInput`` names ``field`` (``identities[2]``)."""
    parsed, kind_system = parse_kind(kind, field=f"{field}.kind")
    normal, system, extension = normalise_value(parsed, value, system or kind_system, region, field)
    return Identity(
        kind=parsed,
        value=normal,
        system=system,
        raw=value,
        label=label.strip(),
        extension=extension,
        shared=shared,
        verified=verified,
        source=source,
        created_at=created_at,
    )


def identity_row(
    item: Identity | tuple[IdentityKind | str, str],
    *,
    region: str,
    field: str,
    source: str = "",
    created_at: float = 0.0,
) -> IdentityRow:
    """An ``Identity`` (normalised again: its ``value`` may be raw) or a ``(kind, value)`` pair,
    as an ``IdentityRow``."""
    if type(item) is tuple and len(item) == 2:
        kind, kind_system = parse_kind(item[0], field=f"{field}.kind")
        raw = item[1]
        normal, system, extension = normalise_value(kind, raw, kind_system, region, field)
        return (_KIND_VALUE[kind], system, normal, raw, "", extension, 0, 0, source, created_at)
    if isinstance(item, Identity):
        kind, kind_system = parse_kind(item.kind, field=f"{field}.kind")
        normal, system, extension = normalise_value(
            kind, item.value, item.system or kind_system, region, field
        )
        label = item.label.strip() if isinstance(item.label, str) else ""
        return (
            _KIND_VALUE[kind],
            system,
            normal,
            item.raw or item.value,
            label,
            extension or item.extension,
            int(bool(item.shared)),
            int(bool(item.verified)),
            item.source or source,
            item.created_at or created_at,
        )
    raise InvalidInput(field, f"expected an Identity or a (kind, value) pair, got {item!r}")


def row_identity(row: Sequence[Any]) -> Identity:
    """The ``Identity`` of an ``IdentityRow``, or of a stored row read in that column order."""
    kind, system, value, raw, label, extension, shared, verified, source, created_at = row[:10]
    return Identity(
        kind=IdentityKind(kind),
        value=value,
        system=system,
        raw=raw,
        label=label,
        extension=extension,
        shared=bool(shared),
        verified=bool(verified),
        source=source,
        created_at=created_at,
    )


def coerce_identity(
    item: Identity | tuple[IdentityKind | str, str],
    *,
    region: str,
    field: str,
    source: str = "",
    created_at: float = 0.0,
) -> Identity:
    """An ``Identity`` (normalised again: its ``value`` may be raw) or a ``(kind, value)`` pair."""
    return row_identity(identity_row(item, region=region, field=field, source=source, created_at=created_at))
