"""``callbridge``: serve, demo, ami tail, config check."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import logging
import signal
import sys
import time
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any, TextIO, TypeVar

from callbridge import __version__
from callbridge.bus import Lagged, Subscription
from callbridge.collector import Collector
from callbridge.console import NOISY_EVENTS, ChangeLines, format_message, stamp
from callbridge.customers_cli import add_customer_commands
from callbridge.settings import DEFAULT_PATH, Settings, SettingsError, load_settings
from cti.ami.client import AMIClient, AMIConfig, AuthenticationFailed, LifecycleEvent
from cti.ami.message import Message

log = logging.getLogger("callbridge")

T = TypeVar("T")

LOOPS = ("auto", "uvloop", "asyncio")


def loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The event loop ``serve`` and ``demo`` run on: uvloop where it is installed (``auto``).

    uvloop runs the same asyncio code on libuv: in the screen-pop bench the service spent ~7% less
    CPU per call on it, within the runs' spread (docs/dependencies.md); ``asyncio`` is the
    standard loop, for debugging or a platform without uvloop."""
    if name == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if name == "uvloop":
            raise SystemExit("callbridge: --loop uvloop: uvloop is not installed") from None
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def run(main: Coroutine[Any, Any, T], loop: str) -> T:
    with asyncio.Runner(loop_factory=loop_factory(loop)) as runner:
        return runner.run(main)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": round(record.created, 3),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key in ("call_id", "agent_id", "queue"):
            value = getattr(record, key, None)
            if value:
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """``2026-11-30 01:37:19,748 INFO    logger: message``; the date part is made once a second
    (a busy call log writes a thousand lines a second, ``strftime`` each time was ~2 µs of 25)."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")
        self._second = -1
        self._stamp = ""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        second = int(record.created)
        if second != self._second:
            self._stamp = time.strftime("%Y-%m-%d %H:%M:%S", self.converter(record.created))
            self._second = second
        return f"{self._stamp},{int(record.msecs):03d}"


def setup_logging(level: str, fmt: str = "text", stream: TextIO | None = None) -> None:
    # Neither format shows them: each record would look up its thread, process and process name.
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    handler = logging.StreamHandler(stream or sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    if level != "DEBUG":
        logging.getLogger("cti.ami.wire").setLevel(logging.INFO)


def _settings(args: argparse.Namespace) -> Settings:
    path = args.config
    return load_settings(path, required=path is not None)


async def _wait_for_signal(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    await stop.wait()


# --- serve -----------------------------------------------------------------------------------------


async def _serve(settings: Settings) -> int:
    from callbridge.service import Service

    stop = asyncio.Event()
    async with Service(settings), Collector():
        log.info(
            "callbridge %s serving; AMI %s:%s; event loop %s",
            __version__,
            settings.ami.host,
            settings.ami.port,
            type(asyncio.get_running_loop()).__module__.split(".")[0],
        )
        await _wait_for_signal(stop)
        log.info("stopping")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    settings = _settings(args)
    setup_logging(args.log_level or settings.log_level, settings.log_format)
    return run(_serve(settings), args.loop)


# --- demo ------------------------------------------------------------------------------------------


async def _demo(settings: Settings, args: argparse.Namespace, out: TextIO) -> int:
    from callbridge.captures import DEMO_SCENARIOS
    from callbridge.demo import demo_rules, login_lines, seed_demo_customers, with_demo_logins
    from callbridge.fakepbx import FakePBX
    from callbridge.service import Service
    from customers.sqlite_store import SQLiteStore

    scenarios = list(args.scenario or settings.demo_scenarios or DEMO_SCENARIOS)
    speed = None if args.fast else (args.speed or settings.demo_speed)
    loop = settings.demo_loop and not args.once
    web = not args.no_web
    if web:
        database = Path(args.database)
        database.parent.mkdir(parents=True, exist_ok=True)
        async with SQLiteStore(str(database), default_region=settings.customers.default_region) as store:
            rules = await asyncio.to_thread(demo_rules, settings.customers.segments)
            base = await seed_demo_customers(store, now=time.time(), generated=args.customers, rules=rules)
        what = (
            f"{base.featured} featured customers and {base.generated:,} generated ones"
            if base.seeded
            else "the customers seeded before"
        )
        print(f"callbridge demo: customer base {database} ({what})", file=out, flush=True)
        settings = await asyncio.to_thread(with_demo_logins, settings)
        customers = dataclasses.replace(settings.customers, database=str(database))
        http = dataclasses.replace(
            settings.http, port=args.port if args.port is not None else settings.http.port
        )
        settings = dataclasses.replace(settings, customers=customers, http=http)
    async with FakePBX(scenarios, speed=speed, loop_scenarios=loop, username="demo", secret="demo") as pbx:
        ami = dataclasses.replace(
            settings.ami, host="127.0.0.1", port=pbx.port, username="demo", secret="demo", auth="md5"
        )
        settings = dataclasses.replace(settings, ami=ami)
        service = Service(settings, web=web)
        subscription = service.bus.subscribe(name="demo-console")
        stop = asyncio.Event()
        async with service:
            print(
                f"callbridge demo: a fake PBX on 127.0.0.1:{pbx.port} replays {len(scenarios)} real Asterisk "
                f"captures ({', '.join(scenarios)}) at {'full' if speed is None else f'{speed:g}x'} speed"
                f"{', looping' if loop else ''}. Ctrl-C stops.",
                file=out,
                flush=True,
            )
            if web:
                base_url = f"http://{settings.http.host}:{service.http_port}"
                tokens = [t for t in settings.http.api_tokens if t.name == "demo"]
                print(
                    f"callbridge demo: agent page {base_url}/agent/ ; log in as\n"
                    + "\n".join(login_lines(settings.agents))
                    + (
                        f"\ncallbridge demo: REST API {base_url}/api/ (docs/api.md), e.g.\n"
                        f"  curl -H 'Authorization: Bearer {tokens[0].token}' "
                        f"'{base_url}/api/customers?phone=4155550123'"
                        if tokens
                        else ""
                    ),
                    file=out,
                    flush=True,
                )
            printer = asyncio.create_task(_print_changes(subscription, out), name="demo-printer")
            waiters = [asyncio.create_task(_wait_for_signal(stop))]
            if not loop:
                waiters.append(asyncio.create_task(pbx.replay_done()))
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            for waiter in waiters:
                waiter.cancel()
            await asyncio.gather(*waiters, return_exceptions=True)
            await asyncio.sleep(0.2)
            printer.cancel()
            await asyncio.gather(printer, return_exceptions=True)
            live = service.model.live_calls()
            print(f"{stamp()} demo over: {len(live)} live calls left", file=out, flush=True)
    return 0


async def _print_changes(subscription: Subscription, out: TextIO) -> None:
    lines = ChangeLines()
    async for event in subscription:
        if isinstance(event, Lagged):
            print(f"{stamp()} ({event.dropped} changes skipped: the terminal is slow)", file=out)
            continue
        line = lines(event)
        if line is not None:
            print(f"{stamp()} {line}", file=out, flush=True)


def cmd_demo(args: argparse.Namespace) -> int:
    settings = _settings(args)
    setup_logging(args.log_level or "WARNING", settings.log_format)
    return run(_demo(settings, args, sys.stdout), args.loop)


# --- ami tail --------------------------------------------------------------------------------------


async def _tail(config: AMIConfig, args: argparse.Namespace, out: TextIO) -> int:
    from cti.model import CallModel

    model = CallModel()
    client = AMIClient(config)
    lines = ChangeLines()
    only = {name.strip().lower() for name in (args.events or "").split(",") if name.strip()}
    done = asyncio.Event()
    deadline = time.monotonic() + args.duration if args.duration else None

    def on_item(item: Message | LifecycleEvent) -> None:
        now = time.time()
        if isinstance(item, Message):
            changes = model.apply(item, now)
            show = (item.name.lower() in only) if only else (args.all or item.name not in NOISY_EVENTS)
            if args.calls_only:
                show = False
            if show:
                if args.raw:
                    print(f"{stamp(now)} {item.text}\n", file=out, flush=True)
                else:
                    print(f"{stamp(now)} {format_message(item)}", file=out, flush=True)
            if not args.events_only:
                for change in changes:
                    line = lines(change)
                    if line is not None:
                        print(f"{stamp(now)}   -> {line}", file=out, flush=True)
        else:
            print(f"{stamp(now)} ** {type(item).__name__}: {item}", file=out, flush=True)

    client.add_listener(on_item)
    try:
        async with client:
            try:
                async with asyncio.timeout(config.connect_timeout * 3):
                    await client.wait_connected()
            except AuthenticationFailed as exc:
                print(
                    f"callbridge ami tail: login refused by {config.host}:{config.port}: {exc}",
                    file=sys.stderr,
                )
                return 3
            except TimeoutError:
                print(f"callbridge ami tail: cannot reach {config.host}:{config.port}", file=sys.stderr)
                return 4
            channels = await client.send_action("CoreShowChannels")
            queues = await client.send_action("QueueStatus")
            for change in model.resync(list(channels.events), list(queues.events), time.time()):
                if not args.events_only:
                    line = lines(change)
                    if line is not None:
                        print(f"{stamp()}   -> {line}", file=out, flush=True)
            waiters = [asyncio.create_task(_wait_for_signal(done))]
            if deadline is not None:
                waiters.append(asyncio.create_task(asyncio.sleep(max(0.0, deadline - time.monotonic()))))
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            for waiter in waiters:
                waiter.cancel()
            await asyncio.gather(*waiters, return_exceptions=True)
    finally:
        client.remove_listener(on_item)
    return 0


def cmd_ami_tail(args: argparse.Namespace) -> int:
    settings = _settings(args)
    setup_logging(args.log_level or "WARNING", settings.log_format)
    config = dataclasses.replace(settings.ami, stop_on_auth_failure=True)
    overrides = {
        key: value
        for key, value in (
            ("host", args.host),
            ("port", args.port),
            ("username", args.username),
            ("secret", args.secret),
            ("auth", args.auth),
        )
        if value is not None
    }
    config = dataclasses.replace(config, **overrides)
    return asyncio.run(_tail(config, args, sys.stdout))


# --- config check ----------------------------------------------------------------------------------


def cmd_config_check(args: argparse.Namespace) -> int:
    settings = _settings(args)
    ami = dataclasses.asdict(settings.ami) | {"secret": "********" if settings.ami.secret else ""}
    print(f"settings OK ({args.config or DEFAULT_PATH})")
    print(f"  ami: {json.dumps(ami)}")
    print(f"  agents: {', '.join(a.id for a in settings.agents) or '(none declared)'}")
    for key, source in sorted(settings.sources.items()):
        if source.startswith("env "):
            print(f"  {key} from {source}")
    return 0


# --- main ------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="callbridge", description="Contact-center CTI bridge.")
    parser.add_argument("--version", action="version", version=f"callbridge {__version__}")
    parser.add_argument(
        "-c", "--config", type=Path, help=f"settings file (default: {DEFAULT_PATH} if present)"
    )
    parser.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    parser.add_argument(
        "--loop",
        choices=LOOPS,
        default="auto",
        help="event loop of serve and demo (default auto: uvloop where installed)",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the service with the settings file")
    serve.set_defaults(func=cmd_serve)

    demo = sub.add_parser("demo", help="the service fed by a fake PBX replaying real Asterisk captures")
    demo.add_argument("--speed", type=float, help="replay speed factor (1 = captured timing)")
    demo.add_argument("--fast", action="store_true", help="replay as fast as possible")
    demo.add_argument("--once", action="store_true", help="play the scenarios once, then exit")
    demo.add_argument("--scenario", action="append", help="a capture name (repeatable)")
    demo.add_argument(
        "--port", type=int, help="HTTP port of the agent page (default: http.port; 0: any free)"
    )
    demo.add_argument(
        "--database", default="var/demo/customers.db", help="the demo's customer base (seeded once)"
    )
    demo.add_argument(
        "--customers", type=int, default=5000, help="generated customers around the featured ones"
    )
    demo.add_argument("--no-web", action="store_true", help="the call log only: no customer base, no page")
    demo.set_defaults(func=cmd_demo)

    ami = sub.add_parser("ami", help="Asterisk Manager Interface tools")
    ami_sub = ami.add_subparsers(dest="ami_command", required=True)
    tail = ami_sub.add_parser("tail", help="print normalised AMI events and call states from a PBX")
    tail.add_argument("--host")
    tail.add_argument("--port", type=int)
    tail.add_argument("--username")
    tail.add_argument("--secret")
    tail.add_argument("--auth", choices=["md5", "plain"])
    tail.add_argument("--events", help="comma-separated event names to show (default: all but the noisy)")
    tail.add_argument("--all", action="store_true", help="show every event, VarSet and Newexten included")
    tail.add_argument("--raw", action="store_true", help="print whole messages")
    tail.add_argument("--calls-only", action="store_true", help="only call, agent and queue changes")
    tail.add_argument("--events-only", action="store_true", help="only AMI events")
    tail.add_argument("--duration", type=float, help="stop after this many seconds")
    tail.set_defaults(func=cmd_ami_tail)

    config = sub.add_parser("config", help="settings tools")
    config_sub = config.add_subparsers(dest="config_command", required=True)
    check = config_sub.add_parser("check", help="validate the settings and print them")
    check.set_defaults(func=cmd_config_check)
    add_customer_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except SettingsError as exc:
        print(f"callbridge: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
