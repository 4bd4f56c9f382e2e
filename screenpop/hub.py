"""The agents' pop WebSocket hub: each agent's pops pushed to that agent's sockets only.

Protocol (JSON text messages):

- server -> client: ``{"type": "pop"|"update"|"retract", "seq": n, "pop_id": ..., ...}``. ``seq``
  counts every change of one agent's pops from 1, in the order they were published. ``pop``
  carries ``call_id``, ``facts`` and ``payload`` (the assembled pop); ``update`` carries
  ``reason``, ``facts`` and, only when the pop was assembled again (its payload changed, e.g.
  after the agent linked a customer), ``payload``: an update without ``payload`` keeps the one
  the client has (the pop's or the last update's). ``retract`` carries ``reason``. (Until
  2026-11 every update repeated the whole payload, a few kB of profile per call change, encoded,
  compressed and sent again for nothing; a replayed ``pop`` still carries the current payload.)
- server -> client, outside ``seq``: ``{"type": "wrapped", "pop_id": ...}`` when the agent's
  wrap-up of that pop was stored (from any tab): every tab drops the card. Not replayed; a tab
  that missed it learns the same from ``GET /agent/me``'s pending wrap-ups.
- client -> server, first: ``{"type": "hello", "last_seq": n | null, "epoch": e | null}``. The
  server answers ``{"type": "welcome", "epoch": e, "seq": s, "live": [pop ids]}`` and then
  replays, in ``seq`` order, what the client has not seen: each live pop changed after
  ``last_seq`` as one ``pop`` message with its current state (``"replay": true``), and each
  retract after ``last_seq`` it still remembers. A new tab (``last_seq`` null), an ``epoch`` of
  another hub instance (the service restarted) or a ``last_seq`` from the future gets every live
  pop and no retract. ``live`` lets a client drop any pop it holds that is not live any more, even one whose
  retract was forgotten. Afterwards the client's ``last_seq`` is ``s``.
- client -> server: ``{"type": "ack", "pop_id": ...}`` once the page shows a pop. The first ack
  of a pop measures its delivery latency from the ``t0`` given to ``publish`` (the PBX event
  time, on the hub's ``clock``).

Rules:

Rule 1 (no gap, no duplicate). Publishing and attaching a socket never await between reading the
        agent's state and queueing to the socket: a socket gets the replay up to ``seq`` s and
        then every change after s, each once.
Rule 2 (isolation). Each socket has its own send queue and writer task. ``publish`` only queues;
        a socket whose queue holds ``max_queue`` messages is dropped: closed with 1013
        (try again later) and a reason, then it reconnects and replays. One slow or dead socket
        never delays another's pops.
Rule 3 (memory). The hub keeps, per agent, the live pops and the last ``max_retracts`` retracts.
        A live pop's payload is kept encoded, as one string spliced into each message that
        carries it (``_Encoded``), not as the few hundred dicts and lists of a profile: at 100
        pops a second those were most of what the garbage collector's older generations walked
        (pauses of 50-500 ms in the screen-pop bench).
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
import weakref
from collections import deque
from collections.abc import AsyncIterator, Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from aiohttp import WSCloseCode, WSMsgType, web

from screenpop.page import add_page_routes
from screenpop.sessions import SessionStore
from screenpop.tracker import JsonValue, PopCommand, RetractPop, ShowPop, UpdatePop

__all__ = ["COOKIE_NAME", "LatencyStats", "PopHub", "hub_routes", "require_agent"]

logger = logging.getLogger(__name__)

COOKIE_NAME: Final = "callbridge_agent"

_CLOSE_TOO_SLOW = WSCloseCode.TRY_AGAIN_LATER
_REASON_TOO_SLOW = "too far behind: reconnect with last_seq"


@dataclass(frozen=True, slots=True)
class LatencyStats:
    """Delivery latency (seconds) from a pop's ``t0`` to its first ack."""

    count: int
    p50: float | None
    p99: float | None
    max: float | None
    unacked: int
    """Pops shown with a ``t0`` and not acked yet."""
    retracted_unacked: int
    """Pops retracted before any socket acked them."""


