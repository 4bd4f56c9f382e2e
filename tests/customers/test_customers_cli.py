"""``callbridge customers``: import (a real process, SIGKILLed mid-way, then resumed), find,
merge, duplicates, against real SQLite files."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from callbridge.cli import main
from callbridge.customers_cli import ProgressLine
from customers.importer import ImportProgress, default_rejects_path, default_state_path, read_state
from customers.model import Channel, IdentityKind
from customers.sqlite_store import SQLiteStore

ROOT = Path(__file__).resolve().parents[2]
UNIT = float(os.environ.get("CALLBRIDGE_TEST_TIMEOUT_UNIT", "1"))

ROWS = 50_000
BAD_ROWS = {137: "bad phone", 12_001: "no name", 33_333: "bad email", 49_990: "bad phone"}


def big_csv(path: Path, rows: int = ROWS) -> Path:
    """``rows`` customers (key ``n``), the ``BAD_ROWS`` among them bad; row n is on line n + 1."""
    lines = ["n,first,last,phone,email,tier"]
    for n in range(1, rows + 1):
        phone = f"(212) {200 + n // 10_000:03d}-{n % 10_000:04d}"
        first, email = f"First{n}", f"p{n}@example.com"
        problem = BAD_ROWS.get(n)
        if problem == "bad phone":
            phone = "12ab"
        elif problem == "no name":
            first = ""
        elif problem == "bad email":
            email = "nobody-at-example.com"
        last = "" if problem == "no name" else f"Last{n}"
        lines.append(f"{n},{first},{last},{phone},{email},{'gold' if n % 7 == 0 else ''}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def mapping_file(path: Path) -> Path:
    path.write_text(
        "source: crm\nkey: n\ngiven_name: first\nfamily_name: last\nphones: {column: phone, label: mobile}\n"
        "emails: email\nattributes: {tier: tier}\n",
        encoding="utf-8",
    )
    return path


def cli(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "callbridge", "customers", *args],
        cwd=ROOT,
        env=os.environ | {"PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(proc: subprocess.Popen[str], timeout: float) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


async def keys_present(database: Path, keys: list[str]) -> list[str]:
    async with SQLiteStore(database) as store:
        return [key for key in keys if await store.lookup(IdentityKind.EXTERNAL, key, system="key")]


async def count_customers(database: Path) -> int:
    async with SQLiteStore(database) as store:
        return sum([len(batch) async for batch in store.iter_facts()])


def test_a_sigkilled_import_keeps_every_checkpointed_row_and_resume_completes_it(tmp_path: Path) -> None:
    source = big_csv(tmp_path / "crm.csv")
    mapping = mapping_file(tmp_path / "crm.yaml")
    database = tmp_path / "var" / "customers.db"
    state_path = default_state_path(source)
    common = ["--database", str(database), "import", str(source), "--mapping", str(mapping)]

    proc = cli(*common, "--batch", "500")
    try:
        wait_for_checkpoint(proc, state_path, 9_000)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL

    state = read_state(state_path)
    assert state is not None and not state["complete"]
    committed = state["last_row"] - 1  # row n is on line n + 1
    assert 9_000 <= committed < ROWS - 1000
    expected = [f"crm:{n}" for n in range(1, committed + 1) if n not in BAD_ROWS]
    present = asyncio.run(keys_present(database, expected))
    assert len(present) == len(expected), f"{len(expected) - len(present)} committed rows missing"
    assert asyncio.run(count_customers(database)) >= len(expected)

    code, out, err = finish(cli(*common, "--resume", "--quiet"), 300 * UNIT)
    assert code == 0, err
    assert f"with the earlier runs (resumed at row {state['line']})" in out
    good = ROWS - len(BAD_ROWS)
    assert asyncio.run(count_customers(database)) == good
    sample = [f"crm:{n}" for n in (1, committed, committed + 1, ROWS // 2, ROWS) if n not in BAD_ROWS]
    assert asyncio.run(keys_present(database, sample)) == sample
    with open(default_rejects_path(source), newline="", encoding="utf-8") as file:
        rejects = list(csv.DictReader(file))
    assert [int(r["row"]) - 1 for r in rejects] == sorted(BAD_ROWS), "each bad row once, in order"
    assert "not a phone number: '12ab'" in rejects[0]["reason"]
    final = read_state(state_path)
    assert final is not None and final["complete"]
    assert final["counts"]["rejected"] == len(BAD_ROWS)

    code, out, err = finish(cli(*common, "--quiet"), 300 * UNIT)
    assert code == 0, err
    assert f"created 0  updated {good:,}" in out, out
    assert asyncio.run(count_customers(database)) == good


def wait_for_checkpoint(proc: subprocess.Popen[str], state_path: Path, last_row: int) -> None:
    deadline = time.monotonic() + 180 * UNIT
    while time.monotonic() < deadline and proc.poll() is None:
        state = read_state(state_path)
        if state is not None and state["last_row"] >= last_row:
            return
        time.sleep(0.05)
    raise AssertionError(f"no checkpoint past row {last_row}: {proc.poll()=}")


def test_sigterm_commits_the_batch_in_flight_checkpoints_and_exits_130(tmp_path: Path) -> None:
    rows = 20_000
    source = big_csv(tmp_path / "crm.csv", rows)
    database = tmp_path / "customers.db"
    common = [
        "--database",
        str(database),
        "import",
        str(source),
        "--mapping",
        str(mapping_file(tmp_path / "m.yaml")),
    ]
    proc = cli(*common, "--batch", "500")
    try:
        wait_for_checkpoint(proc, default_state_path(source), 1_500)
        proc.send_signal(signal.SIGTERM)
        code, out, err = finish(proc, 60 * UNIT)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert code == 130, err
    assert "SIGTERM: stopping after the current batch" in err
    state = read_state(default_state_path(source))
    assert state is not None and not state["complete"]
    assert "): interrupted in" in out
    assert f"committed up to row {state['last_row']}; run again with --resume to continue" in out
    stored = asyncio.run(count_customers(database))
    assert stored == state["counts"]["created"] and stored < rows

    code, out, err = finish(cli(*common, "--resume", "--quiet"), 300 * UNIT)
    assert code == 0, err
    assert asyncio.run(count_customers(database)) == rows - len([n for n in BAD_ROWS if n <= rows])


SMALL = """\
id,name,phone,email,company
1,Ada Lovelace,(415) 555-0101,Ada@Example.com,
2,Bob Builder,415-555-0102,bob@example.com,ACME
3,Bobby Builder,+1 415 555 0102,,ACME
4,,415-555-0104,,
"""


def import_small(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[Path, str]:
    source = tmp_path / "people.csv"
    source.write_text(SMALL, encoding="utf-8")
    database = tmp_path / "c.db"
    code = main(["customers", "--database", str(database), "import", str(source), "--quiet"])
    out = capsys.readouterr().out
    assert code == 0
    return database, out


def find(database: Path, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["customers", "--database", str(database), "find", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_import_summary_reports_rejects_and_duplicates(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    database, out = import_small(tmp_path, capsys)
    assert "rows read 4  created 3  updated 0  rejected 1  duplicates 1" in out
    assert f"rejected rows (row, reason, raw): {tmp_path / 'people.csv.rejects.csv'}" in out
    assert "duplicate: row 4 phone +14155550102 is also on" in out
    code = main(["customers", "--database", str(database), "duplicates"])
    listing = capsys.readouterr().out
    assert code == 0
    assert "phone +14155550102" in listing and "Bob Builder" in listing and "Bobby Builder" in listing


def test_find_by_any_phone_form_email_key_or_id_prints_the_same_profile(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    database, _ = import_small(tmp_path, capsys)
    outputs = []
    for query in ("(415) 555-0101", "+1 415 555 0101", "14155550101", "415.555.0101", "ADA@example.com"):
        code, out, _ = find(database, capsys, query)
        assert code == 0
        outputs.append("\n".join(line for line in out.splitlines() if not line.startswith("  matched:")))
    assert len(set(outputs)) == 1
    assert outputs[0].startswith("Ada Lovelace  [")
    code, out, _ = find(database, capsys, "(415) 555-0101", "--json")
    payload = json.loads(out)
    profile = payload["results"][0]["profile"]
    customer_id = profile["customer"]["id"]
    assert profile["customer"]["display_name"] == "Ada Lovelace"
    assert {"phone", "email"} <= {i["kind"] for i in profile["customer"]["identities"]}
    assert set(profile) >= {"latest", "notes", "consent", "value", "segments"}
    for query in (customer_id, "people:1"):
        code, out, _ = find(database, capsys, query, "--json")
        assert json.loads(out)["results"][0]["profile"]["customer"]["id"] == customer_id
    code, out, err = find(database, capsys, "+1 212 555 0000")
    assert code == 1 and "no customer matches" in err


def test_find_shows_every_holder_of_a_shared_or_duplicate_number(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    database, _ = import_small(tmp_path, capsys)
    code, out, _ = find(database, capsys, "4155550102")
    assert code == 0
    assert out.startswith("2 customers match '4155550102':")
    assert "Bob Builder  [" in out and "Bobby Builder  [" in out and "possible duplicate" in out


def test_merge_keeps_both_timelines(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    database, _ = import_small(tmp_path, capsys)

    async def prepare() -> tuple[str, str]:
        async with SQLiteStore(database) as store:
            [bob] = await store.lookup(IdentityKind.EMAIL, "bob@example.com")
            bobby = next(
                c for c in await store.lookup_phone("4155550102") if c.customer.id != bob.customer.id
            )
            await store.append_interaction(
                bob.customer.id, Channel.CALL, at=1_000.0, summary="asked for a quote"
            )
            await store.append_interaction(
                bobby.customer.id, Channel.EMAIL, at=2_000.0, summary="sent the order"
            )
            await store.add_note(bobby.customer.id, "alice", "prefers email")
            return bob.customer.id, bobby.customer.id

    keep, gone = asyncio.run(prepare())
    code = main(["customers", "--database", str(database), "merge", keep, gone])
    out = capsys.readouterr().out
    assert code == 0
    assert f"merged {gone} into {keep} (Bob Builder)" in out
    assert "asked for a quote" in out and "sent the order" in out and "prefers email" in out

    code, out, _ = find(database, capsys, gone, "--json")
    profile = json.loads(out)["results"][0]["profile"]
    assert profile["customer"]["id"] == keep
    summaries = {item["summary"] for items in profile["latest"].values() for item in items}
    assert summaries == {"asked for a quote", "sent the order"}
    code = main(["customers", "--database", str(database), "duplicates"])
    assert "no identity is held by more than one customer" in capsys.readouterr().out
    code = main(["customers", "--database", str(database), "merge", keep, keep])
    assert code == 1 and "into itself" in capsys.readouterr().err


def test_a_bad_mapping_exits_2_naming_the_file_and_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "x.csv"
    source.write_text("id,name\n1,Ada\n", encoding="utf-8")
    mapping = tmp_path / "m.yaml"
    mapping.write_text("key: id\ndisplay_name: full_name\n", encoding="utf-8")
    code = main(
        ["customers", "--database", str(tmp_path / "c.db"), "import", str(source), "--mapping", str(mapping)]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert f"{mapping}:2: display_name[0]: no column 'full_name' in x.csv" in err


def test_progress_redraws_one_line_on_a_terminal_and_prints_lines_otherwise() -> None:
    def at(rows: int, done: int) -> ImportProgress:
        return ImportProgress(rows, rows, 0, 1, 0, done, 1000, elapsed=rows / 1000)

    tty = io.StringIO()
    line = ProgressLine(tty, tty=True, every=0)
    line(at(500, 500))
    line(at(1000, 1000))
    line.finish()
    drawn = tty.getvalue()
    assert drawn.count("\r[") == 2 and "\n" not in drawn
    assert "50% 500 rows  1,000 rows/s  1 rejected  0 duplicates  ETA 0:00" in drawn

    plain = io.StringIO()
    line = ProgressLine(plain, tty=False, every=3600)
    line(at(500, 500))
    line(at(1000, 1000))
    assert plain.getvalue().splitlines() == [
        "import:  50% 500 rows  1,000 rows/s  1 rejected  0 duplicates  ETA 0:00"
    ]
