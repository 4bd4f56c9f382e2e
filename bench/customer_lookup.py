"""Customer store at scale: import rows/s, caller lookup and pop-profile latency on 1M customers.

    .venv/bin/python bench/customer_lookup.py                      # 1,000,000 customers
    .venv/bin/python bench/customer_lookup.py --customers 100000   # a quicker run
    .venv/bin/python bench/customer_lookup.py --reuse              # keep the generated database

1. Generates N customers into a CSV file (names, 2-3 phone numbers from US/GB/DE/FR/CN in mixed
   national, international, ``00`` and punctuated forms, an email, a member card, a birthday).
2. Imports it with ``callbridge customers import`` as a subprocess (the CLI path): rows/s.
3. Fills a timeline of ~20 interactions per customer (calls, emails, web, chat, sms, orders)
   straight into the same SQLite file (setup, not measured as a target).
4. Through the service's async store (``SQLiteStore``): caller lookup by phone in any form,
   p50/p99/max; the whole pop profile (profile + identities + latest per channel + notes +
   consent + value + segments), p50/p99/max.
5. The peer, on the same file in the same run: plain ``sqlite3`` doing the lookup with the number
   already in E.164 (no parsing, no event loop, no thread hop): the floor.

Targets on this 2-core machine: lookup p99 < 1 ms, profile p99 < 5 ms, import >= 20k rows/s.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import random
import resource
import sqlite3
import statistics
import subprocess
import sys
import time
from pathlib import Path

import phonenumbers

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from customers.sqlite_store import SQLiteStore  # noqa: E402

DATA = ROOT / "bench" / ".data"
CHANNELS = ("call", "email", "web", "chat", "sms", "order")
GIVEN = ("Jane", "John", "Maria", "Wei", "Liam", "Emma", "Noah", "Olivia", "Ahmed", "Sofia", "Lukas", "Chloé")
FAMILY = ("Doe", "Smith", "Garcia", "Chen", "Johnson", "Müller", "Martin", "Dubois", "Wang", "Brown", "Rossi")
US_AREAS = ("212", "312", "415", "617", "646", "650", "702", "718", "773", "213", "305", "404", "512", "206")


def phone_for(n: int, rng: random.Random) -> tuple[str, str]:
    """(E.164, a raw form a CRM would hold) for the n-th number, unique per n.

    US numbers come in national and international forms (the import's default region is US);
    the others in international or ``00`` forms, as a US CRM would hold them.
    """
    country = n % 10
    if country < 5:
        area = US_AREAS[n % len(US_AREAS)]
        rest = f"{2_000_000 + n // len(US_AREAS):07d}"
        e164 = f"+1{area}{rest}"
        forms = (
            f"({area}) {rest[:3]}-{rest[3:]}",
            f"{area}{rest}",
            f"1{area}{rest}",
            e164,
            f"+1 {area} {rest}",
        )
    else:
        code, digits = {5: ("44", f"74{n:08d}"), 6: ("44", f"75{n:08d}"), 7: ("49", f"151{n:08d}"),
                        8: ("33", f"6{n:08d}"), 9: ("86", f"138{n:08d}")}[country]  # fmt: skip
        e164 = f"+{code}{digits}"
        forms = (e164, f"00{code}{digits}", f"+{code} {digits[:4]} {digits[4:]}")
    return e164, rng.choice(forms)


def generate_csv(path: Path, customers: int, seed: int) -> list[str]:
    """Write the CSV; return one E.164 number per customer (for lookups)."""
    rng = random.Random(seed)
    numbers = []
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["key", "given_name", "family_name", "mobile", "home", "email", "member", "birthday"])
        for i in range(customers):
            given, family = rng.choice(GIVEN), rng.choice(FAMILY)
            mobile_e164, mobile = phone_for(2 * i, rng)
            home = phone_for(2 * i + 1, rng)[1] if rng.random() < 0.6 else ""
            numbers.append(mobile_e164)
            writer.writerow(
                [
                    f"C{i:07d}",
                    given,
                    family,
                    mobile,
                    home,
                    f"{given.lower()}.{family.lower()}.{i}@example.com",
                    f"M-{i:08d}",
                    f"{1950 + i % 55}-{1 + i % 12:02d}-{1 + i % 28:02d}",
                ]
            )
    return numbers


MAPPING = """\
format: csv
source: bench
key: key
given_name: given_name
family_name: family_name
birthday: birthday
phones:
  - {column: mobile, label: mobile}
  - {column: home, label: home}
emails: [email]
member: member
"""


def import_with_cli(db: Path, csv_path: Path, mapping: Path) -> tuple[float, float]:
    """Wall and CPU seconds of the CLI import (its worker process included)."""
    env = os.environ | {"CALLBRIDGE_CUSTOMERS_DATABASE": str(db), "PYTHONPATH": str(ROOT)}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "callbridge", "customers", "import", str(csv_path), "--mapping", str(mapping),
         "--source", "bench"],
        check=True, env=env, cwd=ROOT, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return wall, cpu


def fill_timeline(db: Path, per_customer: int, seed: int) -> tuple[int, float]:
    """~per_customer interactions for every customer, in bulk (indexes rebuilt after)."""
    rng = random.Random(seed)
    started = time.perf_counter()
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=OFF")
    indexes = conn.execute(
        "SELECT name, sql FROM sqlite_master"
        " WHERE type = 'index' AND tbl_name = 'interactions' AND sql IS NOT NULL"
    ).fetchall()
    for name, _ in indexes:
        conn.execute(f"DROP INDEX {name}")
    ids = [row[0] for row in conn.execute("SELECT id FROM customers")]
    now = time.time()
    total = 0
    insert = (
        "INSERT INTO interactions (customer_id, channel, at, direction, summary, data, source, recorded_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
    )
    batch: list[tuple[object, ...]] = []
    for customer_id in ids:
        for _ in range(per_customer):
            channel = rng.choice(CHANNELS)
            at = now - rng.random() * 3 * 365 * 86400
            data = {"amount": round(rng.uniform(5, 400), 2), "currency": "USD"} if channel == "order" else {}
            batch.append(
                (customer_id, channel, at, "inbound", f"{channel} #{total}", json.dumps(data), "bench", at)
            )
            total += 1
        if len(batch) >= 50_000:
            conn.executemany(insert, batch)
            batch.clear()
    if batch:
        conn.executemany(insert, batch)
    conn.commit()
    for _, sql in indexes:
        conn.execute(sql)
    conn.commit()
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return total, time.perf_counter() - started


def percentiles(samples: list[float]) -> str:
    ordered = sorted(samples)
    p50 = ordered[len(ordered) // 2]
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return f"p50 {p50 * 1000:.3f} ms  p99 {p99 * 1000:.3f} ms  max {ordered[-1] * 1000:.3f} ms"


def p99(samples: list[float]) -> float:
    return sorted(samples)[min(len(samples) - 1, int(len(samples) * 0.99))]


async def measure_store(db: Path, raws: list[str], ids: list[str]) -> tuple[list[float], list[float], int]:
    lookups: list[float] = []
    profiles: list[float] = []
    misses = 0
    async with SQLiteStore(db) as store:
        for raw in raws[:200]:  # warm the page cache and the thread
            await store.lookup_phone(raw)
        for raw in raws:
            started = time.perf_counter()
            found = await store.lookup_phone(raw)
            lookups.append(time.perf_counter() - started)
            misses += not found
        for customer_id in ids:
            started = time.perf_counter()
            await store.profile(customer_id)
            profiles.append(time.perf_counter() - started)
    return lookups, profiles, misses


def measure_sqlite3(db: Path, numbers: list[str]) -> list[float]:
    conn = sqlite3.connect(db)
    query = "SELECT customer_id FROM identities WHERE kind = 'phone' AND system = '' AND value = ?"
    for number in numbers[:200]:
        conn.execute(query, (number,)).fetchall()
    samples = []
    for number in numbers:
        started = time.perf_counter()
        conn.execute(query, (number,)).fetchall()
        samples.append(time.perf_counter() - started)
    conn.close()
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--interactions", type=int, default=20, help="timeline entries per customer")
    parser.add_argument("--samples", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--reuse", action="store_true", help="reuse bench/.data/customers-N.db if present")
    args = parser.parse_args()

    DATA.mkdir(parents=True, exist_ok=True)
    db = DATA / f"customers-{args.customers}.db"
    csv_path = DATA / f"customers-{args.customers}.csv"
    mapping = DATA / "mapping.yaml"
    mapping.write_text(MAPPING, encoding="utf-8")
    rng = random.Random(args.seed)
    print(f"customer store bench: {args.customers:,} customers, ~{args.interactions} interactions each")

    started = time.perf_counter()
    numbers = generate_csv(csv_path, args.customers, args.seed)
    print(f"  generated {csv_path.name} in {time.perf_counter() - started:.1f} s")
    if not (args.reuse and db.exists()):
        for suffix in ("", "-wal", "-shm"):
            Path(f"{db}{suffix}").unlink(missing_ok=True)
        seconds, cpu = import_with_cli(db, csv_path, mapping)
        print(f"  import via `callbridge customers import`: {args.customers / seconds:,.0f} rows/s "
              f"({seconds:.1f} s, {cpu:.1f} s CPU: {cpu / args.customers * 1e6:.0f} us a row; "
              f"load average {os.getloadavg()[0]:.1f})   target >= 20,000")  # fmt: skip
        total, seconds = fill_timeline(db, args.interactions, args.seed)
        print(f"  timeline: {total:,} interactions in {seconds:.1f} s (setup)")
    print(f"  database: {db.stat().st_size / 1e9:.2f} GB")

    sample = rng.sample(range(args.customers), min(args.samples, args.customers))
    raws = []
    for i in sample:
        e164 = numbers[i]
        parsed = phonenumbers.parse(e164)
        raws.append(
            rng.choice(
                (
                    e164,
                    phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.INTERNATIONAL),
                    "00" + e164[1:],
                )
            )
        )
    conn = sqlite3.connect(db)
    ids = [
        row[0] for row in conn.execute("SELECT id FROM customers ORDER BY random() LIMIT ?", (len(sample),))
    ]
    conn.close()

    lookups, profiles, misses = asyncio.run(measure_store(db, raws, ids))
    floor = measure_sqlite3(db, [numbers[i] for i in sample])
    print(f"  lookup_phone (async store, any form)   {percentiles(lookups)}   target p99 < 1 ms")
    print(f"  plain sqlite3, E.164 given (the floor)  {percentiles(floor)}")
    print(f"  profile (the whole pop)                 {percentiles(profiles)}   target p99 < 5 ms")
    print(f"  lookups that found nobody: {misses} of {len(raws)}")
    print(
        f"ratios: lookup p50 store/sqlite3 {statistics.median(lookups) / statistics.median(floor):.1f}x, "
        f"p99 {p99(lookups) / p99(floor):.1f}x"
    )


if __name__ == "__main__":
    main()
