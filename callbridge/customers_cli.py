"""``callbridge customers``: import, find, merge, duplicates.

The commands open the store named by the settings (``customers.database``, or ``--database``),
do one thing and close it. The import's work is ``customers.importer.import_file`` (shared with
the bench); this module only parses arguments, shows progress and prints results.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import enum
import gc
import getpass
import json
import math
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from callbridge.settings import Settings, SettingsError, load_settings

if TYPE_CHECKING:
    from customers.importer import ImportProgress, ImportReport
    from customers.model import Candidate, Customer, Identity, Profile
    from customers.store import CustomerStore

EXIT_OK = 0
EXIT_NOT_FOUND = 1
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def add_customer_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``customers import|find|merge|duplicates`` on the top-level subparsers."""
    customers = subparsers.add_parser(
        "customers", help="customer store tools: import, find, merge, duplicates"
    )
    customers.add_argument(
        "--database", type=Path, help="SQLite file (default: customers.database from the settings)"
    )
    sub = customers.add_subparsers(dest="customers_command", required=True)

    imp = sub.add_parser(
        "import",
        help="import customers from CSV or JSON lines (resumable, idempotent)",
        description="Bad rows go to a reject file with their row number and reason; good rows are kept. "
        "A checkpoint after every committed batch lets --resume continue a killed import; a re-run "
        "without --resume updates the same profiles (see docs/import.md).",
    )
    imp.add_argument("file", type=Path)
    imp.add_argument("--mapping", type=Path, help="column mapping, YAML (config/import-mapping.example.yaml)")
    imp.add_argument("--format", choices=["csv", "jsonl"], help="default: the mapping's, else by file name")
    imp.add_argument("--batch", type=int, default=2000, help="rows per transaction (default 2000)")
    imp.add_argument("--resume", action="store_true", help="continue after the last committed batch")
    imp.add_argument("--rejects", type=Path, help="reject file (default: FILE.rejects.csv)")
    imp.add_argument("--state", type=Path, help="checkpoint file (default: FILE.import-state.json)")
    imp.add_argument("--source", help="the feeding system; prefixes every key (default: the file name)")
    imp.add_argument("--region", help="country of national numbers (default: customers.default_region)")
    imp.add_argument("--quiet", action="store_true", help="no progress, only the summary")
    imp.set_defaults(func=cmd_import)

    find = sub.add_parser(
        "find", help="print the profile of a phone (any form), email, customer id or member id"
    )
    find.add_argument("query")
    find.add_argument(
        "--kind",
        choices=["phone", "email", "id", "member", "external", "im"],
        help="what the query is (default: guessed; SYSTEM:ID for external ids and import keys)",
    )
    find.add_argument("--system", default="", help="system of an external id or IM network")
    find.add_argument("--json", action="store_true", help="JSON instead of text")
    find.add_argument("--limit", type=int, default=5, help="profiles printed when several match (default 5)")
    find.set_defaults(func=cmd_find)

    merge = sub.add_parser("merge", help="merge profile MERGE into KEEP; both histories are kept")
    merge.add_argument("keep")
    merge.add_argument("merge")
    merge.add_argument("--json", action="store_true")
    merge.set_defaults(func=cmd_merge)

    dup = sub.add_parser("duplicates", help="identities held by more than one profile (not marked shared)")
    dup.add_argument("--limit", type=int, default=1000)
    dup.add_argument("--json", action="store_true")
    dup.set_defaults(func=cmd_duplicates)

    seg = sub.add_parser(
        "segments",
        help="score every customer (RFM or imported value) and recompute the segments, in bulk",
        description="Reads the rules from customers.segments in the settings (config/segments.yaml); "
        "stores each customer's value with its explanation and replaces each segment's members.",
    )
    seg.add_argument(
        "--rules", type=Path, help="segments file (default: customers.segments from the settings)"
    )
    seg.set_defaults(func=cmd_segments)


# --- plumbing --------------------------------------------------------------------------------------


def _settings(args: argparse.Namespace) -> Settings:
    path = getattr(args, "config", None)
    return load_settings(path, required=path is not None)


