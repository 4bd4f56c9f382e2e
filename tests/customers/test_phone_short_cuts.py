"""The phone short cuts (plain ``+``, national and ``00`` forms read without ``phonenumbers.parse``)
give exactly what ``phonenumbers`` gives, on random numbers of many countries and regions."""

from __future__ import annotations

import random
import re

import phonenumbers
import pytest

from customers.identities import normalise_phone
from customers.importer import PhoneReader
from customers.store import InvalidInput

REGIONS = ["US", "CA", "PR", "GB", "DE", "FR", "IT", "ES", "CH", "AT", "NL", "MX", "AR", "BR", "IN", "CN",
           "JP", "AU", "RU", "KZ", "HK", "SG", "ZA", "NG", "IL", "AE", "SE", "NO", "FI", "PL"]  # fmt: skip
CODES = sorted(phonenumbers.COUNTRY_CODE_TO_REGION_CODE)


def phonenumbers_reading(raw: str, region: str) -> str | None:
    """``normalise_phone``'s rule written with ``phonenumbers`` alone: parse in the region, keep it
    if possible; else a ``00`` form (punctuation aside) read as ``+``."""
    compact = re.sub(r"[\s().\-/]+", "", raw)
    for text in (raw, "+" + compact[2:] if compact.startswith("00") and len(compact) > 4 else None):
        if text is None:
            continue
        try:
            number = phonenumbers.parse(text, region)
        except phonenumbers.NumberParseException:
            continue
        if phonenumbers.is_possible_number(number):
            return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    return None


def random_forms(rng: random.Random) -> str:
    digits = "".join(rng.choice("0123456789") for _ in range(rng.randint(4, 14)))
    code = rng.choice(CODES)
    return rng.choice(
        [
            digits,
            f"+{code}{digits}",
            f"+{code} {digits[:3]} {digits[3:]}",
            f"00{code}{digits}",
            f"00 {code} {digits[:4]}-{digits[4:]}",
            f"00{digits}",
            f"1{digits}",
            f"({digits[:3]}) {digits[3:6]}-{digits[6:]}",
        ]
    )


def valid_forms(rng: random.Random) -> str:
    """Real-looking numbers (phonenumbers' examples with other last digits) in their usual forms."""
    region = rng.choice(REGIONS)
    kind = rng.choice([phonenumbers.PhoneNumberType.MOBILE, phonenumbers.PhoneNumberType.FIXED_LINE])
    example = phonenumbers.example_number_for_type(region, kind)
    assert example is not None
    national = str(example.national_number)
    national = national[:-3] + f"{rng.randrange(1000):03d}"
    e164 = f"+{example.country_code}{national}"
    return rng.choice([e164, "00" + e164[1:], f"+{example.country_code} {national[:3]} {national[3:]}"])


@pytest.mark.parametrize("make", [random_forms, valid_forms])
def test_normalise_phone_reads_as_phonenumbers_does(make: object) -> None:
    rng = random.Random(20261129)
    stored = 0
    for region in REGIONS:
        for _ in range(150):
            raw = make(rng)  # type: ignore[operator]
            try:
                mine: str | None = normalise_phone(raw, region).e164
            except InvalidInput:
                mine = None
            assert mine == phonenumbers_reading(raw, region), (region, raw)
            stored += mine is not None
    assert stored > 1000


@pytest.mark.parametrize("make", [random_forms, valid_forms])
def test_the_importers_phone_reader_reads_as_phonenumbers_does(make: object) -> None:
    rng = random.Random(7)
    read = 0
    for region in REGIONS:
        reader = PhoneReader(region)
        for _ in range(150):
            raw = make(rng)  # type: ignore[operator]
            mine = reader.read(raw)
            theirs = phonenumbers_reading(raw, region)
            if isinstance(mine, tuple):
                read += 1
                assert mine == (theirs, ""), (region, raw)
            elif theirs is not None:
                # Refused by the importer, read by phonenumbers: only numbers without an area code.
                assert mine is not None and "no area code" in mine, (region, raw, theirs)
    assert read > 1000


def test_the_00_short_cut_is_taken_for_plain_international_forms() -> None:
    reader = PhoneReader("US")
    for raw, e164 in [("00447400000005", "+447400000005"), ("0049 151 00000007", "+4915100000007")]:
        assert reader._read_international(raw) == (e164, "")
        assert normalise_phone(raw, "US").e164 == e164
    # In a region dialling 00 abroad it is the same number; a national number is not.
    assert PhoneReader("DE")._read_international("00447400000005") == ("+447400000005", "")
    assert PhoneReader("US")._read_international("0044123456") is None  # 10 digits: a US number to parse
