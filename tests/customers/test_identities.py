"""Identity normalisation: phone forms from many countries, emails, member, external and IM ids."""

from __future__ import annotations

import random

import phonenumbers
import pytest

from customers.identities import (
    _fast_path,
    _parse,
    coerce_identity,
    fast_email,
    is_anonymous,
    normalise_email,
    normalise_identity,
    normalise_phone,
    parse_kind,
    phone_time_zones,
)
from customers.model import Identity, IdentityKind
from customers.store import InvalidInput

US = "+14155550123"
UK = "+442079460958"
DE = "+4930901820"
FR = "+33142685300"
CN_MOBILE = "+8613800138000"
CN_LANDLINE = "+861065529988"


@pytest.mark.parametrize(
    ("raw", "region", "e164", "extension"),
    [
        ("(415) 555-0123 x12", "US", US, "12"),
        ("(415) 555-0123 ext. 12", "US", US, "12"),
        ("4155550123", "US", US, ""),
        ("14155550123", "US", US, ""),
        ("+1 (415) 555-0123", "US", US, ""),
        ("415.555.0123", "US", US, ""),
        ("tel:+1-415-555-0123", "US", US, ""),
        ("sip:+14155550123@pbx.example.com;user=phone", "US", US, ""),
        ("011 1 415 555 0123", "US", US, ""),
        ("+44 20 7946 0958", "US", UK, ""),
        ("0044 20 7946 0958", "US", UK, ""),  # 00 from a desk whose own prefix is 011
        ("0044 20 7946 0958", "GB", UK, ""),
        ("020 7946 0958", "GB", UK, ""),
        ("+44 (0)20 7946 0958", "US", UK, ""),
        ("+49 30 901820", "US", DE, ""),
        ("030 901820", "DE", DE, ""),
        ("0049 30 901820", "FR", DE, ""),
        ("+33 1 42 68 53 00", "US", FR, ""),
        ("01 42 68 53 00", "FR", FR, ""),
        ("0033 1 42 68 53 00", "US", FR, ""),
        ("+86 138 0013 8000", "US", CN_MOBILE, ""),
        ("13800138000", "CN", CN_MOBILE, ""),
        ("0086 138 0013 8000", "US", CN_MOBILE, ""),
        ("010 6552 9988", "CN", CN_LANDLINE, ""),
        ("+86 10 6552 9988", "US", CN_LANDLINE, ""),
    ],
)
def test_phone_forms(raw: str, region: str, e164: str, extension: str) -> None:
    phone = normalise_phone(raw, region)
    assert (phone.e164, phone.extension, phone.raw) == (e164, extension, raw)


@pytest.mark.parametrize(
    "raw", ["", "  ", "anonymous", "Anonymous", "<unknown>", "unknown", "Restricted", '""']
)
def test_anonymous_caller_ids_are_not_numbers(raw: str) -> None:
    assert is_anonymous(raw)
    with pytest.raises(InvalidInput) as caught:
        normalise_phone(raw, "US", field="caller")
    assert caught.value.field == "caller"