def _database(args: argparse.Namespace, settings: Settings) -> Path:
    path = Path(args.database) if args.database else Path(settings.customers.database)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _run(args: argparse.Namespace, body: Callable[[CustomerStore, Settings, Path], Awaitable[int]]) -> int:
    from callbridge.cli import setup_logging
    from customers.sqlite_store import SQLiteStore
    from customers.store import CustomerError

    settings = _settings(args)
    setup_logging(args.log_level or "WARNING", settings.log_format)
    database = _database(args, settings).resolve()

    async def main() -> int:
        async with SQLiteStore(database, default_region=settings.customers.default_region) as store:
            return await body(store, settings, database)

    try:
        return asyncio.run(main())
    except SettingsError:
        raise
    except CustomerError as exc:
        print(f"callbridge customers: {exc}", file=sys.stderr)
        return EXIT_USAGE if getattr(exc, "status", 400) in (400, 422) else EXIT_FAILED
    except OSError as exc:
        # A read-only folder for the checkpoint, a full disk: say which file, no traceback.
        print(f"callbridge customers: {exc}", file=sys.stderr)
        return EXIT_FAILED


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def _when(at: float | None) -> str:
    if at is None or at <= 0:
        return "-"
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d %H:%M UTC")


# --- import ----------------------------------------------------------------------------------------


class ProgressLine:
    """On a terminal: one line redrawn in place (rows, rows/s, rejects, ETA). Otherwise: a plain
    line every ``every`` seconds, so logs of a cron job show it moving without a flood."""

    def __init__(self, out: TextIO, *, tty: bool | None = None, every: float | None = None) -> None:
        self.out = out
        self.tty = out.isatty() if tty is None else tty
        self.every = every if every is not None else 0.1 if self.tty else 5.0
        self._last = -math.inf
        self._drawn = False

    def __call__(self, p: ImportProgress) -> None:
        now = time.monotonic()
        if now - self._last < self.every:
            return
        self._last = now
        rate = p.rows / p.elapsed if p.elapsed > 0 else 0.0
        share = p.bytes_done / p.bytes_total if p.bytes_total else 1.0
        eta = (p.elapsed / share - p.elapsed) if share > 0 else math.inf
        text = (
            f"{share:4.0%} {p.rows:,} rows  {rate:,.0f} rows/s  {p.rejected:,} rejected  "
            f"{p.duplicates:,} duplicates  ETA {_duration(eta)}"
        )
        if self.tty:
            width = 24
            done = int(share * width)
            bar = "#" * done + "-" * (width - done)
            self.out.write(f"\r[{bar}] {text}\x1b[K")
            self._drawn = True
        else:
            self.out.write(f"import: {text}\n")
        self.out.flush()

    def finish(self) -> None:
        if self._drawn:
            self.out.write("\r\x1b[K")
            self.out.flush()
            self._drawn = False


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = max(0, round(seconds))
    minutes, secs = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def print_summary(report: ImportReport, out: TextIO, *, shown_duplicates: int = 20) -> None:
    totals = report.totals()
    verb = "interrupted" if report.interrupted else "done" if report.complete else "stopped"
    if report.complete and not report.rows and report.previous and report.resumed_at is None:
        print(f"import of {report.path}: already complete (nothing left to resume)", file=out)
    print(
        f"import of {report.path} ({report.format}, source {report.source}): {verb} "
        f"in {report.elapsed:.1f} s, {report.rows_per_s:,.0f} rows/s",
        file=out,
    )
    repeated = f" (+{report.repeated:,} rows repeating a key)" if report.repeated else ""
    print(
        f"  rows read {report.rows:,}  created {report.created:,}  updated {report.updated:,}{repeated}  "
        f"rejected {report.rejected:,}  duplicates {report.duplicates:,}",
        file=out,
    )
    if report.previous:
        print(
            f"  with the earlier runs (resumed at row {report.resumed_at or '-'}): rows {totals['rows']:,}  "
            f"created {totals['created']:,}  updated {totals['updated']:,}  rejected {totals['rejected']:,}",
            file=out,
        )
    if report.unmapped_columns:
        print(f"  columns not imported: {', '.join(report.unmapped_columns)}", file=out)
    if totals["rejected"] and report.rejects_path:
        print(f"  rejected rows (row, reason, raw): {report.rejects_path}", file=out)
    for finding in report.duplicate_findings[:shown_duplicates]:
        print(
            f"  duplicate: row {finding.row} {_identity_text(finding.identity)} is also on "
            f"{', '.join(finding.holders)}",
            file=out,
        )
    if report.duplicates > shown_duplicates:
        print(
            f"  ... {report.duplicates - shown_duplicates:,} more; "
            "`callbridge customers duplicates` lists them all",
            file=out,
        )
    if report.interrupted:
        print(f"  committed up to row {report.last_row}; run again with --resume to continue", file=out)


