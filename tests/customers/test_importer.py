"""The importer against a real SQLite store and real files: CSV and JSON lines, rejects with row
numbers and reasons, idempotent re-runs, duplicates, checkpoints and resume."""

from __future__ import annotations

import asyncio
import csv
import dataclasses
import io
import json
import random
from collections.abc import AsyncIterator
from pathlib import Path

import phonenumbers
import pytest

from customers.identities import normalise_phone
from customers.importer import (
    CheckpointMismatch,
    ImportMapping,
    ImportProgress,
    MappingError,
    PhoneReader,
    RowConverter,
    default_rejects_path,
    default_state_path,
    import_file,
    infer_mapping,
    load_mapping,
    read_records,
    read_state,
)
from customers.model import IdentityKind
from customers.sqlite_store import SQLiteStore
from customers.store import InvalidInput

ROOT = Path(__file__).resolve().parents[2]

MAPPING = """\
source: crm
key: customer_no
given_name: first
family_name: last
company: company
phones:
  - {column: mobile, label: mobile}
  - {column: office, label: switchboard, shared: true}
emails: email
attributes:
  tier: tier
  notes: notes
"""


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    opened = SQLiteStore(tmp_path / "customers.db")
    async with opened:
        yield opened


def write(path: Path, text: str) -> Path:
    path.write_bytes(text.encode("utf-8"))
    return path


