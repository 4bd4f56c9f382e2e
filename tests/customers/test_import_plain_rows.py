"""The importer's plain rows (``RowConverter.convert_plain`` + ``plain_preparer``, trusted by the
store) store exactly what the checked path (``convert`` + ``create_customers``) stores."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

from customers.importer import RowConverter, mapping_from_dict, read_records
from customers.sqlite_store import SQLiteStore

CSV = """\
id,first,last,company,tz,dob,mobile,office,email,card,shop,wa,tier,limit,score
1,Ada,Lovelace,,Europe/London,1815-12-10,(415) 555-0101,+1 415 555 0199,Ada@Example.COM,M-1 2,S-1,@Ada,\
gold,12.5,88
2,Bob,,,,,0044 20 7946 0958,00 49 30 1234567,bob@example.com,,,,,,
3,,,Acme Inc,,--02-29,14155550102,4155550199,mailto:sales@acme.example,,S-3,,,,
4,Cy,Young,,,,+33 6 12 34 56 78,,cy@example.com,M-4,,,silver,,
5,Di,Lee,,,,(415) 555-0101,,DI@example.com,,,,,,
6,Ed,Old,,,,+44 20 7946 0958,,ed@example.com,,,,,,
1,Ada,Again,,,,415.555.0103,,,,,,,,
7,"""
CSV += "x" * 1200 + ",,,,,,,,,,,,,\n"

MAPPING = {
    "key": "id",
    "given_name": "first",
    "family_name": "last",
    "company": "company",
    "timezone": "tz",
    "birthday": "dob",
    "phones": [
        {"column": "mobile", "label": " mobile "},
        {"column": "office", "label": "office", "shared": True},
    ],
    "emails": "email",
    "member": "card",
    "external": {"Shop": "shop"},
    "im": {"whatsapp": "wa"},
    "attributes": {"tier": "tier", "limit": {"column": "limit", "type": "float"}},
    "value": "score",
}


def stored(path: Path) -> list[tuple[object, ...]]:
    """Everything the rows stored, without generated ids."""
    with closing(sqlite3.connect(path)) as conn:
        number = {cid: n for n, (cid,) in enumerate(conn.execute("SELECT id FROM customers ORDER BY pk"))}
        rows: list[tuple[object, ...]] = []
        for row in conn.execute(
            "SELECT id, display_name, given_name, family_name, company, language, timezone, birthday, "
            "attributes, source, import_key, created_at, updated_at FROM customers ORDER BY pk"
        ):
            rows.append(("customer", number[row[0]], *row[1:]))
        for row in conn.execute(
            "SELECT customer_id, kind, system, value, raw, label, extension, shared, verified, source, "
            "created_at FROM identities ORDER BY kind, system, value, customer_id"
        ):
            rows.append(("identity", number[row[0]], *row[1:]))
        for row in conn.execute("SELECT customer_id, score, source, explanation FROM customer_values"):
            rows.append(("value", number[row[0]], *row[1:]))
        rows.append(
            ("names", *conn.execute("SELECT count(*) FROM customers_fts WHERE customers_fts MATCH 'ada'"))
        )
        return rows


async def test_plain_rows_store_what_checked_rows_store(tmp_path: Path) -> None:
    source = tmp_path / "crm.csv"
    source.write_text(CSV, encoding="utf-8")
    records = read_records(source)
    converter = RowConverter(mapping_from_dict(MAPPING), source="crm", region="US")
    results = []
    for name in ("checked", "plain"):
        path = tmp_path / f"{name}.db"
        async with SQLiteStore(path, clock=lambda: 1_700_000_000.0) as store:
            for half in (records[:4], records[4:]):  # the second batch meets the first's keys
                if name == "checked":
                    converted = [converter.convert(r) for r in half]
                    result = await store.create_customers([c for c in converted if not isinstance(c, str)])
                else:
                    plain = [converter.convert_plain(r) for r in half]
                    prepare = store.plain_preparer(converter.origin)
                    result = await store.create_prepared(
                        prepare([p for p in plain if not isinstance(p, str)])
                    )
                results.append(
                    (
                        len(result.created),
                        len(result.updated),
                        result.rejected,
                        [
                            (i, identity.kind.value, identity.value, holders != ())
                            for i, identity, holders in result.duplicates
                        ],
                    )
                )
        results.append(stored(path))
    checked, plain = results[:3], results[3:]
    assert checked == plain
    first, second, rows = plain
    assert (first[0], second[0], second[1]) == (4, 2, 1)  # row 1 again: an update
    assert second[2] == ((3, "given_name: longer than 1000 characters"),)
    assert [d[:3] for d in first[3] + second[3]] == [
        (0, "phone", "+14155550101"),
        (1, "phone", "+442079460958"),
    ]
    assert ("identity", 0, "email", "", "ada@example.com", "Ada@Example.COM", "", "", 0, 0, "import:crm",
            1_700_000_000.0) in rows  # fmt: skip
    assert (
        "identity",
        0,
        "external",
        "shop",
        "S-1",
        "S-1",
        "",
        "",
        0,
        0,
        "import:crm",
        1_700_000_000.0,
    ) in rows