async def _import(store: CustomerStore, settings: Settings, database: Path, args: argparse.Namespace) -> int:
    from customers.importer import import_file

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal(sig: signal.Signals) -> None:
        # The first signal ends the import after the batch in flight (committed, checkpointed);
        # a second one gets Python's default: stop now (the checkpoint still holds).
        print(f"\n{sig.name}: stopping after the current batch (again to stop now)", file=sys.stderr)
        stop.set()
        loop.remove_signal_handler(sig)

    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, on_signal, sig)
    progress = None if args.quiet else ProgressLine(sys.stderr)
    # Each batch unpickles ~60k short-lived tuples (freed by their counts, no cycles): with the
    # default thresholds the collector ran ~90 times a batch and its full passes walked every
    # module's objects again, ~10% of this process's time. Cycles are still collected, rarely.
    thresholds = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(100_000, 20, 20)
    try:
        report = await import_file(
            store,
            args.file,
            args.mapping,
            batch=args.batch,
            fmt=args.format,
            source=args.source,
            region=args.region or settings.customers.default_region,
            rejects=args.rejects,
            state=args.state,
            resume=args.resume,
            target=f"sqlite:{database}",
            progress=progress,
            stop=stop,
        )
    finally:
        gc.set_threshold(*thresholds)
        gc.unfreeze()
        if progress is not None:
            progress.finish()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.remove_signal_handler(sig)
    print_summary(report, sys.stdout)
    return EXIT_INTERRUPTED if report.interrupted else EXIT_OK


def cmd_import(args: argparse.Namespace) -> int:
    if args.batch < 1:
        print("callbridge customers import: --batch must be at least 1", file=sys.stderr)
        return EXIT_USAGE
    return _run(args, lambda store, settings, database: _import(store, settings, database, args))


# --- find ------------------------------------------------------------------------------------------


async def find_candidates(
    store: CustomerStore, query: str, *, kind: str | None = None, system: str = ""
) -> list[Candidate]:
    """What ``find`` shows: by the kind given, else every kind the query could be, best first."""
    from customers.model import Candidate, IdentityKind
    from customers.store import CustomerError, NotFound

    query = query.strip()
    found: dict[str, Candidate] = {}

    def add(candidates: list[Candidate]) -> None:
        for candidate in candidates:
            held = found.get(candidate.customer.id)
            if held is None or candidate.score > held.score:
                found[candidate.customer.id] = candidate

    async def by_id() -> None:
        try:
            customer = await store.get_customer(query)
        except NotFound:
            return
        add([Candidate(customer, math.inf, (f"customer id {query}",))])

    async def attempt(lookup: Awaitable[list[Candidate]]) -> None:
        # A query that is not valid for a kind (letters as a phone) is simply not that kind.
        with contextlib.suppress(CustomerError):
            add(await lookup)

    if kind == "id":
        await by_id()
    elif kind == "phone":
        add(await store.lookup_phone(query))
    elif kind == "email":
        add(await store.lookup(IdentityKind.EMAIL, query))
    elif kind == "member":
        add(await store.lookup(IdentityKind.MEMBER, query.replace(" ", "").replace("-", "")))
    elif kind in ("external", "im"):
        sys_name, value = system, query
        if not sys_name and ":" in query:
            sys_name, _, value = query.partition(":")
        add(await store.lookup(IdentityKind(kind), value, system=sys_name))
    else:
        await by_id()
        if "@" in query:
            await attempt(store.lookup(IdentityKind.EMAIL, query))
        else:
            if sum(c.isdigit() for c in query) >= 5:
                await attempt(store.lookup_phone(query))
            await attempt(store.lookup(IdentityKind.MEMBER, query.replace(" ", "").replace("-", "")))
            if ":" in query:
                # An import key (crm:10042), or SYSTEM:ID of an external id or IM handle.
                await attempt(store.lookup(IdentityKind.EXTERNAL, query, system="key"))
                sys_name, _, value = query.partition(":")
                await attempt(store.lookup(IdentityKind.EXTERNAL, value, system=sys_name))
                await attempt(store.lookup(IdentityKind.IM, value, system=sys_name))
    return sorted(found.values(), key=lambda c: -c.score)


