"""Screen-pop latency end to end: PBX event written -> pop acked by the agent's page.

    python bench/screenpop_latency.py                 # 1,000 agents, 1M customers, 100 pops/s, 60 s
    python bench/screenpop_latency.py --reuse         # keep the customer database of an earlier run
    python bench/screenpop_latency.py --quick         # 100 agents, 10k customers, 10 pops/s, 10 s
    python bench/screenpop_latency.py --committed     # the service from HEAD, not the working tree
    python bench/screenpop_latency.py --drop-events ''   # every event, as with no ami.event_filters
    python bench/screenpop_latency.py --profile       # the service under cProfile (diagnosis only)

Three processes on one host (``time.time()`` is the one clock of every timestamp):

  service   ``python -m callbridge -c <bench settings> serve``: the real ``Service`` (web on),
            started through the CLI as production starts it, logging at INFO to a file. Its
            process CPU (utime + stime from ``/proc``) is read at the start and the end of the
            measured window.
  load      this process: a ``FakePBX`` (real AMI over TCP; the service logs in to it) writing
            the calls with ``send_raw``, and the agents' pages: one aiohttp WebSocket per agent,
            each logged in over HTTP (``POST /agent/login``), saying ``hello`` and acking every
            pop as the page does once it shows it. Like a browser, each page offers
            permessage-deflate and the server takes it (aiohttp's default, the service's and the
            floor's alike); ``--no-compress``: pages that do not offer it.
  floor     a bare aiohttp WebSocket server (the peer, in the same run after the service's
            phase): the load process writes one line per message on a TCP control socket
            (``agent kind size call_id``, standing in for the AMI write) and the server sends
            a JSON text of that size to that agent's socket: the same message sizes (recorded
            in the service's phase, per call: pop, update, retract), to the same number of
            clients, at the same rate and offsets, acked by the same client code. No parsing of
            AMI, no call model, no customer store: the transport's floor.

The calls: the ``queue_answered`` capture of a real Asterisk 22 (a caller queued in ``support``
ringing one agent, who answers after 2 s; the caller hangs up 3.5 s later), every event of it
but the capture client's own (login, ``OriginateResponse``), with fresh Uniqueids/Linkedids and
Local channel numbers per call, the caller's number and name, and a queue-member interface
(``Local/agentN@agents/n``) of an idle agent chosen at random. The events are written in the
capture's bursts and at its offsets: the ring-up (``Newchannel`` ... ``QueueCallerJoin``), then
``time.time()`` is taken and ``AgentCalled`` is written with the rest of its burst; the answer
(``AgentConnect``, bridge) 2 s later; the hangups 5.5 s later. A new call starts every
1/``--rate`` s. Latency is the client's ``time.time()`` just before it sends the ack minus the
time taken before the ``AgentCalled`` write, matched by call id. Each pop must reach exactly the
agent its call rang (else *misrouted*), once (else *duplicate*), within ``--drain`` seconds of
the window's end (else *lost*); its payload must name the caller's customer (or ``unknown`` for
numbers nobody holds; else *wrong customer*).

The customers: ``--customers`` generated rows (name, mobile, 30% a home number, email, member
card) imported through ``callbridge customers import`` (the CLI path) into
``bench/.data/screenpop-<N>/customers.db``, kept with ``--reuse``. Callers are drawn from a pool
of every 10th customer (spread over the whole base, 100k at 1M) and 5% of calls come from
numbers nobody holds. So that a pop costs what a real one does, each caller in the pool gets the
history of a regular: 20 interactions over three years on six channels (calls, emails, web,
chat, sms, orders with amounts), 1-2 notes, channel permissions, a value score and a segment;
every other customer gets 0-4 interactions, so the timeline tables and their indexes have the
size of a lived-in store (3.8M interactions at 1M customers, 1.7 GB on disk). The history
is written with ``sqlite3`` straight into the file (setup, not measured): the import CLI reads
profiles, not timelines.

Agents' password hashes are scrypt with n=2**8 (the service's default is 2**14): a bench
concern only, so that 1,000 logins take seconds, not a minute of both cores. Login is not what
is measured here.

The figures come from a 2-core machine shared with other engineers' jobs: the three processes
compete with each other and with them, so expect run-to-run spread.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import heapq
import json
import math
import os
import pstats
import random
import re
import resource
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from aiohttp import web

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from callbridge.captures import load_capture  # noqa: E402
from callbridge.fakepbx import FakePBX  # noqa: E402
from screenpop import hash_password  # noqa: E402
from screenpop.hub import COOKIE_NAME  # noqa: E402

DATA = ROOT / "bench" / ".data"
CAPTURE = "queue_answered"
POOL_EVERY = 10
UNKNOWN_SHARE = 0.05
HISTORY = 20
CHANNELS = ("call", "email", "web", "chat", "sms", "order")
GIVEN = ("Jane", "John", "Maria", "Wei", "Liam", "Emma", "Noah", "Olivia", "Ahmed", "Sofia", "Lukas", "Chloé")
FAMILY = ("Doe", "Smith", "Garcia", "Chen", "Johnson", "Müller", "Martin", "Dubois", "Wang", "Brown", "Rossi")
US_AREAS = ("212", "312", "415", "617", "646", "650", "702", "718", "773", "305")
SCRYPT_N = 2**8
MAPPING = """\
format: csv
source: bench
key: key
given_name: given_name
family_name: family_name
phones:
  - {column: mobile, label: mobile}
  - {column: home, label: home}