class Connection:
    """One agent WebSocket: a bounded send queue drained by its own writer task."""

    def __init__(
        self,
        agent_id: str,
        token: str,
        ws: web.WebSocketResponse,
        transport: asyncio.Transport | None,
    ) -> None:
        self.agent_id = agent_id
        self.token = token
        self.ws = ws
        self._transport = transport
        self._queue: deque[str] = deque()
        self._wakeup = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._closer: asyncio.Task[None] | None = None
        self.close_reason: tuple[int, str] | None = None

    def __len__(self) -> int:
        return len(self._queue)

    def start(self) -> None:
        self._writer = asyncio.create_task(self._write(), name=f"pop-writer-{self.agent_id}")

    def enqueue(self, text: str) -> None:
        self._queue.append(text)
        self._wakeup.set()

    async def _write(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._queue:
                try:
                    await self.ws.send_str(self._queue.popleft())
                except ConnectionError:
                    # The peer is gone; the handler's receive loop sees it too and cleans up.
                    logger.debug("agent socket lost while sending", extra={"agent_id": self.agent_id})
                    self._queue.clear()
                    return

    def close(self, code: int, reason: str, timeout: float) -> None:
        """Stop sending and close the socket with ``code`` (idempotent; the closing is a task)."""
        if self.close_reason is not None:
            return
        self.close_reason = (code, reason)
        self._queue.clear()
        if self._writer is not None:
            self._writer.cancel()
        self._closer = asyncio.create_task(self._close(code, reason, timeout), name="pop-socket-close")

    async def _close(self, code: int, reason: str, timeout: float) -> None:
        if self._writer is not None:
            await asyncio.gather(self._writer, return_exceptions=True)
        try:
            async with asyncio.timeout(timeout):
                await self.ws.close(code=code, message=reason.encode())
        except TimeoutError:
            # The peer reads nothing, not even our close frame: let the connection go.
            if self._transport is not None:
                self._transport.abort()

    async def wait_closed(self) -> None:
        """Stop the writer and wait for a closing started by ``close``; called by the handler."""
        if self._writer is not None:
            self._writer.cancel()
            await asyncio.gather(self._writer, return_exceptions=True)
        if self._closer is not None:
            await asyncio.gather(self._closer, return_exceptions=True)


class _Encoded(str):
    """A JSON document already encoded (Rule 3)."""


def _encode(message: Mapping[str, Any]) -> str:
    """``json.dumps(message)``, with an ``_Encoded`` payload spliced in as it is."""
    payload = message.get("payload")
    if not isinstance(payload, _Encoded):
        return json.dumps(message)
    head = json.dumps({key: value for key, value in message.items() if key != "payload"})
    return f'{head[:-1]}, "payload": {payload}}}'


@dataclass(slots=True)
class _AgentPops:
    seq: int = 0
    live: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Live pops by id, each as the ``pop`` message that shows its current state."""
    retracts: deque[dict[str, Any]] = field(default_factory=deque)
    sockets: set[Connection] = field(default_factory=set)
    pending_acks: dict[str, float] = field(default_factory=dict)


class PopHub:
    """Agents' live pops and WebSocket connections; ``publish`` sends to the pop's agent only."""

    def __init__(
        self,
        *,
        max_queue: int = 256,
        max_retracts: int = 256,
        latency_samples: int = 10_000,
        close_timeout: float = 5.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.epoch = secrets.token_hex(8)
        self._agents: dict[str, _AgentPops] = {}
        self._max_queue = max_queue
        self._max_retracts = max_retracts
        self.close_timeout = close_timeout
        self._clock = clock
        self._latencies: deque[float] = deque(maxlen=latency_samples)
        self._acked = 0
        self._retracted_unacked = 0
        self.dropped = 0
        """Sockets closed for falling behind (Rule 2)."""

    def sockets(self, agent_id: str) -> int:
        agent = self._agents.get(agent_id)
        return len(agent.sockets) if agent else 0

    def notify(self, agent_id: str, message: Mapping[str, JsonValue]) -> None:
        """Send ``message`` to every socket of the agent now, outside the pops' ``seq`` (not
        replayed): news a tab can also learn by asking, such as a stored wrap-up."""
        agent = self._agents.get(agent_id)
        if agent is None:
            return
        self._send(agent, _encode(message))

    def live(self, agent_id: str) -> list[str]:
        agent = self._agents.get(agent_id)
        return list(agent.live) if agent else []

    async def publish(
        self, command: PopCommand, payload: Mapping[str, JsonValue] | None = None, *, t0: float | None = None
    ) -> None:
        """Send ``command`` to its agent's sockets; ``payload`` is the assembled pop (kept when
        ``None`` on an update); ``t0`` is the PBX event time of a ``ShowPop``, for latency."""
        self.publish_now(command, payload, t0=t0)

    def publish_now(
        self, command: PopCommand, payload: Mapping[str, JsonValue] | None = None, *, t0: float | None = None
    ) -> None:
        """``publish`` without a coroutine: it never awaits (Rule 1), so a caller that is not a
        coroutine (the pop pipeline's updates and retracts) need not start a task for it."""
        agent = self._agents.setdefault(command.agent_id, _AgentPops())
        message: dict[str, Any]
        if isinstance(command, ShowPop):
            agent.seq += 1
            message = {
                "type": "pop",
                "seq": agent.seq,
                "pop_id": command.pop_id,
                "call_id": command.call_id,
                "facts": command.facts,
                "payload": _Encoded(json.dumps(payload if payload is not None else {})),
            }
            agent.live[command.pop_id] = message
            if t0 is not None:
                agent.pending_acks[command.pop_id] = t0
        elif isinstance(command, UpdatePop):
            shown = agent.live.get(command.pop_id)
            if shown is None:
                logger.warning("update for a pop not shown", extra={"pop_id": command.pop_id})
                return
            agent.seq += 1
            message = {
                "type": "update",
                "seq": agent.seq,
                "pop_id": command.pop_id,
                "reason": str(command.reason),
                "facts": command.facts,
            }
            current = shown | {"seq": agent.seq, "facts": command.facts}
            if payload is not None:
                message["payload"] = current["payload"] = _Encoded(json.dumps(payload))
            agent.live[command.pop_id] = current
        elif isinstance(command, RetractPop):
            if agent.live.pop(command.pop_id, None) is None:
                return
            agent.seq += 1
            message = {
                "type": "retract",
                "seq": agent.seq,
                "pop_id": command.pop_id,
                "reason": str(command.reason),
            }
            agent.retracts.append(message)
            while len(agent.retracts) > self._max_retracts:
                agent.retracts.popleft()
            if agent.pending_acks.pop(command.pop_id, None) is not None:
                self._retracted_unacked += 1
        else:  # pragma: no cover - PopCommand is closed
            raise TypeError(f"not a pop command: {command!r}")
        self._send(agent, _encode(message))

    def _send(self, agent: _AgentPops, text: str) -> None:
        """Queue ``text`` to each of the agent's sockets; one too far behind is dropped (Rule 2)."""
        for conn in list(agent.sockets):
            if len(conn) >= self._max_queue:
                self._drop(agent, conn)
            else:
                conn.enqueue(text)

    def attach(self, conn: Connection, last_seq: int | None, epoch: str | None) -> int:
        """Queue the welcome and replay for ``conn``, then register it for new pops (Rule 1).
        Returns the number of messages replayed."""
        agent = self._agents.setdefault(conn.agent_id, _AgentPops())
        fresh = last_seq is None or epoch != self.epoch or not 0 <= last_seq <= agent.seq
        since = 0 if fresh or last_seq is None else last_seq
        missed = [m for m in agent.live.values() if m["seq"] > since]
        if not fresh:
            missed.extend(m for m in agent.retracts if m["seq"] > since)
        missed.sort(key=lambda m: int(m["seq"]))
        welcome = {"type": "welcome", "epoch": self.epoch, "seq": agent.seq, "live": list(agent.live)}
        conn.enqueue(json.dumps(welcome))
        for message in missed:
            conn.enqueue(_encode(message | {"replay": True} if message["type"] == "pop" else message))
        agent.sockets.add(conn)
        return len(missed)

    def detach(self, conn: Connection) -> None:
        agent = self._agents.get(conn.agent_id)
        if agent is not None:
            agent.sockets.discard(conn)

    def ack(self, agent_id: str, pop_id: str) -> float | None:
        """Record the first ack of an agent's pop; the latency, or ``None`` if not awaited."""
        agent = self._agents.get(agent_id)
        if agent is None:
            return None
        t0 = agent.pending_acks.pop(pop_id, None)
        if t0 is None:
            return None
        latency = max(0.0, self._clock() - t0)
        self._latencies.append(latency)
        self._acked += 1
        return latency

    def latency(self) -> LatencyStats:
        unacked = sum(len(a.pending_acks) for a in self._agents.values())
        samples = sorted(self._latencies)
        if not samples:
            return LatencyStats(self._acked, None, None, None, unacked, self._retracted_unacked)
        return LatencyStats(
            count=self._acked,
            p50=_percentile(samples, 0.50),
            p99=_percentile(samples, 0.99),
            max=samples[-1],
            unacked=unacked,
            retracted_unacked=self._retracted_unacked,
        )

    def close_all(self, code: int = WSCloseCode.GOING_AWAY, reason: str = "server shutdown") -> None:
        for agent in self._agents.values():
            for conn in list(agent.sockets):
                agent.sockets.discard(conn)
                conn.close(code, reason, self.close_timeout)

    def _drop(self, agent: _AgentPops, conn: Connection) -> None:
        agent.sockets.discard(conn)
        self.dropped += 1
        logger.warning("pop socket dropped: %d messages unsent", len(conn), extra={"agent_id": conn.agent_id})
        conn.close(_CLOSE_TOO_SLOW, _REASON_TOO_SLOW, self.close_timeout)


def _percentile(samples: list[float], q: float) -> float:
    """Nearest-rank percentile of sorted ``samples``."""
    rank = max(1, min(len(samples), -(-int(q * len(samples) * 1000) // 1000)))
    return samples[rank - 1]


_HUB: Final = web.AppKey("screenpop.hub", PopHub)
_SESSIONS: Final = web.AppKey("screenpop.sessions", SessionStore)
_SOCKETS: Final = web.AppKey[weakref.WeakSet[Connection]]("screenpop.sockets")


@dataclass(frozen=True, slots=True)
class _Config:
    allowed_origins: frozenset[str]
    secure_cookie: bool
    hello_timeout: float
    heartbeat: float
    session_check: float


_CONFIG: Final = web.AppKey("screenpop.hub_config", _Config)


def hub_routes(
    hub: PopHub,
    sessions: SessionStore,
    *,
    allowed_origins: Collection[str],
    secure_cookie: bool = False,
    hello_timeout: float = 10.0,
    heartbeat: float = 30.0,
    session_check: float = 30.0,
) -> web.Application:
    """The agent sub-app, to mount at ``/agent/``: ``POST login``, ``POST logout``, ``GET ws``,
    and the agent page (``GET /agent/`` and ``/agent/static/``, ``screenpop.page``).

    ``secure_cookie`` marks the session cookie ``Secure``: set it whenever the service is served
    over HTTPS (it is off by default so that the loopback defaults work over plain HTTP).
    Logging out closes that session's sockets at once; every ``session_check`` seconds, sockets
    whose session expired are closed (1008, "session ended")."""
    app = web.Application()
    app[_HUB] = hub
    app[_SESSIONS] = sessions
    app[_CONFIG] = _Config(frozenset(allowed_origins), secure_cookie, hello_timeout, heartbeat, session_check)
    app[_SOCKETS] = weakref.WeakSet()
    app.router.add_post("/login", _login)
    app.router.add_post("/logout", _logout)
    app.router.add_get("/ws", _ws)
    add_page_routes(app, sessions, _session_agent)
    app.cleanup_ctx.append(_sockets_ctx)
    app.on_shutdown.append(_going_away)
    return app


async def _sockets_ctx(app: web.Application) -> AsyncIterator[None]:
    sweeper = asyncio.create_task(_sweep_sessions(app), name="pop-session-sweeper")
    yield
    sweeper.cancel()
    await asyncio.gather(sweeper, return_exceptions=True)
    # Anything still open after shutdown (a socket that reads nothing) is waited for here.
    conns = _connections(app)
    await asyncio.gather(*(c.wait_closed() for c in conns), return_exceptions=True)


def _connections(app: web.Application) -> list[Connection]:
    sockets = app[_SOCKETS]
    return list(sockets)


async def _sweep_sessions(app: web.Application) -> None:
    sessions, hub, period = app[_SESSIONS], app[_HUB], app[_CONFIG].session_check
    while True:
        await asyncio.sleep(period)
        for conn in _connections(app):
            if sessions.agent_for(conn.token) is None:
                _end_session(hub, conn)


def _end_session(hub: PopHub, conn: Connection) -> None:
    hub.detach(conn)
    conn.close(WSCloseCode.POLICY_VIOLATION, "session ended", hub.close_timeout)


async def _going_away(app: web.Application) -> None:
    hub = app[_HUB]
    conns = _connections(app)
    for conn in conns:
        hub.detach(conn)
        conn.close(WSCloseCode.GOING_AWAY, "server shutdown", hub.close_timeout)
    await asyncio.gather(*(c.wait_closed() for c in conns), return_exceptions=True)


def _origin_refused(request: web.Request, *, required: bool) -> bool:
    origin = request.headers.get("Origin")
    if origin is None:
        return required
    return origin not in request.app[_CONFIG].allowed_origins


async def _login(request: web.Request) -> web.Response:
    if _origin_refused(request, required=False):
        raise web.HTTPForbidden(text="origin not allowed")
    if request.content_type == "application/json":
        try:
            body = await request.json()
        except ValueError:
            raise web.HTTPBadRequest(text="body: not JSON") from None
        if not isinstance(body, dict):
            raise web.HTTPBadRequest(text="body: expected a JSON object")
        fields: Mapping[str, Any] = body
    else:
        fields = await request.post()
    agent_id, password = fields.get("agent_id"), fields.get("password")
    if not isinstance(agent_id, str) or not isinstance(password, str):
        raise web.HTTPBadRequest(text="agent_id and password are required")
    # scrypt takes tens of ms: off the event loop.
    token = await asyncio.to_thread(request.app[_SESSIONS].login, agent_id, password)
    if token is None:
        raise web.HTTPUnauthorized(text="unknown agent or wrong password")
    response = web.json_response({"agent_id": agent_id})
    response.set_cookie(
        COOKIE_NAME,
        token,
        path=_cookie_path(request),
        httponly=True,
        samesite="Strict",
        secure=request.app[_CONFIG].secure_cookie,
    )
    return response


def require_agent(request: web.Request, *, changes_state: bool) -> str:
    """The agent whose live session cookie came with ``request`` on the agent sub-app.

    Raises 401 without a live session and 403 when a browser sends a foreign ``Origin``; a request
    that ``changes_state`` must carry the ``Origin`` of this service (every browser sends it on a
    ``fetch`` POST), so another site cannot act on an agent's behalf even with the cookie."""
    if _origin_refused(request, required=changes_state):
        raise web.HTTPForbidden(text="origin not allowed")
    token = request.cookies.get(COOKIE_NAME)
    agent_id = request.app[_SESSIONS].agent_for(token) if token else None
    if agent_id is None:
        raise web.HTTPUnauthorized(text="no live agent session")
    return agent_id


def _session_agent(request: web.Request) -> str | None:
    """The agent of the live session cookie ``request`` carries, without the Origin check: for
    pages a browser navigates to (no ``Origin`` header, nothing changed)."""
    token = request.cookies.get(COOKIE_NAME)
    return request.app[_SESSIONS].agent_for(token) if token else None


def _cookie_path(request: web.Request) -> str:
    # The sub-app's prefix (``/agent/``): the cookie goes with its requests only.
    path = request.path
    return path[: path.rfind("/") + 1] or "/"


async def _logout(request: web.Request) -> web.Response:
    if _origin_refused(request, required=False):
        raise web.HTTPForbidden(text="origin not allowed")
    token = request.cookies.get(COOKIE_NAME)
    if token is not None:
        request.app[_SESSIONS].logout(token)
        for conn in _connections(request.app):
            if conn.token == token:
                _end_session(request.app[_HUB], conn)
    response = web.json_response({"logged_out": True})
    response.del_cookie(COOKIE_NAME, path=_cookie_path(request))
    return response


async def _ws(request: web.Request) -> web.StreamResponse:
    # Both checks come before the upgrade: a refused browser gets a plain HTTP status.
    if _origin_refused(request, required=True):
        raise web.HTTPForbidden(text="origin not allowed")
    token = request.cookies.get(COOKIE_NAME)
    agent_id = request.app[_SESSIONS].agent_for(token) if token else None
    if token is None or agent_id is None:
        raise web.HTTPUnauthorized(text="no live agent session")
    config = request.app[_CONFIG]
    hub = request.app[_HUB]
    ws = web.WebSocketResponse(heartbeat=config.heartbeat, max_msg_size=64 * 1024)
    await ws.prepare(request)
    conn = Connection(agent_id, token, ws, request.transport)
    request.app[_SOCKETS].add(conn)
    conn.start()
    logger.info("agent socket open", extra={"agent_id": agent_id})
    try:
        try:
            async with asyncio.timeout(config.hello_timeout):
                hello = await _receive_json(ws)
        except TimeoutError:
            hello = None
        if hello is None or hello.get("type") != "hello":
            conn.close(WSCloseCode.POLICY_VIOLATION, "expected hello", hub.close_timeout)
            return ws
        last_seq, epoch = hello.get("last_seq"), hello.get("epoch")
        hub.attach(
            conn,
            last_seq if isinstance(last_seq, int) and not isinstance(last_seq, bool) else None,
            epoch if isinstance(epoch, str) else None,
        )
        while (message := await _receive_json(ws)) is not None:
            if message.get("type") == "ack" and isinstance(message.get("pop_id"), str):
                hub.ack(agent_id, message["pop_id"])
    finally:
        hub.detach(conn)
        await conn.wait_closed()
        if not ws.closed:
            await ws.close()
        logger.info(
            "agent socket closed",
            extra={"agent_id": agent_id, "close_reason": conn.close_reason or ws.close_code},
        )
    return ws


async def _receive_json(ws: web.WebSocketResponse) -> dict[str, Any] | None:
    """The next JSON object from the client; ``None`` when the socket closes. Other frames and
    malformed messages are skipped."""
    async for msg in ws:
        if msg.type is not WSMsgType.TEXT:
            continue
        try:
            data = json.loads(msg.data)
        except ValueError:
            logger.debug("agent socket: not JSON: %.80r", msg.data)
            continue
        if isinstance(data, dict):
            return data
    return None