def _identity_text(identity: Identity) -> str:
    kind = identity.kind.value
    value = f"{identity.system}:{identity.value}" if identity.system else identity.value
    if identity.extension:
        value += f" ext. {identity.extension}"
    return f"{kind} {value}"


def format_profile(profile: Profile, *, reasons: tuple[str, ...] = ()) -> str:
    """A profile as an agent or an admin reads it in a terminal."""
    c: Customer = profile.customer
    lines = [f"{c.display_name}  [{c.id}]"]
    if reasons:
        lines.append(f"  matched: {'; '.join(reasons)}")
    full_name = " ".join(p for p in (c.given_name, c.family_name) if p)
    facts = [
        f"{label} {value}"
        for label, value in (
            ("name", full_name if full_name != c.display_name else ""),
            ("company", c.company),
            ("language", c.language),
            ("time zone", c.timezone),
            ("birthday", c.birthday),
        )
        if value
    ]
    if facts:
        lines.append("  " + "  ·  ".join(facts))
    lines.append("  identities:")
    for identity in c.identities or ():
        extras = [
            text
            for text in (
                identity.label,
                "shared" if identity.shared else "",
                "verified" if identity.verified else "",
                f"as {identity.raw!r}" if identity.raw and identity.raw != identity.value else "",
                f"from {identity.source}" if identity.source else "",
            )
            if text
        ]
        lines.append(f"    {_identity_text(identity):<40} {', '.join(extras)}".rstrip())
    if not c.identities:
        lines.append("    (none)")
    if c.attributes:
        shown = ", ".join(f"{k}={json.dumps(v, ensure_ascii=False)}" for k, v in sorted(c.attributes.items()))
        lines.append(f"  attributes: {shown}")
    value = profile.value
    if value is not None:
        lines.append(
            f"  value: {value.score:.0f}/100 ({value.source}"
            f"{'; ' + value.explanation if value.explanation else ''})"
        )
    else:
        lines.append("  value: (not scored)")
    lines.append(f"  segments: {', '.join(profile.segments) or '(none)'}")
    consent = profile.consent
    channels = ", ".join(f"{ch} {'yes' if ok else 'no'}" for ch, ok in sorted(consent.channels.items()))
    consent_line = f"  consent: {channels or 'nothing recorded'}"
    if consent.quiet_hours:
        consent_line += f"; quiet hours {consent.quiet_hours[0]}-{consent.quiet_hours[1]}"
    lines.append(consent_line)
    for dnc in consent.do_not_call:
        until = f" until {_when(dnc.until)}" if dnc.until else ""
        reason = f": {dnc.reason}" if dnc.reason else ""
        lines.append(
            f"    do not call ({dnc.scope.value} {dnc.target}) since {_when(dnc.at)}{until}, "
            f"{dnc.source}{reason}"
        )
    lines.append("  latest interactions:")
    if not any(profile.latest.values()):
        lines.append("    (none)")
    for channel, items in sorted(profile.latest.items()):
        for item in items:
            direction = f" {item.direction}" if item.direction else ""
            summary = f"  {item.summary}" if item.summary else ""
            lines.append(f"    {_when(item.at)}  {channel:<6}{direction}{summary}")
    if profile.notes:
        lines.append("  notes:")
        for note in profile.notes:
            pin = " (pinned)" if note.pinned else ""
            lines.append(f"    {_when(note.at)}  {note.author}{pin}: {note.text}")
    lines.append(f"  created {_when(c.created_at)}, updated {_when(c.updated_at)}")
    return "\n".join(lines)


