"""The asyncio AMI client: one TCP link to Asterisk, kept up, with actions and events.

It only moves bytes and time; framing and ActionID correlation are ``AMIClientProtocol``'s.

- ``send_action()`` returns the ``ActionResult`` (the whole list for list actions). When the link
  drops, every action in flight fails with ``ConnectionLost``: nothing is ever re-sent, because
  ``Originate`` re-sent after a reconnect calls someone twice.
- Events go to listeners, called in order as their bytes arrive (the transport's
  ``data_received``: no reader task between the socket and the listeners, so no turn of the
  event loop either); a listener that raises is logged and the stream goes on. Slow work
  belongs in the listener's own task.
- Keepalive: a ``Ping`` every ``ping_interval``; no reply within ``ping_timeout`` closes the link.
- Reconnect with capped exponential backoff and jitter; lifecycle changes (``Connected``,
  ``Disconnected``, ``LoginFailed``) go to the same listeners so a bridge can resync the model.
- The secret never reaches a log: the wire logger redacts ``Secret`` and ``Key``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import random
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cti.ami.codec import AMIError, Banner, ProtocolViolation
from cti.ami.message import Message
from cti.ami.protocol import ActionResult, AMIClientProtocol, UnmatchedResponse

log = logging.getLogger(__name__)
wire_log = logging.getLogger("cti.ami.wire")

_SECRET_LINE = re.compile(rb"^(Secret|Key):[^\r\n]*", re.IGNORECASE | re.MULTILINE)


class NotConnected(AMIError):
    """No logged-in link to the PBX right now."""


class ConnectionLost(AMIError):
    """The link dropped while the action was in flight; it was not re-sent."""


class ActionTimeout(AMIError):
    """The PBX did not answer the action in time."""


class AuthenticationFailed(AMIError):
    """The PBX refused the login."""


@dataclass(frozen=True, slots=True)
class AMIConfig:
    host: str = "127.0.0.1"
    port: int = 5038
    username: str = "callbridge"
    secret: str = field(default="", repr=False)
    auth: str = "md5"
    events: str = "on"
    connect_timeout: float = 5.0
    action_timeout: float = 10.0
    ping_interval: float = 20.0
    ping_timeout: float = 5.0
    backoff_initial: float = 0.5
    backoff_max: float = 30.0
    backoff_factor: float = 2.0
    stop_on_auth_failure: bool = False
    id_prefix: str = "cb"
    event_filters: tuple[str, ...] = ()
    """AMI ``Filter`` expressions sent after each login (``!Event: VarSet`` drops an event the
    PBX would otherwise send by the thousand): the PBX stops sending what nobody reads. Needs the
    manager user's ``system`` write permission; refused, the link works unfiltered (logged)."""


@dataclass(frozen=True, slots=True)
class Connected:
    host: str
    port: int
    banner: str
    session: int


@dataclass(frozen=True, slots=True)
class Disconnected:
    reason: str
    session: int
    failed_actions: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class LoginFailed:
    reason: str


LifecycleEvent = Connected | Disconnected | LoginFailed
Listener = Callable[[Message | LifecycleEvent], None]


def backoff(initial: float, maximum: float, factor: float) -> Iterator[float]:
    """Delays before each reconnect: a random start, then exponential with jitter, capped."""
    delay = random.uniform(0, initial)
    yield delay
    delay = initial
    while True:
        yield min(maximum, delay) * random.uniform(0.8, 1.2)
        delay = min(maximum, delay * factor)


def redact(data: bytes) -> bytes:
    return _SECRET_LINE.sub(rb"\1: ********", data)