emails: [email]
member: member
"""


# --- the customer base ------------------------------------------------------------------------------


def phone(n: int) -> tuple[str, str]:
    """(E.164, the caller id a trunk would show) of the n-th number; unique per n.

    80% US (the caller id in E.164 or national form), 15% GB and 5% DE mobiles (E.164).
    """
    kind = n % 20
    if kind < 16:
        area = US_AREAS[n % len(US_AREAS)]
        k = n // len(US_AREAS)
        e164 = f"+1{area}{200 + k // 10_000}{k % 10_000:04d}"
        return e164, e164 if n % 3 else e164[2:]
    e164 = f"+4475{n:08d}" if kind < 19 else f"+49151{n:08d}"
    return e164, e164


def unknown_phone(n: int) -> tuple[str, str]:
    """A US number outside every range ``phone`` hands out (exchange 9xx)."""
    area = US_AREAS[n % len(US_AREAS)]
    e164 = f"+1{area}9{(n // len(US_AREAS)) % 100:02d}{n % 10_000:04d}"
    return e164, e164


def name_of(i: int) -> tuple[str, str]:
    rng = random.Random(i)
    return rng.choice(GIVEN), rng.choice(FAMILY)


def generate_csv(path: Path, customers: int) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["key", "given_name", "family_name", "mobile", "home", "email", "member"])
        for i in range(customers):
            given, family = name_of(i)
            home = phone(2 * i + 1)[0] if i % 10 < 3 else ""
            writer.writerow(
                [
                    f"C{i:07d}",
                    given,
                    family,
                    phone(2 * i)[0],
                    home,
                    f"{given.lower()}.{family.lower()}.{i}@example.com",
                    f"M-{i:08d}",
                ]
            )


def import_with_cli(db: Path, csv_path: Path, mapping: Path, tree: Path) -> float:
    env = os.environ | {"CALLBRIDGE_CUSTOMERS_DATABASE": str(db), "PYTHONPATH": str(tree)}
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "callbridge", "customers", "import", str(csv_path), "--mapping", str(mapping),
         "--source", "bench", "--quiet"],
        check=True, env=env, cwd=tree, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    return time.perf_counter() - started


def fill_history(db: Path, customers: int, seed: int) -> int:
    """Timelines, notes, consent, value and segment (see the module docstring); bulk, indexes
    rebuilt after. Returns the number of interactions written."""
    rng = random.Random(seed)
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=OFF")
    indexes = conn.execute(
        "SELECT name, sql FROM sqlite_master"
        " WHERE type = 'index' AND tbl_name = 'interactions' AND sql IS NOT NULL"
    ).fetchall()
    for name, _ in indexes:
        conn.execute(f"DROP INDEX {name}")
    now = time.time()
    insert = (
        "INSERT INTO interactions (customer_id, channel, at, direction, summary, data, source, recorded_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
    )
    rows: list[tuple[object, ...]] = []
    notes: list[tuple[object, ...]] = []
    permissions: list[tuple[object, ...]] = []
    values: list[tuple[object, ...]] = []
    segments: list[tuple[object, ...]] = []
    total = 0
    for key, customer_id in conn.execute("SELECT import_key, id FROM customers").fetchall():
        index = int(key.rsplit("C", 1)[1])
        regular = index % POOL_EVERY == 0
        count = HISTORY if regular else rng.randint(0, 4)
        spent = 0.0
        for n in range(count):
            channel = CHANNELS[n % len(CHANNELS)] if regular else rng.choice(CHANNELS)
            at = now - rng.random() * 3 * 365 * 86400
            data: dict[str, object] = {}
            summary = f"{channel}: contact #{n}"
            if channel == "order":
                amount = round(rng.uniform(5, 400), 2)
                spent += amount
                data = {"amount": amount, "currency": "USD", "items": rng.randint(1, 5)}
                summary = f"order {index}-{n}: {data['items']} items"
            elif channel == "call":
                data = {
                    "queue": "support",
                    "duration": rng.randint(30, 900),
                    "agent": f"agent{rng.randint(1, 999)}",
                }
            direction = "outbound" if channel == "email" and n % 2 else "inbound"
            rows.append((customer_id, channel, at, direction, summary, json.dumps(data), "bench", at))
        total += count
        if regular:
            for n in range(1 + index % 2):
                notes.append((customer_id, now - n * 86400, "supervisor", f"note {n}: prefers a call back"))
            permissions += [
                (customer_id, "call", 1, now),
                (customer_id, "email", 1, now),
                (customer_id, "sms", 0, now),
            ]
            score = round(rng.uniform(10, 99), 1)
            values.append((customer_id, score, rng.uniform(1, 300), count, spent, "rfm", "bench", now))
            segments.append(("vip" if score > 80 else "regular", customer_id, now))
        if len(rows) >= 50_000:
            conn.executemany(insert, rows)
            rows.clear()
    conn.executemany(insert, rows)
    conn.executemany("INSERT INTO notes (customer_id, at, author, text) VALUES (?, ?, ?, ?)", notes)
    conn.executemany(
        "INSERT OR REPLACE INTO channel_permissions (customer_id, channel, allowed, updated_at)"
        " VALUES (?, ?, ?, ?)",
        permissions,
    )
    conn.executemany(
        "INSERT OR REPLACE INTO customer_values (customer_id, score, recency_days, frequency, monetary,"
        " source, explanation, computed_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        values,
    )
    conn.executemany(
        "INSERT OR REPLACE INTO segment_members (segment, customer_id, computed_at) VALUES (?, ?, ?)",
        segments,
    )
    conn.commit()
    for _, sql in indexes:
        conn.execute(sql)
    conn.commit()
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return total


def build_database(folder: Path, customers: int, *, reuse: bool, seed: int, tree: Path) -> Path:
    db = folder / "customers.db"
    done = folder / "customers.ready"
    if reuse and done.exists() and db.exists():
        print(f"  reusing {db.relative_to(ROOT)} ({db.stat().st_size / 1e9:.2f} GB)")
        return db
    done.unlink(missing_ok=True)
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    csv_path = folder / "customers.csv"
    mapping = folder / "mapping.yaml"
    mapping.write_text(MAPPING, encoding="utf-8")
    started = time.perf_counter()
    generate_csv(csv_path, customers)
    for stale in (folder / "customers.csv.import-state.json", folder / "customers.csv.rejects.csv"):
        stale.unlink(missing_ok=True)
    print(f"  generated {csv_path.name} in {time.perf_counter() - started:.1f} s")
    seconds = import_with_cli(db, csv_path, mapping, tree)
    print(f"  `callbridge customers import`: {customers:,} customers in {seconds:.1f} s")
    started = time.perf_counter()
    total = fill_history(db, customers, seed)
    print(
        f"  history: {total:,} interactions, notes, consent, values in {time.perf_counter() - started:.1f} s"
    )
    csv_path.unlink()
    done.write_text("ok\n", encoding="utf-8")
    print(f"  database: {db.stat().st_size / 1e9:.2f} GB")
    return db


@dataclass(frozen=True, slots=True)
class Caller:
    caller_id: str
    """The number as the trunk shows it (``CallerIDNum``)."""
    name: str
    customer_id: str | None
    """None for a number nobody holds."""


def warm_page_cache(db: Path) -> None:
    with db.open("rb") as handle:
        while handle.read(16 * 1024 * 1024):
            pass


def load_callers(db: Path, customers: int) -> list[Caller]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    ids = {
        int(key.rsplit("C", 1)[1]): (customer_id, name)
        for key, customer_id, name in conn.execute("SELECT import_key, id, display_name FROM customers")
    }
    conn.close()
    callers = []
    for index in range(0, customers, POOL_EVERY):
        customer_id, name = ids[index]
        callers.append(Caller(phone(2 * index)[1], name, customer_id))
    return callers


# --- the calls ----------------------------------------------------------------------------------------

_SKIP_EVENTS = (b"FullyBooted", b"SuccessfulAuth", b"OriginateResponse")
_SLOTS = re.compile(rb"\b17\d{8}\.(\d+)\b|-(0000000[01]);|\bagent1\b|Alice Agent|\+14155550123|Jane Doe")
"""What changes per call: Uniqueids/Linkedids, Local channel numbers, the agent's extension and
member name, the caller's number and name."""
_EPOCH = b"1800000000"