@pytest.mark.parametrize("raw", ["abc", "123", "+1 415 555", "555", "+999 1234 5678", "x" * 80])
def test_unparseable_numbers_name_the_field(raw: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        normalise_phone(raw, "US", field="identities[0].value")
    assert caught.value.field == "identities[0].value"
    assert "identities[0].value:" in str(caught.value)


def _full(text: str, region: str) -> str | None:
    number = _parse(text, region)
    return None if number is None else phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def test_fast_path_agrees_with_phonenumbers() -> None:
    """The importer's shortcut for plain forms must give what the full parse gives: random
    international and national numbers of every country, with and without punctuation."""
    rng = random.Random(7)
    codes = sorted(phonenumbers.COUNTRY_CODE_TO_REGION_CODE)
    regions = sorted(phonenumbers.SUPPORTED_REGIONS)

    def punctuate(digits: str) -> str:
        if rng.random() < 0.5:
            return digits
        cut = rng.randint(1, max(1, len(digits) - 4))
        return f"({digits[:cut]}) {digits[cut : cut + 3]}-{digits[cut + 3 :]}"

    taken = {"+": 0, "national": 0}
    for _ in range(30000):
        digits = "".join(rng.choice("0123456789") for _ in range(rng.randint(4, 13)))
        if rng.random() < 0.5:
            text, region, kind = f"+{rng.choice(codes)} {punctuate(digits)}", "US", "+"
        else:
            text, region, kind = punctuate(digits), rng.choice(regions), "national"
        fast = _fast_path(text, region)
        if fast is None:
            continue
        taken[kind] += 1
        assert fast == _full(text, region), (text, region)
    assert min(taken.values()) > 2000, taken
    # Forms the full parse rewrites are left to it: a trunk "0" after the country code, Italy's
    # leading zero that belongs to the number, a national form starting with the country code.
    assert _fast_path("+4402079460958", "US") is None
    assert normalise_phone("+4402079460958").e164 == UK
    assert _fast_path("+3906698851", "US") is None
    assert normalise_phone("+39 06 698851").e164 == "+3906698851"
    assert _fast_path("4930901820", "DE") is None
    assert _fast_path("14155550123", "US") is None
    assert _fast_path("(415) 555-0123", "US") == US


def test_time_zones_of_numbers() -> None:
    assert phone_time_zones(US) == ("America/Los_Angeles",)
    assert phone_time_zones(UK) == ("Europe/London",)
    assert set(phone_time_zones("+16055550100")) == {"America/Denver", "America/North_Dakota/Center"}
    assert phone_time_zones("+80012345678") == ()


def test_emails_are_case_insensitive_and_checked() -> None:
    assert normalise_email("  Alice.Smith@Example.COM ") == "alice.smith@example.com"
    assert normalise_email("mailto:bob@example.org") == "bob@example.org"
    for bad in ("alice", "alice@", "@example.com", "a b@example.com", "alice@example"):
        with pytest.raises(InvalidInput, match="not an email"):
            normalise_email(bad)


@pytest.mark.parametrize(
    "raw", ["a@b.co", "A@B.CO", " a@b.co", "mailto:a@b.co", "MAILTO:A@b.co", "a@b", "a b@c.de", "x@y.z."]
)
def test_fast_email_agrees_with_normalise_email(raw: str) -> None:
    fast = fast_email(raw)
    if fast is not None:
        assert fast == normalise_email(raw)


def test_member_external_and_im_identities() -> None:
    member = normalise_identity("member", " 1234-5678 9012 ")
    assert (member.kind, member.value, member.raw) == (
        IdentityKind.MEMBER,
        "123456789012",
        " 1234-5678 9012 ",
    )
    external = normalise_identity("external", " 10042 ", system="Shop")
    assert (external.kind, external.system, external.value) == (IdentityKind.EXTERNAL, "shop", "10042")
    assert normalise_identity("external:erp", "A-7").system == "erp"
    im = normalise_identity(IdentityKind.IM, "@Alice_W", system="WeChat")
    assert (im.system, im.value) == ("wechat", "alice_w")
    with pytest.raises(InvalidInput) as caught:
        normalise_identity("external", "10042", field="identities[3]")
    assert caught.value.field == "identities[3].system"
    with pytest.raises(InvalidInput) as caught:
        normalise_identity("fax", "1", field="identities[0]")
    assert caught.value.field == "identities[0].kind"


def test_phone_identity_keeps_raw_and_extension() -> None:
    identity = normalise_identity("phone", "+1 415 555 0123 ext. 7", label="office")
    assert identity == Identity(
        kind=IdentityKind.PHONE, value=US, raw="+1 415 555 0123 ext. 7", extension="7", label="office"
    )
    # An Identity given with a raw value is normalised; a pair is too.
    given = coerce_identity(Identity(IdentityKind.PHONE, "020 7946 0958"), region="GB", field="x")
    assert (given.value, given.raw) == (UK, "020 7946 0958")
    assert coerce_identity(("email", "A@B.CO"), region="US", field="x").value == "a@b.co"
    with pytest.raises(InvalidInput) as caught:
        coerce_identity(("phone",), region="US", field="identities[2]")  # type: ignore[arg-type]
    assert caught.value.field == "identities[2]"


def test_parse_kind() -> None:
    assert parse_kind("PHONE") == (IdentityKind.PHONE, "")
    assert parse_kind("im:WhatsApp") == (IdentityKind.IM, "whatsapp")
    assert parse_kind(IdentityKind.EMAIL) == (IdentityKind.EMAIL, "")