class AMIClient:
    """Keeps one logged-in AMI session to a PBX."""

    def __init__(self, config: AMIConfig) -> None:
        self.config = config
        self._listeners: list[Listener] = []
        self._task: asyncio.Task[None] | None = None
        self._protocol: AMIClientProtocol | None = None
        self._transport: asyncio.WriteTransport | None = None
        self._futures: dict[str, asyncio.Future[ActionResult]] = {}
        self._ready = asyncio.Event()
        self._fatal: BaseException | None = None
        self._session = 0
        self._stopping = False
        self._early: list[Message] = []
        self.banner: str | None = None

    # --- lifecycle -------------------------------------------------------------------------------

    def add_listener(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def remove_listener(self, listener: Listener) -> None:
        with contextlib.suppress(ValueError):
            self._listeners.remove(listener)

    async def start(self) -> None:
        if self._task is None:
            self._stopping = False
            self._task = asyncio.create_task(self._run(), name=f"ami-client-{self.config.host}")

    async def stop(self) -> None:
        self._stopping = True
        task, self._task = self._task, None
        if self._transport is not None and self._protocol is not None and self._ready.is_set():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.send_action("Logoff"), 1.0)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def __aenter__(self) -> AMIClient:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def connected(self) -> bool:
        return self._ready.is_set()

    @property
    def session(self) -> int:
        """How many sessions have been logged in so far (1 after the first login)."""
        return self._session

    async def wait_connected(self, timeout: float | None = None) -> None:
        """Wait until logged in; raise ``AuthenticationFailed`` if the client gave up."""
        async with asyncio.timeout(timeout):
            while not self._ready.is_set():
                if self._fatal is not None:
                    raise self._fatal
                waiter = asyncio.ensure_future(self._ready.wait())
                try:
                    await asyncio.wait(
                        [waiter, self._task] if self._task else [waiter], return_when=asyncio.FIRST_COMPLETED
                    )
                finally:
                    waiter.cancel()
                if self._fatal is not None:
                    raise self._fatal

    # --- actions ---------------------------------------------------------------------------------

    async def send_action(
        self,
        name: str,
        fields: Mapping[str, str | Sequence[str]] | Sequence[tuple[str, str]] = (),
        *,
        timeout: float | None = None,
    ) -> ActionResult:
        """Send one action and wait for its response (and its event list, if it has one)."""
        protocol, transport = self._protocol, self._transport
        if protocol is None or transport is None or transport.is_closing():
            raise NotConnected(f"no AMI link to {self.config.host}:{self.config.port}; {name} not sent")
        return await self._send(protocol, transport, name, fields, timeout)

    async def _send(
        self,
        protocol: AMIClientProtocol,
        transport: asyncio.WriteTransport,
        name: str,
        fields: Mapping[str, str | Sequence[str]] | Sequence[tuple[str, str]],
        timeout: float | None,
    ) -> ActionResult:
        action_id = protocol.send_action(name, fields)
        future: asyncio.Future[ActionResult] = asyncio.get_running_loop().create_future()
        self._futures[action_id] = future
        data = protocol.data_to_send()
        if wire_log.isEnabledFor(logging.DEBUG):
            wire_log.debug("> %r", redact(data))
        transport.write(data)
        try:
            async with asyncio.timeout(self.config.action_timeout if timeout is None else timeout):
                return await future
        except TimeoutError:
            raise ActionTimeout(f"{name} (ActionID {action_id}): no answer from the PBX") from None
        finally:
            self._futures.pop(action_id, None)

    # --- the connection loop ---------------------------------------------------------------------

    async def _run(self) -> None:
        delays = backoff(self.config.backoff_initial, self.config.backoff_max, self.config.backoff_factor)
        first = True
        while not self._stopping:
            if not first:
                delay = next(delays)
                log.info("AMI reconnecting to %s:%s in %.2fs", self.config.host, self.config.port, delay)
                await asyncio.sleep(delay)
            first = False
            started = time.monotonic()
            try:
                await self._session_once()
            except AuthenticationFailed as exc:
                self._emit(LoginFailed(str(exc)))
                log.error("AMI login to %s:%s refused: %s", self.config.host, self.config.port, exc)
                if self.config.stop_on_auth_failure:
                    self._fatal = exc
                    return
            except (OSError, TimeoutError, ConnectionLost, asyncio.IncompleteReadError) as exc:
                log.warning("AMI link to %s:%s: %s", self.config.host, self.config.port, _describe(exc))
            if time.monotonic() - started > self.config.backoff_max:
                delays = backoff(
                    self.config.backoff_initial, self.config.backoff_max, self.config.backoff_factor
                )

    async def _session_once(self) -> None:
        config = self.config
        protocol = AMIClientProtocol(id_prefix=config.id_prefix)
        link = _Link(lambda data: self._received(data, protocol))
        async with asyncio.timeout(config.connect_timeout):
            transport, _ = await asyncio.get_running_loop().create_connection(
                lambda: link, config.host, config.port
            )
        self._protocol, self._transport = protocol, transport
        ping_task: asyncio.Task[None] | None = None
        reason = "closed"
        try:
            await self._login(protocol, transport, link.closed)
            self._session += 1
            self._ready.set()
            early, self._early = self._early, []
            log.info(
                "AMI logged in to %s:%s as %s (%s), session %d",
                config.host,
                config.port,
                config.username,
                self.banner,
                self._session,
            )
            self._emit(Connected(config.host, config.port, self.banner or "", self._session))
            for message in early:
                self._emit(message)
            ping_task = asyncio.create_task(self._keepalive(protocol, transport), name="ami-keepalive")
            done, _ = await asyncio.wait([link.closed, ping_task], return_when=asyncio.FIRST_COMPLETED)
            finished = done.pop()
            reason = _describe(finished.exception()) if finished.exception() else "the PBX closed the link"
        except asyncio.CancelledError:
            reason = "client stopped"
            raise
        except BaseException as exc:
            reason = _describe(exc)
            raise
        finally:
            was_ready = self._ready.is_set()
            self._ready.clear()
            self._protocol, self._transport = None, None
            for task in (link.closed, ping_task):
                if task is not None:
                    task.cancel()
            transport.close()
            for task in (link.closed, ping_task):
                if task is not None:
                    with contextlib.suppress(BaseException):
                        await task
            lost = protocol.connection_lost()
            for action_id in lost:
                future = self._futures.pop(action_id, None)
                if future is not None and not future.done():
                    future.set_exception(
                        ConnectionLost(
                            f"AMI link dropped ({reason}) with action {action_id} in flight; not re-sent"
                        )
                    )
            self._early.clear()
            if was_ready:
                level = logging.INFO if self._stopping else logging.WARNING
                log.log(level, "AMI link to %s:%s closed: %s", config.host, config.port, reason)
                self._emit(Disconnected(reason, self._session, tuple(lost)))

    async def _login(
        self, protocol: AMIClientProtocol, transport: asyncio.WriteTransport, closed: asyncio.Future[None]
    ) -> None:
        config = self.config

        async def action(name: str, fields: dict[str, str]) -> ActionResult:
            sent = self._send(protocol, transport, name, fields, config.connect_timeout)
            send = asyncio.ensure_future(sent)
            either: list[asyncio.Future[Any]] = [send, closed]
            done, _ = await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
            if send not in done:
                send.cancel()
                with contextlib.suppress(BaseException):
                    await send
                exc = closed.exception()
                raise ConnectionLost(
                    f"the PBX closed the link during login{f': {_describe(exc)}' if exc else ''}"
                )
            return send.result()

        fields = {"Username": config.username, "Events": config.events}
        if config.auth.lower() == "md5":
            challenge = await action("Challenge", {"AuthType": "MD5"})
            if not challenge.ok or "Challenge" not in challenge.response:
                raise AuthenticationFailed(
                    f"MD5 challenge refused: {challenge.message or challenge.response.name}"
                )
            key = hashlib.md5((challenge.response["Challenge"] + config.secret).encode()).hexdigest()
            fields |= {"AuthType": "MD5", "Key": key}
        else:
            fields["Secret"] = config.secret
        result = await action("Login", fields)
        if not result.ok:
            raise AuthenticationFailed(result.message or result.response.name)
        for expression in config.event_filters:
            answer = await action("Filter", {"Operation": "Add", "Filter": expression})
            if not answer.ok:
                log.warning(
                    "AMI filter %r refused (%s): the PBX sends those events anyway; give the manager "
                    "user write = system, or set the filter as eventfilter in manager.conf",
                    expression,
                    answer.message or answer.response.name,
                )
                break

    def _received(self, data: bytes, protocol: AMIClientProtocol) -> None:
        if wire_log.isEnabledFor(logging.DEBUG):
            wire_log.debug("< %r", data)
        protocol.receive_data(data)
        # Nothing here awaits, so the link cannot become ready or drop within a read.
        ready = self._ready.is_set()
        listeners = self._listeners
        for item in protocol.events_received():
            if type(item) is Message:
                if ready:
                    # ``_emit`` inlined: this runs for every event.
                    for listener in listeners:
                        try:
                            listener(item)
                        except Exception:
                            log.exception("AMI listener %r failed on %s", listener, item.name)
                else:
                    # Events that come with the login response belong after ``Connected``.
                    self._early.append(item)
            elif type(item) is ActionResult:
                future = self._futures.get(item.action_id)
                if future is not None and not future.done():
                    future.set_result(item)
            elif type(item) is Banner:
                self.banner = item.text
            elif type(item) is ProtocolViolation:
                log.warning(
                    "AMI from %s:%s: %s at byte %d: %r",
                    self.config.host,
                    self.config.port,
                    item.reason,
                    item.offset,
                    item.excerpt,
                )
            elif type(item) is UnmatchedResponse:
                log.debug("AMI response with no action of ours: %r", item.response.text[:200])

    async def _keepalive(self, protocol: AMIClientProtocol, transport: asyncio.WriteTransport) -> None:
        interval = self.config.ping_interval
        if interval <= 0:
            await asyncio.Future()
        while True:
            await asyncio.sleep(interval)
            try:
                await self._send(protocol, transport, "Ping", (), self.config.ping_timeout)
            except ActionTimeout:
                raise ConnectionLost(f"no Pong within {self.config.ping_timeout}s") from None

    def _emit(self, item: Message | LifecycleEvent) -> None:
        for listener in self._listeners:
            try:
                listener(item)
            except Exception:
                log.exception("AMI listener %r failed on %s", listener, getattr(item, "name", item))


class _Link(asyncio.Protocol):
    """The TCP link's bytes handed to the client as they arrive; ``closed`` completes when the
    link does (with the error that closed it, if any)."""

    def __init__(self, on_data: Callable[[bytes], None]) -> None:
        self._on_data = on_data
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        self._on_data(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            if exc is None:
                self.closed.set_result(None)
            else:
                self.closed.set_exception(exc)


def _describe(exc: BaseException | None) -> str:
    if exc is None:
        return "closed"
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