Piece = bytes | tuple[bytes, int]


def _compile(data: bytes) -> list[Piece]:
    """``data`` as literal pieces and ``(slot, n)`` pairs, so that a call renders with one join."""
    pieces: list[Piece] = []
    position = 0
    for match in _SLOTS.finditer(data):
        pieces.append(data[position : match.start()])
        if match[1] is not None:
            pieces.append((b"uid", int(match[1])))
        elif match[2] is not None:
            pieces.append((b"local", int(match[2])))
        else:
            pieces.append((match[0], 0))
        position = match.end()
    pieces.append(data[position:])
    return pieces


@dataclass(frozen=True, slots=True)
class Burst:
    offset: float
    """Seconds after the ``AgentCalled`` write."""
    data: bytes


class CallTemplate:
    """The ``queue_answered`` capture cut into bursts, rendered per call with fresh identifiers."""

    def __init__(self, capture: str = CAPTURE, drop: frozenset[bytes] = frozenset()) -> None:
        frames: list[tuple[float, bytes]] = []
        rest = b""
        for chunk in load_capture(capture).incoming():
            if chunk.data is None:
                continue
            rest += chunk.data
            if rest.startswith(b"Asterisk Call Manager/"):
                rest = rest[rest.index(b"\r\n") + 2 :]
            while (end := rest.find(b"\r\n\r\n")) >= 0:
                frame, rest = rest[: end + 4], rest[end + 4 :]
                frames.append((chunk.t, frame))
        skip = {*_SKIP_EVENTS, *drop}
        events = [
            (t, f) for t, f in frames if f.startswith(b"Event: ") and f.split(b"\r\n", 1)[0][7:] not in skip
        ]
        called = next(i for i, (_, f) in enumerate(events) if f.startswith(b"Event: AgentCalled\r\n"))
        t_called = events[called][0]
        early = [(t, f) for t, f in events[:called] if t < t_called - 0.0005]
        self.lead = t_called - early[0][0] if early else 0.0
        """How long before ``AgentCalled`` the ring-up starts (the caller's channel, the queue)."""
        self.ring_up = b"".join(f for _, f in early)
        self.same_instant = b"".join(f for t, f in events[len(early) : called])
        """The events of ``AgentCalled``'s own instant before it (``QueueCallerJoin``, the agent's
        Local channel): written just before ``t0``, as Asterisk writes them back to back."""
        bursts: list[tuple[float, list[bytes]]] = []
        for t, frame in events[called:]:
            offset = max(0.0, t - t_called)
            if bursts and offset - bursts[-1][0] < 0.05:
                bursts[-1][1].append(frame)
            else:
                bursts.append((offset, [frame]))
        self.bursts = [
            Burst(offset if i else 0.0, b"".join(parts)) for i, (offset, parts) in enumerate(bursts)
        ]
        self._ring_up = _compile(self.ring_up)
        self._same_instant = _compile(self.same_instant)
        self._bursts = [(b.offset, _compile(b.data)) for b in self.bursts]
        self.events = len(events)
        self.length = self.bursts[-1].offset

    def render(self, call: int, agent: int, caller: Caller) -> tuple[str, bytes, bytes, list[Burst]]:
        """(call id, the ring-up, the same-instant events, the bursts from ``AgentCalled`` on) of
        call number ``call``."""
        base = call * 10
        values = {
            b"agent1": b"agent%d" % agent,
            b"Alice Agent": b"Agent %d" % agent,
            b"+14155550123": caller.caller_id.encode(),
            b"Jane Doe": caller.name.encode(),
        }

        def render(pieces: list[Piece]) -> bytes:
            out = []
            for piece in pieces:
                if type(piece) is bytes:
                    out.append(piece)
                else:
                    slot, n = piece
                    if slot == b"uid":
                        out.append(b"%s.%d" % (_EPOCH, base + n))
                    elif slot == b"local":
                        out.append(b"-%08x;" % (2 * call + n))
                    else:
                        out.append(values[slot])
            return b"".join(out)

        bursts = [Burst(offset, render(pieces)) for offset, pieces in self._bursts]
        return self.call_id(call), render(self._ring_up), render(self._same_instant), bursts

    @staticmethod
    def call_id(call: int) -> str:
        return f"{_EPOCH.decode()}.{call * 10}"