def rejects_of(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as file:
        return list(csv.DictReader(file))


async def key_holder(store: SQLiteStore, key: str) -> str | None:
    found = await store.lookup(IdentityKind.EXTERNAL, key, system="key")
    return found[0].customer.id if found else None


CSV_WITH_BAD_ROWS = (
    "customer_no,first,last,company,mobile,office,email,tier,notes\n"  # line 1
    "1,Ada,Lovelace,,(415) 555-0101,,ada@example.com,gold,\n"  # 2: good
    "2,Bad,Phone,,12ab,,bad.phone@example.com,,\n"  # 3: bad phone
    "3,,,,(415) 555-0103,,noname@example.com,,\n"  # 4: no name
    "4,Bad,Email,,(415) 555-0104,,not-an-email,,\n"  # 5: bad email
    '5,"Bob "the builder",Smith,,(415) 555-0105,,,,\n'  # 6: malformed quoting
    '6,Grace,Hopper,,(415) 555-0106,,,,"two\nlines"\n'  # 7-8: a quoted line break, good
    "7,Too,Many,,(415) 555-0107,,,,,surplus\n"  # 9: a field more than the header
    '8,"Open,Quote,,(415) 555-0108,,,,\n'  # 10: a quote never closed...
    "9,Alan,Turing,,+44 20 7946 0958,,alan@example.co.uk,,\n"  # 11: ...must not swallow this
    "10,Local,Only,,555-0110,,,,\n"  # 12: no area code
    "11,Edsger,Dijkstra,ACME,,(415) 555-0199 ext. 12,,,\n"  # 13: good, shared office number
)


async def test_csv_good_rows_stored_bad_rows_rejected_with_row_number_and_reason(
    store: SQLiteStore, tmp_path: Path
) -> None:
    source = write(tmp_path / "crm.csv", CSV_WITH_BAD_ROWS)
    mapping = load_mapping(write(tmp_path / "mapping.yaml", MAPPING))
    mapping = dataclasses.replace(mapping, max_record_lines=3)

    report = await import_file(store, source, mapping, batch=3)

    assert report.complete and not report.interrupted
    assert (report.rows, report.created, report.rejected) == (11, 4, 7)
    rejects = rejects_of(default_rejects_path(source))
    by_row = {int(r["row"]): r for r in rejects}
    assert sorted(by_row) == [3, 4, 5, 6, 9, 10, 12]
    assert "mobile: not a phone number: '12ab'" in by_row[3]["reason"]
    assert by_row[4]["reason"].startswith("no name: first, last, company empty")
    assert "email: not an email address: 'not-an-email'" in by_row[5]["reason"]
    assert by_row[6]["reason"].startswith("malformed CSV")
    assert by_row[6]["raw"] == '5,"Bob "the builder",Smith,,(415) 555-0105,,,,'
    assert "10 fields but the header has 9" in by_row[9]["reason"]
    assert "quoted field is still open after 3 lines" in by_row[10]["reason"]
    assert by_row[10]["raw"] == '8,"Open,Quote,,(415) 555-0108,,,,'
    assert "no area code" in by_row[12]["reason"]
    assert len(rejects) == 7  # row 10's open quote: its own line only

    ada = await store.lookup_phone("+1 415 555 0101")
    assert [c.customer.display_name for c in ada] == ["Ada Lovelace"]
    assert ada[0].customer.attributes == {"tier": "gold"}
    phone = next(i for i in ada[0].customer.identities if i.kind is IdentityKind.PHONE)
    assert (phone.raw, phone.label, phone.source) == ("(415) 555-0101", "mobile", "import:crm")
    grace = (await store.lookup_phone("4155550106"))[0].customer
    assert grace.attributes["notes"] == "two\nlines"
    assert [c.customer.display_name for c in await store.lookup_phone("+442079460958")] == ["Alan Turing"]
    edsger = (await store.lookup_phone("(415) 555-0199"))[0].customer
    office = next(i for i in edsger.identities if i.kind is IdentityKind.PHONE)
    assert (office.extension, office.shared, office.label) == ("12", True, "switchboard")
    assert await key_holder(store, "crm:11") == edsger.id
    for rejected_key in ("crm:2", "crm:3", "crm:4", "crm:10"):
        assert await key_holder(store, rejected_key) is None


async def test_jsonl_rows_nested_paths_lists_and_bad_lines(store: SQLiteStore, tmp_path: Path) -> None:
    lines = [
        {"id": "a1", "name": "Ada Lovelace", "contact": {"phones": ["+1 415 555 0101", "415-555-0201"]}},
        "{not json",
        {"id": "a2", "name": "Grace Hopper", "contact": {"email": "GRACE@Example.com"}, "score": 72.5},
        ["a", "list"],
        "",
        {"id": "a3", "name": "", "contact": {"email": "x@example.com"}},
        {"id": 4, "name": "Alan Turing", "contact": {"email": "alan@example.co.uk"}, "vip": True},
    ]
    text = "\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n"
    source = write(tmp_path / "shop.jsonl", text)
    mapping = write(
        tmp_path / "shop.yaml",
        "source: shop\nkey: id\ndisplay_name: name\nphones: {column: contact.phones, label: mobile}\n"
        "emails: contact.email\nvalue: score\nattributes: {vip: {column: vip, type: bool}}\n",
    )

    report = await import_file(store, source, mapping)

    assert (report.format, report.rows, report.created, report.rejected) == ("jsonl", 6, 3, 3)
    by_row = {int(r["row"]): r for r in rejects_of(default_rejects_path(source))}
    assert sorted(by_row) == [2, 4, 6]
    assert by_row[2]["reason"].startswith("not valid JSON") and by_row[2]["raw"] == "{not json"
    assert by_row[4]["reason"] == "a JSON list, not an object"
    assert by_row[6]["reason"].startswith("no name")
    ada = (await store.lookup_phone("(415) 555-0201"))[0].customer
    assert ada.id == (await store.lookup_phone("+14155550101"))[0].customer.id
    grace = (await store.lookup(IdentityKind.EMAIL, "grace@example.com"))[0].customer
    assert (await store.value(grace.id)) is not None
    alan = (await store.lookup(IdentityKind.EMAIL, "alan@example.co.uk"))[0].customer
    assert alan.attributes == {"vip": True}
    assert await key_holder(store, "shop:4") == alan.id


async def test_a_rerun_creates_nothing_new_with_a_key_column_or_a_row_hash(
    store: SQLiteStore, tmp_path: Path
) -> None:
    keyed = write(tmp_path / "keyed.csv", "id,name,phone\n1,Ada,4155550101\n2,Bob,4155550102\n")
    unkeyed = write(
        tmp_path / "plain.csv", "name,phone\nCarol,4155550103\nDan,4155550104\nCarol,4155550103\n"
    )

    first = [await import_file(store, path, None) for path in (keyed, unkeyed)]
    again = [await import_file(store, path, None) for path in (keyed, unkeyed)]

    assert [(r.created, r.updated, r.repeated) for r in first] == [(2, 0, 0), (2, 0, 1)]
    assert [(r.created, r.updated, r.repeated) for r in again] == [(0, 2, 0), (0, 2, 1)]
    # The repeated Carol row has the same content, so the same hashed key: one profile.
    assert len(await store.lookup_phone("4155550103")) == 1
    assert await key_holder(store, "keyed:1") is not None
    assert first[1].mapping is not None and first[1].mapping.key is None


async def test_a_key_repeated_within_one_batch_updates_one_profile(
    store: SQLiteStore, tmp_path: Path
) -> None:
    source = write(
        tmp_path / "repeat.csv",
        "id,name,phone,email\n7,Ada,4155550101,\n8,Bob,4155550102,\n7,Ada,,ada@example.com\n",
    )
    report = await import_file(store, source, None, batch=100)
    assert (report.created, report.updated, report.repeated) == (2, 0, 1)
    ada = (await store.lookup(IdentityKind.EMAIL, "ada@example.com"))[0].customer
    assert {i.value for i in ada.identities} == {"+14155550101", "ada@example.com"}


async def test_duplicates_across_profiles_are_reported_with_row_and_holders(
    store: SQLiteStore, tmp_path: Path
) -> None:
    source = write(
        tmp_path / "dups.csv",
        "id,name,phone,email\n1,Ada,4155550101,ada@example.com\n2,Bob,4155550102,\n"
        "3,Ada L.,(415) 555-0101,\n",
    )
    report = await import_file(store, source, None)

    assert report.duplicates == 1
    [finding] = report.duplicate_findings
    ada_id = await key_holder(store, "dups:1")
    assert (finding.row, finding.identity.value, finding.holders) == (4, "+14155550101", (ada_id,))
    [(identity, holders)] = await store.duplicate_identities()
    assert identity.value == "+14155550101" and set(holders) == {ada_id, await key_holder(store, "dups:3")}


async def test_rows_the_store_refuses_go_to_the_reject_file_with_their_row(
    store: SQLiteStore, tmp_path: Path
) -> None:
    long_name = "x" * 1200
    source = write(
        tmp_path / "long.csv", f"id,name,phone\n1,Ada,4155550101\n2,{long_name},4155550102\n3,Cy,\n"
    )
    rejects = tmp_path / "out" / "refused.csv"
    report = await import_file(store, source, None, rejects=rejects)
    assert (report.created, report.rejected) == (2, 1)
    [reject] = rejects_of(rejects)
    assert reject["row"] == "3" and "longer than 1000 characters" in reject["reason"]
    assert reject["raw"] == f"2,{long_name},4155550102"


async def test_bad_utf8_is_one_rejected_row_and_a_bom_is_ignored(store: SQLiteStore, tmp_path: Path) -> None:
    source = tmp_path / "latin.csv"
    source.write_bytes(b"\xef\xbb\xbfid,name\n1,Ada\n2,Jos\xe9\n3,Zo\xc3\xab\n")
    report = await import_file(store, source, None)
    assert (report.created, report.rejected) == (2, 1)
    [reject] = rejects_of(default_rejects_path(source))
    assert (reject["row"], reject["reason"]) == ("3", "not utf-8 text")
    assert (await store.search("Zoë"))[0].display_name == "Zoë"


async def test_stop_checkpoints_after_the_batch_and_resume_finishes_exactly(
    store: SQLiteStore, tmp_path: Path
) -> None:
    rows = ["id,name,phone"] + [f"{i},Person {i},415555{i:04d}" for i in range(1, 501)]
    rows[100] = "100,,4155550100"  # rejected before the stop
    rows[400] = "400,,4155550400"  # rejected after it
    source = write(tmp_path / "big.csv", "\n".join(rows) + "\n")
    stop = asyncio.Event()
    seen: list[ImportProgress] = []

    def progress(p: ImportProgress) -> None:
        seen.append(p)
        if p.rows >= 200:
            stop.set()

    first = await import_file(store, source, None, batch=50, progress=progress, stop=stop)

    assert first.interrupted and not first.complete
    state = read_state(default_state_path(source))
    assert state is not None and not state["complete"]
    assert state["last_row"] == first.last_row and first.last_row >= 201
    for i in range(1, first.last_row):
        if i != 100:
            assert await key_holder(store, f"big:{i}") is not None, i
    assert await key_holder(store, f"big:{first.last_row + 1}") is None
    assert seen and seen[-1].bytes_done <= seen[-1].bytes_total

    second = await import_file(store, source, None, batch=50, resume=True)

    assert second.complete and second.resumed_at == first.last_row + 1
    totals = second.totals()
    assert (totals["rows"], totals["created"], totals["rejected"]) == (500, 498, 2)
    assert [r["row"] for r in rejects_of(default_rejects_path(source))] == ["101", "401"]
    done = await import_file(store, source, None, resume=True)
    assert done.complete and done.rows == 0


async def test_resume_refuses_a_changed_input_or_mapping(store: SQLiteStore, tmp_path: Path) -> None:
    source = write(tmp_path / "a.csv", "id,name\n" + "".join(f"{i},P{i}\n" for i in range(10)))
    stop = asyncio.Event()
    stop.set()
    await import_file(store, source, None, batch=2, stop=stop)
    with pytest.raises(CheckpointMismatch, match="mapping differs"):
        await import_file(store, source, ImportMapping(key="id", display_name=("id",)), resume=True)
    write(source, source.read_text() + "10,P10\n")
    with pytest.raises(CheckpointMismatch, match="changed since the checkpoint"):
        await import_file(store, source, None, resume=True)
    report = await import_file(store, source, None)  # without --resume: from the start
    assert report.complete and report.rows == 11


def test_mapping_errors_name_the_file_line_and_key(tmp_path: Path) -> None:
    bad = write(tmp_path / "bad.yaml", "source: crm\nphones:\n  - {colum: mobile}\nnicknames: nick\n")
    with pytest.raises(MappingError) as caught:
        load_mapping(bad)
    message = str(caught.value)
    assert f"{bad}:2: phones" in message
    assert f"{bad}: unknown key nicknames" in message


async def test_a_mapped_column_missing_from_the_header_is_refused_before_any_write(
    store: SQLiteStore, tmp_path: Path
) -> None:
    mapping = write(tmp_path / "m.yaml", "key: id\ndisplay_name: name\nemails:\n  - mail\n")
    source = write(tmp_path / "x.csv", "id,name,email\n1,Ada,ada@example.com\n")
    with pytest.raises(MappingError, match=r"m\.yaml:3: emails\[0\]: no column 'mail' in x\.csv"):
        await import_file(store, source, mapping)
    assert await store.search("Ada") == []


async def test_the_example_mapping_imports_its_documented_columns(store: SQLiteStore, tmp_path: Path) -> None:
    mapping = load_mapping(ROOT / "config/import-mapping.example.yaml")
    header = sorted({column for _, column in mapping.columns()})
    values = {
        "customer_no": "10042",
        "first_name": "Ada",
        "last_name": "Lovelace",
        "company": "Analytical Engines Ltd",
        "mobile": "(415) 555-0123",
        "home_phone": "",
        "switchboard": "+44 20 7946 0958",
        "email": "ada@example.com",
        "work_email": "",
        "loyalty_card": "7700 1234",
        "shop_id": "S-991",
        "erp_id": "",
        "whatsapp": "@ada",
        "tier": "gold",
        "credit_limit": "2500",
        "newsletter": "yes",
        "birthday": "10/12/1815",
        "tz": "Europe/London",
        "language": "en",
        "score": "88",
    }
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerow([values.get(column, "") for column in header])
    source = write(tmp_path / "crm-export.csv", buffer.getvalue())
    report = await import_file(store, source, mapping)
    assert (report.created, report.rejected) == (1, 0), rejects_of(default_rejects_path(source))
    [found] = await store.lookup_phone("+14155550123")
    ada = found.customer
    assert (ada.birthday, ada.timezone, ada.company) == (
        "1815-12-10",
        "Europe/London",
        "Analytical Engines Ltd",
    )
    assert ada.attributes == {"tier": "gold", "credit_limit": 2500.0, "newsletter": True}
    kinds = {(i.kind.value, i.system, i.value) for i in ada.identities}
    assert ("member", "", "77001234") in kinds and ("external", "shop", "S-991") in kinds
    assert ("im", "whatsapp", "ada") in kinds


def test_inferred_mapping_reads_common_header_names() -> None:
    mapping = infer_mapping(["Customer ID", "First Name", "Last Name", "Mobile", "E-mail", "Tier"])
    assert mapping.key == "Customer ID"
    assert (mapping.given_name, mapping.family_name) == ("First Name", "Last Name")
    assert [(p.column, p.label) for p in mapping.phones] == [("Mobile", "mobile")]
    assert [e.column for e in mapping.emails] == ["E-mail"]
    assert [(a.name, a.column) for a in mapping.attributes] == [("Tier", "Tier")]


def test_row_numbers_are_file_lines(tmp_path: Path) -> None:
    source = write(tmp_path / "n.csv", 'id,name,notes\n\n1,Ada,"a\nb\nc"\n2,Bob,\n')
    records = read_records(source)
    assert [(r.row, r.values["id"] if r.values else None) for r in records] == [(3, "1"), (6, "2")]
    converter = RowConverter(infer_mapping(["id", "name", "notes"]), source="n", region="US")
    assert [getattr(converter.convert(r), "key", None) for r in records] == ["n:1", "n:2"]


def test_the_phone_short_cut_agrees_with_the_store_reading() -> None:
    rng = random.Random(7)
    codes = sorted(phonenumbers.COUNTRY_CODE_TO_REGION_CODE)
    regions = ["US", "CA", "PR", "AG", "GB", "DE", "FR", "IT", "MX", "AR", "BR", "IN", "CN", "JP", "AU", "CH"]
    compared = 0
    for region in regions:
        reader = PhoneReader(region)
        for _ in range(600):
            digits = "".join(rng.choice("0123456789") for _ in range(rng.randint(4, 14)))
            raw = rng.choice(
                [
                    digits,
                    f"+{rng.choice(codes)} {digits}",
                    f"+{rng.choice(codes)}{digits}",
                    f"({digits[:3]}) {digits[3:6]}-{digits[6:]}",
                    f"1{digits}",
                    f"+1 {digits[:3]}.{digits[3:6]}.{digits[6:]}",
                ]
            )
            mine = reader.read(raw)
            try:
                theirs: str | None = normalise_phone(raw, region).e164
            except InvalidInput:
                theirs = None
            if isinstance(mine, tuple):
                compared += 1
                assert mine[0] == theirs, (region, raw)
            elif theirs is not None:
                # Refused here, read by the store: only numbers without an area code.
                assert mine is not None and "no area code" in mine, (region, raw, theirs)
    assert compared > 2000


@pytest.mark.parametrize("batch", [2, 3, 100])
async def test_converting_in_a_worker_process_stores_and_rejects_the_same(tmp_path: Path, batch: int) -> None:
    long_name = "x" * 1200  # refused by the store, not by the converter
    text = CSV_WITH_BAD_ROWS + f"12,{long_name},,,,,,,\n13,Ada,Again,,(415) 555-0101,,,,\n"
    mapping = dataclasses.replace(load_mapping(write(tmp_path / "mapping.yaml", MAPPING)), max_record_lines=3)
    results = []
    for workers in (0, 1):
        source = write(tmp_path / f"crm{workers}.csv", text)
        async with SQLiteStore(tmp_path / f"customers{workers}.db") as store:
            report = await import_file(store, source, mapping, batch=batch, source="crm", workers=workers)
            ada = await store.lookup_phone("+14155550101")
            results.append(
                (
                    report.counts(),
                    report.last_row,
                    [(f.row, f.identity.value) for f in report.duplicate_findings],
                    rejects_of(default_rejects_path(source)),
                    read_state(default_state_path(source)) is not None,
                    sorted(c.customer.display_name for c in ada),
                )
            )
    assert results[0] == results[1]
    counts, last_row, duplicates, rejects, _, ada_names = results[1]
    assert (counts["rows"], counts["rejected"], last_row) == (13, 8, 15)
    assert duplicates == [(15, "+14155550101")] and ada_names == ["Ada Again", "Ada Lovelace"]
    assert [int(r["row"]) for r in rejects] == [3, 4, 5, 6, 9, 10, 12, 14]


async def test_stop_with_a_worker_process_checkpoints_only_committed_batches(
    store: SQLiteStore, tmp_path: Path
) -> None:
    rows = ["id,name,phone"] + [f"{i},Person {i},415555{i:04d}" for i in range(1, 501)]
    rows[400] = "400,,4155550400"  # read ahead of the stop: rejected by the resume only
    source = write(tmp_path / "big.csv", "\n".join(rows) + "\n")
    stop = asyncio.Event()

    def progress(p: ImportProgress) -> None:
        if p.rows >= 200:
            stop.set()

    first = await import_file(store, source, None, batch=50, progress=progress, stop=stop, workers=1)

    assert first.interrupted and first.rows == 200 and first.last_row == 201
    assert await key_holder(store, "big:200") is not None
    assert await key_holder(store, "big:201") is None  # converted ahead, never stored
    assert not default_rejects_path(source).exists()
    second = await import_file(store, source, None, batch=50, resume=True, workers=1)
    totals = second.totals()
    assert second.complete and (totals["rows"], totals["created"], totals["rejected"]) == (500, 499, 1)
    assert [r["row"] for r in rejects_of(default_rejects_path(source))] == ["401"]
