"""The service: one object that owns the bus, the call model, the PBX adapter, the customer store
and the HTTP server.

``Service`` is shared by ``callbridge serve``, ``callbridge demo`` and the tests, so what the tests
start is what production runs. Start order: the store (and its migrations), the HTTP server, the
PBX link; stop in reverse.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from pathlib import Path

from aiohttp import web as aiohttp_web

from callbridge.agents import AgentDirectory, agent_names
from callbridge.bus import Bus, Lagged, Subscription
from callbridge.console import ChangeLines
from callbridge.pops import PopPipeline
from callbridge.settings import Settings
from cti.ami.client import AMIClient
from cti.asterisk import AsteriskCTI
from cti.model import AgentChanged, AgentConfig, CallChanged, CallModel, QueueChanged, QueueConfig
from customers.sqlite_store import SQLiteStore
from customers.store import CustomerStore
from screenpop import (
    AgentAccount,
    ClickToDial,
    PopHub,
    SessionStore,
    Webhooks,
    WrapupDesk,
    WrapupService,
)

log = logging.getLogger("callbridge.calls")


class Service:
    def __init__(self, settings: Settings, *, bus: Bus | None = None, web: bool = True) -> None:
        """``web=False`` runs the CTI side alone (no customer store, no HTTP server)."""
        self.settings = settings
        self.bus = bus or Bus()
        self.agents = AgentDirectory.load(settings.agents, settings.agents_file or None)
        """The agents: the settings' with the changes made through ``/api/agents`` laid over."""
        self.model = CallModel(
            agents=[AgentConfig(a.id, a.name, a.interfaces) for a in self.agents.all()],
            queues=[QueueConfig(q.name, q.wrapup) for q in settings.queues],
        )
        self.client = AMIClient(settings.ami)
        self.cti = AsteriskCTI(self.client, self.model, self.bus.publish, name=settings.pbx_name)
        self._log_task: asyncio.Task[None] | None = None
        self._web = web
        self.store: CustomerStore | None = None
        self._runner: aiohttp_web.AppRunner | None = None
        self.http_port: int | None = None
        self.hub = PopHub()
        self.sessions = SessionStore()
        for agent in self.agents.all():
            if agent.password_hash:
                self.sessions.add_account(AgentAccount(agent.id, agent.name, agent.password_hash))
        self.allowed_origins: set[str] = set()
        """Origins the agent WebSocket accepts; the bound port's own once the server is up."""
        self.pops: PopPipeline | None = None
        self.webhooks = Webhooks(settings.screenpop.webhooks)
        self.wrapup: WrapupService | None = None
        self.dialer: ClickToDial | None = None

    async def start(self) -> None:
        """Start every part; if one fails, the ones started are stopped again before the error
        propagates (an open store's worker thread would otherwise keep the process alive)."""
        try:
            if self._web:
                await self._start_web()
            subscription = self.bus.subscribe(name="call-log")
            self._log_task = asyncio.create_task(self._log_changes(subscription), name="call-log")
            await self.cti.start()
        except BaseException:
            await self.stop()
            raise

    async def _start_web(self) -> None:
        from callbridge.web import make_app

        config = self.settings.customers
        if config.database != ":memory:":
            Path(config.database).parent.mkdir(parents=True, exist_ok=True)
        self.store = SQLiteStore(config.database, default_region=config.default_region)
        await self.store.open()
        screenpop = self.settings.screenpop
        await self.webhooks.start()
        desk = WrapupDesk(
            screenpop.dispositions,
            pause=screenpop.wrapup.pause,
            reason=screenpop.wrapup.reason,
            max_seconds=screenpop.wrapup.max_seconds,
        )
        webhooks = self.webhooks
        self.wrapup = WrapupService(
            desk,
            self.store,
            self.client.send_action,
            self.model,
            agent_names=agent_names(self.agents),
            on_outcome=lambda outcome: webhooks.publish("wrapup", outcome),
        )
        await self.wrapup.start()
        self.dialer = ClickToDial(
            self.store, self.client.send_action, screenpop.dial, region=config.default_region
        )
        self.pops = PopPipeline(
            self.bus,
            self.store,
            self.hub,
            wrapup=self.wrapup,
            webhooks=self.webhooks,
            model=self.model,
            mask_ivr_input=self.settings.screenpop.mask_ivr_input,
        )
        await self.pops.start()
        http = self.settings.http
        # Bind first: the agent WebSocket accepts only this server's own Origin, port included.
        sock = _bind(http.host, http.port)
        self.http_port = int(sock.getsockname()[1])
        self.allowed_origins.update(
            f"http://{host}:{self.http_port}" for host in {http.host, "127.0.0.1", "localhost"}
        )
        self.allowed_origins.update(http.public_origins)
        self._runner = aiohttp_web.AppRunner(make_app(self), access_log=None)
        await self._runner.setup()
        await aiohttp_web.SockSite(self._runner, sock).start()
        log.info("HTTP on http://%s:%s (API under /api/, agents under /agent/)", http.host, self.http_port)

    async def stop(self) -> None:
        await self.cti.stop()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self.pops is not None:
            await self.pops.stop()
            self.pops = None
        if self.wrapup is not None:
            await self.wrapup.stop()
            self.wrapup = None
        self.dialer = None
        await self.webhooks.stop()
        if self.store is not None:
            await self.store.close()
            self.store = None
        task, self._log_task = self._log_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def __aenter__(self) -> Service:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _log_changes(self, subscription: Subscription) -> None:
        """One INFO line per call change, and per agent or queue change that moved what the
        line says (``ChangeLines``: a device state that repeats the agent's status, a queue
        answer that leaves its count as it was, say nothing new).

        A call is ~11 such lines (its changes, its agent's and its queue's), so this runs
        thousands of times a second on a busy PBX: what is queued is taken without awaiting
        between items, and the record is made without ``Logger.info``'s stack walk
        (``findCaller``). The lines, their order, level, logger and ``extra`` ids are what
        ``log.info`` made."""
        lines = ChangeLines()
        with subscription:
            async for event in subscription:
                _log_change(event, lines)
                while (event := subscription.get_nowait()) is not None:
                    _log_change(event, lines)


_LOG_CALLER = (__file__, Service._log_changes.__code__.co_firstlineno, "_log_changes")
"""Where a call-log record says it was made: the subscriber (``findCaller`` is skipped)."""


def _log_change(event: object, lines: ChangeLines) -> None:
    if isinstance(event, Lagged):
        log.warning("call log fell behind; %d changes not logged", event.dropped)
        return
    if not log.isEnabledFor(logging.INFO):
        return
    line = lines(event)
    if line is None:
        return
    path, lineno, func = _LOG_CALLER
    # The message is the line itself, no args: ``getMessage`` leaves a ``%`` in it alone.
    record = log.makeRecord(log.name, logging.INFO, path, lineno, line, (), None, func, _log_context(event))
    log.handle(record)


def _bind(host: str, port: int) -> socket.socket:
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


def _log_context(event: object) -> dict[str, str]:
    """Ids for structured logs: the call, the agent and the queue the change is about."""
    context: dict[str, str] = {}
    if isinstance(event, CallChanged):
        call = event.call
        context["call_id"] = call.id
        if call.agent:
            context["agent_id"] = call.agent
        if call.queue:
            context["queue"] = call.queue
    elif isinstance(event, AgentChanged):
        context["agent_id"] = event.agent.id
    elif isinstance(event, QueueChanged):
        context["queue"] = event.queue.name
    return context