# --- the agents' pages --------------------------------------------------------------------------------


@dataclass(slots=True)
class Sent:
    call_id: str
    agent: str
    t0: float
    customer_id: str | None
    measured: bool


@dataclass(slots=True)
class Tally:
    """What the pages saw, by call id."""

    sent: dict[str, Sent] = field(default_factory=dict)
    acked: dict[str, float] = field(default_factory=dict)
    misrouted: int = 0
    duplicates: int = 0
    wrong_customer: int = 0
    replays: int = 0
    sizes: dict[str, dict[str, int]] = field(default_factory=dict)
    """Message sizes by call id and type (``pop``, ``update``, ``retract``), for the floor."""
    closed: int = 0

    def on_message(self, agent: str, text: str, message: dict[str, Any]) -> None:
        kind = message.get("type")
        call_id = message.get("call_id") or str(message.get("pop_id", "")).split(":", 1)[0]
        if kind in ("pop", "update", "retract"):
            self.sizes.setdefault(call_id, {}).setdefault(str(kind), len(text))
        if kind != "pop":
            return
        if message.get("replay"):
            self.replays += 1
            return
        now = time.time()
        sent = self.sent.get(call_id)
        if sent is None or sent.agent != agent:
            self.misrouted += 1
            return
        if call_id in self.acked:
            self.duplicates += 1
            return
        self.acked[call_id] = now
        expected = sent.customer_id
        payload = message.get("payload") or {}
        if expected is None:
            ok = payload.get("match") == "unknown"
        else:
            customer = payload.get("customer") or {}
            ok = customer.get("id") == expected
        if not ok and "pad" not in message:
            self.wrong_customer += 1


class Page:
    """One agent's page: a WebSocket that says hello and acks every pop it shows."""

    def __init__(self, agent: str, tally: Tally, *, compress: bool = True) -> None:
        self.agent = agent
        self.tally = tally
        self.compress = compress
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.task: asyncio.Task[None] | None = None
        self.closing = False

    async def open(self, http: aiohttp.ClientSession, url: str, headers: dict[str, str]) -> None:
        # compress=15: the permessage-deflate offer every browser makes (aiohttp's client offers
        # nothing by default).
        self.ws = await http.ws_connect(
            url, headers=headers, heartbeat=None, max_msg_size=0, compress=15 if self.compress else 0
        )
        await self.ws.send_str(json.dumps({"type": "hello", "last_seq": None, "epoch": None}))
        welcome = json.loads((await self.ws.receive(timeout=30)).data)
        if welcome.get("type") != "welcome":
            raise RuntimeError(f"{self.agent}: expected welcome, got {welcome!r}")
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.ws is not None
        ws = self.ws
        async for msg in ws:
            if msg.type is not aiohttp.WSMsgType.TEXT:
                continue
            message = json.loads(msg.data)
            if message.get("type") == "pop":
                self.tally.on_message(self.agent, msg.data, message)
                await ws.send_str(json.dumps({"type": "ack", "pop_id": message["pop_id"]}))
            else:
                self.tally.on_message(self.agent, msg.data, message)
        if not self.closing:
            self.tally.closed += 1

    async def close(self) -> None:
        self.closing = True
        if self.ws is not None:
            await self.ws.close()
        if self.task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.task, 5)


async def gather_limited(coros: Sequence[Any], limit: int = 64) -> None:
    semaphore = asyncio.Semaphore(limit)

    async def one(coro: Any) -> None:
        async with semaphore:
            await coro

    await asyncio.gather(*(one(c) for c in coros))


# --- process CPU ----------------------------------------------------------------------------------------