async def _find(store: CustomerStore, args: argparse.Namespace) -> int:
    candidates = await find_candidates(store, args.query, kind=args.kind, system=args.system)
    if not candidates:
        print(f"callbridge customers find: no customer matches {args.query!r}", file=sys.stderr)
        return EXIT_NOT_FOUND
    shown = candidates[: max(1, args.limit)]
    profiles = [await store.profile(c.customer.id) for c in shown]
    if args.json:
        payload = [
            {"score": None if math.isinf(c.score) else c.score, "reasons": list(c.reasons)}
            | {"profile": _jsonable(p)}
            for c, p in zip(shown, profiles, strict=True)
        ]
        print(json.dumps({"query": args.query, "matches": len(candidates), "results": payload}, indent=2))
        return EXIT_OK
    if len(candidates) > 1:
        first = f"; the first {len(shown)}" if len(shown) < len(candidates) else ""
        print(f"{len(candidates)} customers match {args.query!r}{first}:")
        print()
    for candidate, profile in zip(shown, profiles, strict=True):
        print(format_profile(profile, reasons=candidate.reasons))
        print()
    return EXIT_OK


def cmd_find(args: argparse.Namespace) -> int:
    return _run(args, lambda store, settings, database: _find(store, args))


# --- merge and duplicates --------------------------------------------------------------------------


async def _merge(store: CustomerStore, args: argparse.Namespace) -> int:
    try:
        actor = f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        actor = "cli"
    kept = await store.merge(args.keep, args.merge, actor=actor)
    if args.json:
        print(json.dumps(_jsonable(kept), indent=2))
    else:
        print(f"merged {args.merge} into {kept.id} ({kept.display_name}); {args.merge} now points to it")
        print(format_profile(await store.profile(kept.id)))
    return EXIT_OK


def cmd_merge(args: argparse.Namespace) -> int:
    return _run(args, lambda store, settings, database: _merge(store, args))


async def _duplicates(store: CustomerStore, args: argparse.Namespace) -> int:
    found = await store.duplicate_identities(limit=args.limit)
    names: dict[str, str] = {}
    for _, holders in found:
        for customer_id in holders:
            if customer_id not in names:
                names[customer_id] = (await store.get_customer(customer_id)).display_name
    if args.json:
        payload = [
            {
                "identity": _jsonable(identity),
                "holders": [{"id": h, "display_name": names[h]} for h in holders],
            }
            for identity, holders in found
        ]
        print(json.dumps(payload, indent=2))
        return EXIT_OK
    if not found:
        print("no identity is held by more than one customer (shared ones aside)")
        return EXIT_OK
    for identity, holders in found:
        held = ", ".join(f"{h} ({names[h]})" for h in holders)
        print(f"{_identity_text(identity):<40} {held}")
    print(f"{len(found)} duplicate identities; `callbridge customers merge KEEP MERGE` joins two profiles")
    return EXIT_OK


async def _segments(store: CustomerStore, settings: Settings, args: argparse.Namespace) -> int:
    from customers.compute import compute_all
    from customers.segments import SegmentConfigError, load_rules

    try:
        rules = load_rules(args.rules or settings.customers.segments)
    except SegmentConfigError as exc:
        print(f"callbridge customers segments: {exc}", file=sys.stderr)
        return EXIT_USAGE
    report = await compute_all(store, rules, time.time())
    print(report.summary())
    return EXIT_OK


def cmd_segments(args: argparse.Namespace) -> int:
    return _run(args, lambda store, settings, database: _segments(store, settings, args))


def cmd_duplicates(args: argparse.Namespace) -> int:
    return _run(args, lambda store, settings, database: _duplicates(store, args))
