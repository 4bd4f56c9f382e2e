"""The import's identity filter (``IdentityFilter``, importer rule 6): the store looks up the
holders of the identities the filter marks only, and finds the same duplicates as when it looks
up every one; another writer during the import turns the filter off."""

from __future__ import annotations

import asyncio
import os
import pickle
import random
import signal
import sqlite3
import time
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from customers.importer import WORKER_MIN_BYTES, ImportReport, import_file, mapping_from_dict, read_state
from customers.sqlite_store import SQLiteStore
from customers.store import IdentityFilter, PlainCustomer
from tests.customers.test_customers_cli import cli

ROOT = Path(__file__).resolve().parents[2]
UNIT = float(os.environ.get("CALLBRIDGE_TEST_TIMEOUT_UNIT", "1"))

MAPPING = mapping_from_dict(
    {
        "source": "crm",
        "key": "id",
        "given_name": "first",
        "family_name": "last",
        "phones": [{"column": "mobile", "label": "mobile"}, {"column": "office", "shared": True}],
        "emails": "email",
        "member": "card",
    }
)


def make_csv(path: Path, rows: int, seed: int = 3) -> Path:
    """Rows with phones and emails drawn from small pools (so repeats within a batch and across
    batches), repeated keys, rows the converter rejects and one the store refuses."""
    rng = random.Random(seed)
    lines = ["id,first,last,mobile,office,email,card"]
    for n in range(rows):
        key = rng.randrange(rows + rows // 10)  # ~9% repeat an earlier key
        mobile = f"(415) 555-{rng.randrange(400):04d}"
        office = f"+1 212 555 {rng.randrange(20):04d}" if rng.random() < 0.3 else ""
        email = f"p{rng.randrange(rows)}@example.com" if rng.random() < 0.9 else ""
        card = f"M-{n}"
        last = "Doe" if n % 97 else "x" * 1001  # the store refuses a field over 1000 characters
        if n % 89 == 5:
            mobile = "555-0123"  # no area code: rejected by the converter
        lines.append(f"{key},P{n},{last},{mobile},{office},{email},{card}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def contents(path: Path) -> list[tuple[Any, ...]]:
    """Every customer and identity stored, ids replaced by the import key of their profile."""
    with closing(sqlite3.connect(path)) as conn:
        key = dict(conn.execute("SELECT id, coalesce(import_key, display_name) FROM customers"))
        rows: list[tuple[Any, ...]] = [
            ("customer", *row)
            for row in conn.execute(
                "SELECT import_key, display_name, given_name, family_name, attributes, source FROM customers "
                "ORDER BY import_key"
            )
        ]
        rows += sorted(
            ("identity", key[cid], kind, system, value, raw, label, shared)
            for cid, kind, system, value, raw, label, shared in conn.execute(
                "SELECT customer_id, kind, system, value, raw, label, shared FROM identities"
            )
        )
    return rows


def findings(path: Path, report: ImportReport) -> list[tuple[Any, ...]]:
    with closing(sqlite3.connect(path)) as conn:
        key = dict(conn.execute("SELECT id, coalesce(import_key, display_name) FROM customers"))
    return [
        (f.row, f.identity.kind.value, f.identity.value, tuple(key[h] for h in f.holders))
        for f in report.duplicate_findings
    ]


async def seeded_store(path: Path) -> None:
    """A profile made by hand before the import, holding a number and an email rows use."""
    async with SQLiteStore(path) as store:
        await store.create_customer(
            "Walk In", identities=[("phone", "(415) 555-0007"), ("email", "p3@example.com")]
        )


@pytest.mark.parametrize("workers", [0, 1])
async def test_filtered_import_finds_what_checking_every_identity_finds(tmp_path: Path, workers: int) -> None:
    source = make_csv(tmp_path / "crm.csv", 600)
    results = {}
    for filtered in (True, False):
        db = tmp_path / f"{filtered}.db"
        await seeded_store(db)
        async with SQLiteStore(db) as store:
            report = await import_file(
                store,
                source,
                MAPPING,
                batch=50,
                rejects=tmp_path / f"{filtered}.rejects.csv",
                state=False,
                workers=workers,
                filter_identities=filtered,
            )
        results[filtered] = (
            report.totals(),
            findings(db, report),
            contents(db),
            (tmp_path / f"{filtered}.rejects.csv").read_text(encoding="utf-8"),
        )
    assert results[True] == results[False]
    totals, found, _, rejects = results[True]
    assert totals["duplicates"] > 50 and totals["rejected"] >= 10 and totals["repeated"] > 10
    assert any(holders == ("Walk In",) for _, _, _, holders in found)  # a holder from before
    assert "longer than 1000 characters" in rejects


def plain(key: str, phone: str) -> PlainCustomer:
    return (key, key, ("", "", "", "", "", ""), {}, (("phone", "", phone, phone, "", "", 0, 0),), None)


async def filtered_batches(store: SQLiteStore, *batches: list[PlainCustomer]) -> list[Any]:
    seen = await store.identity_filter(expected=100, max_stored=1000)
    assert seen is not None
    results = []
    for batch in batches:
        results.append(await store.create_prepared(store.plain_preparer("import:t")(batch, seen)))
    return results


async def test_a_write_through_the_same_store_turns_the_filter_off(tmp_path: Path) -> None:
    async with SQLiteStore(tmp_path / "c.db") as store:
        seen = await store.identity_filter(expected=100, max_stored=1000)
        assert seen is not None
        first = await store.create_prepared(
            store.plain_preparer("import:t")([plain("t:1", "+14155550001")], seen)
        )
        # Between two batches someone else gives a number of the next batch to a profile.
        other = await store.create_customer("Other", identities=[("phone", "+14155550002")])
        second = await store.create_prepared(
            store.plain_preparer("import:t")([plain("t:2", "+14155550002")], seen)
        )
    assert first.duplicates == ()
    assert [(i.value, holders) for _, i, holders in second.duplicates] == [("+14155550002", (other.id,))]


async def test_a_write_from_another_connection_turns_the_filter_off(tmp_path: Path) -> None:
    db = tmp_path / "c.db"
    async with SQLiteStore(db) as store:
        seen = await store.identity_filter(expected=100, max_stored=1000)
        assert seen is not None
        await store.create_prepared(store.plain_preparer("import:t")([plain("t:1", "+14155550001")], seen))
        async with SQLiteStore(db) as service:  # a live service on the same file
            other = await service.create_customer("Other", identities=[("phone", "+14155550002")])
        second = await store.create_prepared(
            store.plain_preparer("import:t")([plain("t:2", "+14155550002")], seen)
        )
    assert [(i.value, holders) for _, i, holders in second.duplicates] == [("+14155550002", (other.id,))]


async def test_the_filter_holds_what_the_store_held(tmp_path: Path) -> None:
    async with SQLiteStore(tmp_path / "c.db") as store:
        held = await store.create_customer("Held", identities=[("phone", "+14155550009")])
        first, second = await filtered_batches(
            store,
            [plain("t:1", "+14155550009"), plain("t:2", "+14155550010")],
            [plain("t:3", "+14155550010")],
        )
        assert await store.identity_filter(expected=10, max_stored=2) is None  # 3 stored: too many
    assert [(i.value, h) for _, i, h in first.duplicates] == [("+14155550009", (held.id,))]
    assert [(i.value, h) for _, i, h in second.duplicates] == [("+14155550010", (first.created[1],))]


def test_a_clear_bit_proves_a_key_new() -> None:
    seen = IdentityFilter(1000, "t")
    keys = [("phone", "", f"+1415555{n:04d}") for n in range(1000)]
    assert [seen.seen(key) for key in keys].count(True) < 20  # only collisions, ~0.1%
    assert all(seen.seen(key) for key in keys)


def test_a_prepared_batch_crosses_the_process_boundary_whole() -> None:
    """A worker's batch is pickled as one string (``_pack``); the writer gets every parameter back
    as it was, or the plain pickle when the text holds the separator or the rows differ in shape."""
    batch = [plain(f"t:{n}", f"+1415555{n:04d}") for n in range(5)]
    batch[1] = (*batch[1][:4], (*batch[1][4], ("email", "", "a@b.c", "A@b.c", "home", "", 1, 0)), 42.0)
    batch[2] = ("t:2", "x" * 1001, *batch[2][2:])  # refused by the store
    unusual = ("t:9", "Tab\x1fbed", *batch[0][2:])
    store = SQLiteStore(":memory:")
    seen = IdentityFilter(100, "tok")
    for rows, how in ((batch, "_unpack"), ([*batch, unusual], "_Prepared")):
        prepared = store.plain_preparer("import:t")(rows, seen)
        assert prepared.__reduce__()[0].__name__ == how
        again = pickle.loads(pickle.dumps(prepared))
        assert type(again) is type(prepared)
        for name in (
            "now",
            "rejected",
            "indexes",
            "customers",
            "counts",
            "identities",
            "values",
            "checks",
            "token",
        ):
            assert getattr(again, name) == getattr(prepared, name), name
        assert [type(value) for value in again.identities[0]] == [
            type(value) for value in prepared.identities[0]
        ]
    assert len(prepared.rejected) == 1 and prepared.values is not None


def mapping_yaml(path: Path) -> Path:
    path.write_text(
        "source: crm\nkey: id\ngiven_name: first\nfamily_name: last\n"
        "phones: [{column: mobile, label: mobile}, {column: office, shared: true}]\n"
        "emails: email\nmember: card\n",
        encoding="utf-8",
    )
    return path


async def holders_of_duplicates(path: Path) -> list[tuple[str, str, tuple[str, ...]]]:
    with closing(sqlite3.connect(path)) as conn:
        key = dict(conn.execute("SELECT id, coalesce(import_key, display_name) FROM customers"))
    async with SQLiteStore(path) as store:
        found = await store.duplicate_identities(limit=100_000)
    return sorted((i.kind.value, i.value, tuple(sorted(key[h] for h in holders))) for i, holders in found)


def test_a_sigkilled_filtered_import_resumed_and_run_again_ends_as_an_uninterrupted_one(
    tmp_path: Path,
) -> None:
    """A real CLI import (worker process, filter, batches of 400) killed with SIGKILL mid-way,
    resumed, then run again: the same customers, identities and duplicates as one import that
    ran through, no profile twice."""
    rows = 20_000
    source = make_csv(tmp_path / "crm.csv", rows)
    assert source.stat().st_size > WORKER_MIN_BYTES  # converted in a worker process
    mapping = mapping_yaml(tmp_path / "crm.yaml")
    whole, killed = tmp_path / "whole.db", tmp_path / "killed.db"
    args = ["import", str(source), "--mapping", str(mapping), "--batch", "400", "--quiet"]
    done = cli("--database", str(whole), *args, "--state", str(tmp_path / "whole.json"))
    out, err = done.communicate(timeout=300 * UNIT)
    assert done.returncode == 0, err

    state_path = tmp_path / "killed.json"
    proc = cli("--database", str(killed), *args, "--state", str(state_path))
    try:
        deadline = time.monotonic() + 180 * UNIT
        while time.monotonic() < deadline and proc.poll() is None:
            state = read_state(state_path)
            if state is not None and state["last_row"] >= rows // 3:
                break
            time.sleep(0.02)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30 * UNIT)
    assert proc.returncode == -signal.SIGKILL
    state = read_state(state_path)
    assert state is not None and not state["complete"] and state["last_row"] < rows

    resumed = cli("--database", str(killed), *args, "--state", str(state_path), "--resume")
    out, err = resumed.communicate(timeout=300 * UNIT)
    assert resumed.returncode == 0, err
    assert contents(killed) == contents(whole)
    assert asyncio.run(holders_of_duplicates(killed)) == asyncio.run(holders_of_duplicates(whole))

    again = cli("--database", str(killed), *args, "--state", str(state_path))
    out, err = again.communicate(timeout=300 * UNIT)
    assert again.returncode == 0, err
    assert " created 0 " in out, out
    assert contents(killed) == contents(whole)