_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` (Linux ``/proc``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except OSError:
        return True


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- one phase: drive the calls, collect the acks ----------------------------------------------------


@dataclass(slots=True)
class Window:
    wall: float = 0.0
    server_cpu: float = 0.0
    load_cpu: float = 0.0


@dataclass(frozen=True, slots=True)
class Plan:
    """Who calls whom: the same sequence for both phases."""

    agents: list[int]
    callers: list[Caller]
    rate: float
    warmup: float
    seconds: float


def make_plan(args: argparse.Namespace, pool: list[Caller], call_length: float) -> Plan:
    """The agent of each call: an idle one at random (busy from its ring to its hangup + 0.5 s);
    the caller: one of the pool at random, or a number nobody holds (5%)."""
    rng = random.Random(args.seed)
    total = int((args.warmup + args.seconds) * args.rate)
    busy_for = call_length + 0.5
    busy: list[tuple[float, int]] = []
    idle = list(range(1, args.agents + 1))
    agents: list[int] = []
    callers: list[Caller] = []
    for n in range(total):
        t = n / args.rate
        while busy and busy[0][0] <= t:
            idle.append(heapq.heappop(busy)[1])
        if not idle:
            raise SystemExit(
                f"{args.agents} agents cannot take {args.rate:g} calls/s of {busy_for:.1f} s each: "
                "lower --rate or raise --agents"
            )
        position = rng.randrange(len(idle))
        idle[position], idle[-1] = idle[-1], idle[position]
        agent = idle.pop()
        heapq.heappush(busy, (t + busy_for, agent))
        agents.append(agent)
        if rng.random() < UNKNOWN_SHARE:
            callers.append(Caller(unknown_phone(n)[1], "Unknown Caller", None))
        else:
            callers.append(rng.choice(pool))
    return Plan(agents, callers, args.rate, args.warmup, args.seconds)


Later = list[tuple[float, bytes]]


@dataclass(slots=True)
class Phase:
    """One measured run: the service's or the floor's."""

    label: str
    tally: Tally
    window: Window
    server_pid: int
    first_measured: int


async def drive(
    plan: Plan,
    start_call: Any,
    write: Any,
    server_pid: int,
    *,
    before: Any = None,
    lead: float = 0.0,
) -> tuple[Window, int]:
    """Start call n every 1/rate s (``start_call(n)`` writes its first bytes and returns the
    later writes with their offsets); write those when due. The window runs from the first
    call after the warm-up to the last call's start. Returns (window, first measured call)."""
    loop = asyncio.get_running_loop()
    total = len(plan.agents)
    first_measured = int(plan.warmup * plan.rate)
    heap: list[tuple[float, int, bytes]] = []
    order = 0
    pre: dict[int, int] = {}
    """Heap entries that are a call's ring-up, by order: rendered when due (``before(k)``)."""
    window = Window()
    wall0 = cpu0 = load0 = 0.0
    start = loop.time() + 0.05 + lead
    n = 0
    if before is not None:
        for k in range(total):
            order += 1
            heap.append((start + k / plan.rate - lead, order, b""))
            pre[order] = k
        heapq.heapify(heap)
    while n < total or heap:
        now = loop.time()
        next_call = start + n / plan.rate if n < total else float("inf")
        next_due = heap[0][0] if heap else float("inf")
        wake = min(next_call, next_due)
        if wake > now:
            await asyncio.sleep(wake - now)
            continue
        if next_due <= next_call:
            parts = []
            while heap and heap[0][0] <= now:
                _, key, data = heapq.heappop(heap)
                parts.append(before(pre.pop(key)) if key in pre else data)
            await write(b"".join(parts))
            continue
        if n == first_measured:
            wall0, cpu0, load0 = time.time(), cpu_seconds(server_pid), cpu_seconds(os.getpid())
        later = await start_call(n)
        at = loop.time()
        for offset, data in later:
            order += 1
            heapq.heappush(heap, (at + offset, order, data))
        n += 1
        if n == total:
            window = Window(
                time.time() - wall0, cpu_seconds(server_pid) - cpu0, cpu_seconds(os.getpid()) - load0
            )
    return window, first_measured


async def wait_acked(tally: Tally, calls: list[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(c not in tally.acked for c in calls):
        await asyncio.sleep(0.1)


def write_settings(folder: Path, db: Path, *, ami_port: int, http_port: int, agents: int, seed: int) -> Path:
    entries = []
    for a in range(1, agents + 1):
        entries.append(
            {
                "id": f"agent{a}",
                "name": f"Agent {a}",
                "interfaces": [f"Local/agent{a}@agents/n", f"Local/agent{a}@agents"],
                "password_hash": hash_password(password_of(a, seed), n=SCRYPT_N),
            }
        )
    settings = {
        "ami": {
            "host": "127.0.0.1",
            "port": ami_port,
            "username": "lab",
            "secret": "lab",
            "backoff_initial": 0.1,
        },
        "agents": entries,
        "queues": [],
        "customers": {
            "database": str(db),
            "default_region": "US",
            "segments": str(ROOT / "config" / "segments.yaml"),
        },
        "http": {"host": "127.0.0.1", "port": http_port},
        "log": {"level": "INFO", "format": "text"},
    }
    path = folder / "callbridge.yaml"
    path.write_text(yaml.safe_dump(settings, sort_keys=False), encoding="utf-8")
    return path


def password_of(agent: int, seed: int) -> str:
    return f"pw-{agent}-{seed}"


async def wait_http(url: str, timeout: float, process: asyncio.subprocess.Process) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as http:
        while True:
            if process.returncode is not None or _zombie(process.pid):
                raise SystemExit(f"the server exited ({process.returncode}) before {url} answered")
            with contextlib.suppress(aiohttp.ClientError, OSError):
                async with http.get(url) as response:
                    if response.status == 200:
                        return
            if time.monotonic() > deadline:
                raise SystemExit(f"{url} did not answer 200 within {timeout:.0f} s")
            await asyncio.sleep(0.2)


def committed_tree() -> Path:
    """``HEAD`` exported to ``bench/.data/screenpop-head`` (``git archive``): other engineers'
    uncommitted edits in this checkout do not reach the service under test."""
    tree = DATA / "screenpop-head"
    if tree.exists():
        subprocess.run(["rm", "-rf", str(tree)], check=True)
    tree.mkdir(parents=True)
    archive = subprocess.run(["git", "archive", "HEAD"], cwd=ROOT, check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    return tree


async def stop_process(process: asyncio.subprocess.Process) -> None:
    """SIGINT: ``callbridge serve`` stops cleanly on it (and cProfile then writes its file)."""
    if process.returncode is None:
        process.send_signal(signal.SIGINT)
        try:
            await asyncio.wait_for(process.wait(), 15)
        except TimeoutError:
            process.kill()
            await process.wait()


def compressed(pages: list[Page]) -> int:
    """Pages whose socket negotiated permessage-deflate."""
    return sum(1 for page in pages if page.ws is not None and page.ws.compress)


async def open_pages(agents: int, tally: Tally, connect: Any, *, compress: bool) -> list[Page]:
    pages = [Page(f"agent{a}", tally, compress=compress) for a in range(1, agents + 1)]
    await gather_limited([connect(page) for page in pages])
    return pages


async def run_callbridge(
    args: argparse.Namespace, folder: Path, db: Path, plan: Plan, template: CallTemplate, *, tree: Path
) -> tuple[Phase, dict[int, dict[str, int]], int]:
    """The service's phase; also returns the message sizes per call (for the floor) and the
    service log's WARNING/ERROR lines."""
    tally = Tally()
    async with FakePBX([], speed=None, autoplay=False) as pbx:
        http_port = free_port()
        config = write_settings(
            folder, db, ami_port=pbx.port, http_port=http_port, agents=args.agents, seed=args.seed
        )
        log_path = folder / "service.log"
        with log_path.open("wb") as log_file:
            profile = ("-m", "cProfile", "-o", str(folder / "service.prof")) if args.profile else ()
            process = await asyncio.create_subprocess_exec(
                *(sys.executable, *profile, "-m", "callbridge", "-c", str(config), "serve"),
                cwd=tree,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env=os.environ | {"PYTHONPATH": str(tree)},
            )
        try:
            origin = f"http://127.0.0.1:{http_port}"
            await wait_http(f"{origin}/healthz", 120, process)
            connector = aiohttp.TCPConnector(limit=0)
            async with aiohttp.ClientSession(
                origin, connector=connector, cookie_jar=aiohttp.DummyCookieJar()
            ) as http:

                async def connect(page: Page) -> None:
                    agent = int(page.agent.removeprefix("agent"))
                    body = {"agent_id": page.agent, "password": password_of(agent, args.seed)}
                    async with http.post("/agent/login", json=body) as response:
                        if response.status != 200:
                            raise SystemExit(f"login {page.agent}: {response.status} {await response.text()}")
                        token = response.cookies[COOKIE_NAME].value
                    headers = {"Origin": origin, "Cookie": f"{COOKIE_NAME}={token}"}
                    await page.open(http, "/agent/ws", headers)

                started = time.perf_counter()
                pages = await open_pages(args.agents, tally, connect, compress=not args.no_compress)
                print(
                    f"  callbridge: {len(pages):,} agents logged in and connected"
                    f" in {time.perf_counter() - started:.1f} s, {compressed(pages):,} with compression"
                )
                call_ids: dict[int, str] = {}

                async def start_call(n: int) -> Later:
                    agent = plan.agents[n]
                    caller = plan.callers[n]
                    call_id, _, same_instant, bursts = rendered.pop(n)
                    call_ids[n] = call_id
                    await pbx.send_raw(same_instant)
                    tally.sent[call_id] = Sent(
                        call_id,
                        f"agent{agent}",
                        time.time(),
                        caller.customer_id,
                        n >= plan.warmup * plan.rate,
                    )
                    await pbx.send_raw(bursts[0].data)
                    return [(b.offset, b.data) for b in bursts[1:]]

                rendered: dict[int, tuple[str, bytes, bytes, list[Burst]]] = {}

                def before(n: int) -> bytes:
                    rendered[n] = template.render(n, plan.agents[n], plan.callers[n])
                    return rendered[n][1]

                window, first = await drive(
                    plan, start_call, pbx.send_raw, process.pid, before=before, lead=template.lead
                )
                measured = [c for c in tally.sent.values() if c.measured]
                await wait_acked(tally, [c.call_id for c in measured], args.drain)
                await asyncio.sleep(0.5)
                async with http.get("/healthz") as response:
                    pops = (await response.json()).get("pops")
                if pops:
                    # The hub's own clock: from the tracker seeing the ring to the ack, over the
                    # last samples it keeps (warm-up included); the rest of the bench's figure is
                    # the AMI write, read, codec, model and bus before it.
                    print(
                        f"  service's own view (/healthz, tracker -> ack): p50 {pops['p50_ms']} ms"
                        f"  p99 {pops['p99_ms']} ms  max {pops['max_ms']} ms  over {pops['acked']:,} acks"
                    )
                await gather_limited([p.close() for p in pages])
            sizes = {n: tally.sizes.get(call_id, {}) for n, call_id in call_ids.items()}
        finally:
            await stop_process(process)
    warnings = sum(
        1 for line in log_path.read_text(encoding="utf-8", errors="replace").splitlines()
        if (" WARNING " in line or " ERROR " in line) and "no tokens configured" not in line
    )  # fmt: skip
    return Phase("callbridge", tally, window, process.pid, first), sizes, warnings


async def run_floor(
    args: argparse.Namespace, plan: Plan, template: CallTemplate, sizes: dict[int, dict[str, int]]
) -> Phase:
    tally = Tally()
    http_port, control_port = free_port(), free_port()
    process = await asyncio.create_subprocess_exec(
        *(sys.executable, __file__, "--serve-floor", f"{http_port},{control_port}"),
        cwd=ROOT,
        env=os.environ | {"PYTHONPATH": str(ROOT)},
    )
    answered = next(b.offset for b in template.bursts if b"Event: AgentConnect\r\n" in b.data)
    ended = template.bursts[-1].offset
    known = [s for s in sizes.values() if {"pop", "update", "retract"} <= s.keys()]
    typical = {
        k: sorted(s[k] for s in known)[len(known) // 2] if known else 4000
        for k in ("pop", "update", "retract")
    }
    try:
        origin = f"http://127.0.0.1:{http_port}"
        await wait_http(f"{origin}/healthz", 60, process)
        _, writer = await asyncio.open_connection("127.0.0.1", control_port)
        writer.transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(origin, connector=connector) as http:

            async def connect(page: Page) -> None:
                await page.open(http, f"/ws?agent={page.agent}", {})

            pages = await open_pages(args.agents, tally, connect, compress=not args.no_compress)
            print(f"  floor: {len(pages):,} sockets connected, {compressed(pages):,} with compression")

            async def write(data: bytes) -> None:
                writer.write(data)
                await writer.drain()

            async def start_call(n: int) -> Later:
                agent = f"agent{plan.agents[n]}"
                call_id = template.call_id(n)
                size = sizes.get(n, {}) | {k: v for k, v in typical.items() if k not in sizes.get(n, {})}
                tally.sent[call_id] = Sent(call_id, agent, time.time(), None, n >= plan.warmup * plan.rate)
                await write(f"{agent} pop {size['pop']} {call_id}\n".encode())
                return [
                    (answered, f"{agent} update {size['update']} {call_id}\n".encode()),
                    (ended, f"{agent} retract {size['retract']} {call_id}\n".encode()),
                ]

            window, first = await drive(plan, start_call, write, process.pid)
            measured = [c for c in tally.sent.values() if c.measured]
            await wait_acked(tally, [c.call_id for c in measured], args.drain)
            await gather_limited([p.close() for p in pages])
        writer.close()
    finally:
        await stop_process(process)
    return Phase("floor", tally, window, process.pid, first)


# --- the floor's server (its own process) ------------------------------------------------------------


def serve_floor(ports: str) -> None:
    """A bare aiohttp WebSocket server: hello -> welcome, then whatever the control socket says,
    to the one agent it names; acks are read and parsed, nothing else."""
    http_port, control_port = (int(p) for p in ports.split(","))
    raise_nofile()
    sockets: dict[str, web.WebSocketResponse] = {}

    async def ws_handler(request: web.Request) -> web.WebSocketResponse:
        agent = request.query["agent"]
        ws = web.WebSocketResponse(max_msg_size=64 * 1024)
        await ws.prepare(request)
        hello = await ws.receive_json()
        if hello.get("type") != "hello":
            await ws.close()
            return ws
        await ws.send_str(json.dumps({"type": "welcome", "epoch": "floor", "seq": 0, "live": []}))
        sockets[agent] = ws
        try:
            async for msg in ws:
                if msg.type is aiohttp.WSMsgType.TEXT:
                    json.loads(msg.data)
        finally:
            sockets.pop(agent, None)
        return ws

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    seq: dict[str, int] = {}

    async def control(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.CancelledError, ConnectionError):
            while line := await reader.readline():
                agent, kind, size, call_id = line.decode().split()
                seq[agent] = seq.get(agent, 0) + 1
                pop_id = f"{call_id}:{agent}:1"
                text = json.dumps(
                    {"type": kind, "seq": seq[agent], "pop_id": pop_id, "call_id": call_id, "pad": ""}
                )
                text = text[:-2] + "x" * max(0, int(size) - len(text)) + text[-2:]
                ws = sockets.get(agent)
                if ws is not None:
                    await ws.send_str(text)
        writer.close()

    async def main() -> None:
        app = web.Application()
        app.router.add_get("/ws", ws_handler)
        app.router.add_get("/healthz", healthz)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", http_port).start()
        server = await asyncio.start_server(control, "127.0.0.1", control_port)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        server.close()
        await runner.cleanup()

    asyncio.run(main())


# --- report --------------------------------------------------------------------------------------------


def percentile(ordered: list[float], q: float) -> float:
    """Nearest rank."""
    if not ordered:
        return float("nan")
    return ordered[max(0, min(len(ordered) - 1, math.ceil(len(ordered) * q) - 1))]


@dataclass(frozen=True, slots=True)
class Figures:
    count: int
    p50: float
    p99: float
    max: float
    lost: int


def figures(phase: Phase) -> Figures:
    measured = [c for c in phase.tally.sent.values() if c.measured]
    latencies = sorted(
        phase.tally.acked[c.call_id] - c.t0 for c in measured if c.call_id in phase.tally.acked
    )
    lost = len(measured) - len(latencies)
    if not latencies:
        return Figures(0, float("nan"), float("nan"), float("nan"), lost)
    return Figures(
        len(latencies), percentile(latencies, 0.5), percentile(latencies, 0.99), latencies[-1], lost
    )


def line(phase: Phase, f: Figures) -> str:
    t = phase.tally
    cpu = phase.window.server_cpu / phase.window.wall if phase.window.wall else float("nan")
    calls = f.count + f.lost
    per_call = phase.window.server_cpu / calls * 1e3 if calls else float("nan")
    return (
        f"  {phase.label:<11} pops {f.count:>6,}  p50 {f.p50 * 1e3:7.2f} ms  p99 {f.p99 * 1e3:7.2f} ms"
        f"  max {f.max * 1e3:7.2f} ms   lost {f.lost}  misrouted {t.misrouted}  duplicates {t.duplicates}"
        f"  wrong customer {t.wrong_customer}   server CPU {phase.window.server_cpu:.1f} s"
        f" / {phase.window.wall:.1f} s = {cpu:.0%} of a core, {per_call:.2f} ms a call"
        f" (load process {phase.window.load_cpu:.1f} s)"
    )


def print_profile(path: Path, top: int = 25) -> None:
    if not path.exists():
        print(f"  no profile written ({path})")
        return
    print(f"\nservice profile ({path.relative_to(ROOT)}), by own time:")
    pstats.Stats(str(path)).sort_stats("tottime").print_stats(top)


def raise_nofile(want: int = 8192) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


async def run(args: argparse.Namespace) -> int:
    folder = DATA / f"screenpop-{args.customers}"
    folder.mkdir(parents=True, exist_ok=True)
    print(
        f"screen-pop latency: {args.agents:,} agents, {args.customers:,} customers, {args.rate:g} pops/s, "
        f"{args.seconds:g} s measured after {args.warmup:g} s warm-up; {os.cpu_count()} cores, shared "
        f"machine; pages {'without' if args.no_compress else 'with'} WebSocket compression"
    )
    tree = committed_tree() if args.committed else (args.tree or ROOT).resolve()
    if args.committed:
        print(f"  service and import from the last commit ({tree.relative_to(ROOT)}), not the working tree")
    elif tree != ROOT:
        print(f"  service and import from {tree}")
    db = build_database(folder, args.customers, reuse=args.reuse, seed=args.seed, tree=tree)
    started = time.perf_counter()
    warm_page_cache(db)
    print(
        f"  read {db.name} into the page cache in {time.perf_counter() - started:.1f} s"
        " (a running service's is hot)"
    )
    template = CallTemplate(drop=frozenset(e.encode() for e in args.drop_events.split(",") if e))
    callers = load_callers(db, args.customers)
    plan = make_plan(args, callers, template.length)
    print(
        f"  calls: {CAPTURE} ({template.events} events in {len(template.bursts) + 1} writes over"
        f" {template.length:.1f} s), {len(plan.agents):,} calls; callers from a pool of {len(callers):,}"
        f" + {UNKNOWN_SHARE:.0%} unknown numbers"
    )
    service, sizes, warnings = await run_callbridge(args, folder, db, plan, template, tree=tree)
    floor = await run_floor(args, plan, template, sizes)
    ours, base = figures(service), figures(floor)
    pop_sizes = sorted(s["pop"] for s in sizes.values() if "pop" in s)
    if pop_sizes:
        print(f"  pop message: median {pop_sizes[len(pop_sizes) // 2]:,} bytes, max {pop_sizes[-1]:,}")
    if args.profile:
        print_profile(folder / "service.prof")
    print("\nPBX event written -> pop acked by the page (measured window):")
    print(line(service, ours))
    print(line(floor, base))
    print(
        f"  ratio callbridge/floor: p50 {ours.p50 / base.p50:.2f}x  p99 {ours.p99 / base.p99:.2f}x"
        f"  max {ours.max / base.max:.2f}x"
    )
    print(
        f"  service log: {warnings} WARNING/ERROR lines besides the API's no-token warning"
        f" ({(folder / 'service.log').relative_to(ROOT)})"
    )
    if service.tally.replays or service.tally.closed:
        print(
            f"  callbridge: {service.tally.replays} replayed pops,"
            f" {service.tally.closed} sockets closed by the server"
        )
    t = service.tally
    clean = ours.lost == 0 and t.misrouted == 0 and t.duplicates == 0 and t.wrong_customer == 0
    verdict = [
        f"p99 < 10 ms: {'yes' if ours.p99 < 0.010 else 'NO'} ({ours.p99 * 1e3:.2f} ms)",
        f"p50 < 3 ms: {'yes' if ours.p50 < 0.003 else 'NO'} ({ours.p50 * 1e3:.2f} ms)",
        f"no pop lost, misrouted or duplicated: {'yes' if clean else 'NO'}",
    ]
    print("\ntargets (shared 2-core machine, not asserted): " + "; ".join(verdict))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=100.0, help="new pops per second (default 100)")
    parser.add_argument("--seconds", type=float, default=60.0, help="measured window (default 60)")
    parser.add_argument("--warmup", type=float, default=5.0, help="calls before the window (default 5 s)")
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--reuse", action="store_true", help="reuse bench/.data/screenpop-N/customers.db")
    parser.add_argument("--quick", action="store_true", help="100 agents, 10k customers, 10 pops/s, 10 s")
    parser.add_argument(
        "--drain", type=float, default=30.0, help="seconds to wait for the last acks (default 30)"
    )
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument(
        "--drop-events",
        default="VarSet",
        metavar="NAMES",
        help="events left out of every call, as the PBX filter would; default VarSet: what Asterisk "
        "leaves out once the service sends its ami.event_filters (send_raw bypasses the fake PBX's "
        "own filters); '' sends every event",
    )
    parser.add_argument("--tree", type=Path, help="run the service (and the import) from this source tree")
    parser.add_argument(
        "--no-compress",
        action="store_true",
        help="pages that do not offer permessage-deflate (browsers offer it; by default the pages do too)",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="run the service under cProfile (bench/.data/screenpop-N/service.prof; inflates latency)",
    )
    parser.add_argument(
        "--committed",
        action="store_true",
        help="run the service (and the import) from HEAD, not from the working tree",
    )
    parser.add_argument("--serve-floor", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_floor:
        serve_floor(args.serve_floor)
        return 0
    if args.quick:
        args.agents, args.customers, args.rate, args.seconds, args.warmup = 100, 10_000, 10.0, 10.0, 2.0
    raise_nofile(max(8192, 4 * args.agents + 256))
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
