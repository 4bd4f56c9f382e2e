"""The fake PBX: a TCP server that speaks AMI and replays real Asterisk captures.

It stands in for Asterisk in the tests and in ``callbridge demo``: clients connect over real TCP,
get the banner, log in (plain or MD5) and receive the events of the captured scenarios on the
captured timeline, while their actions are answered from the state those events built.

Rules:

Rule 1. One PBX, one timeline. The scenarios are played one after another (``scenario_gap``
        seconds apart, or looping) from the first successful login on (``autoplay``), whether
        or not anyone is connected: a client that reconnects has missed what happened meanwhile
        and must resync, exactly as with Asterisk. Every logged-in connection whose event mask
        allows an event gets it; a connection joins the stream between two writes, never inside
        a message.
Rule 2. Time: a step due ``t`` capture seconds after the play's start is written at ``t / speed``
        real seconds; ``speed=None`` writes as fast as the clients read, yielding to the loop
        after every step. Pauses stop the replay between steps (Originate calls too); paused
        time does not count.
        The PBX clock (channel durations, queue waits) runs in capture seconds.
Rule 3. Writes are whole messages. After every write the PBX waits for the client to take the
        bytes (``drain``); a client that has not taken them after ``write_timeout`` seconds is
        disconnected, as Asterisk does with its ``writetimeout``. So a slow client costs at most
        the transport's high-water mark plus one step of memory, and stalls the replay for at
        most ``write_timeout``.
Rule 4. Actions are answered in order, one at a time per connection, with the client's ActionID
        (none if it sent none): login and the session actions as manager.c does; the list
        actions (``CoreShowChannels``, ``Status``, ``QueueStatus``, ``QueueSummary``) from the
        current state; ``QueuePause``/``QueueAdd``/``QueueRemove``/``QueuePenalty``/
        ``QueueMemberRingInUse`` change the state and emit the events Asterisk emits;
        ``Getvar``/``Setvar``/``Hangup`` know the live channels ("No such channel");
        ``CoreStatus`` counts them; ``Command`` answers a CLI command a capture ran with its
        captured output. Other actions get the response a capture holds for the most similar
        action of that name (responses.py); an action no capture and no handler knows is
        "Invalid/unknown command", as in Asterisk (so is any real action no capture holds).
Rule 5. ``Originate`` is answered "Originate successfully queued" and makes a call only when one
        of ``originate_scenarios`` was recorded from a matching Originate (same ``Channel``; the
        best match on ``Context``, ``Exten`` and ``CallerID``): that capture is then played from
        its Originate on, alongside the timeline, and its ``OriginateResponse`` carries the
        client's ActionID. Without a match no call is invented and no ``OriginateResponse``
        comes, which a client must survive anyway (Asterisk loses them on restarts).
        ``Hangup``, ``Redirect``, ``BlindTransfer`` and ``AGI`` are answered but change nothing:
        the capture decides when its channels go away.
"""

from __future__ import annotations

import asyncio
import datetime
import functools
import hashlib
import itertools
import logging
import random
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from callbridge.captures import LAB_FIXTURES, Capture, capture_dirs, load_capture
from callbridge.fakepbx.responses import CapturedResponses
from callbridge.fakepbx.script import Analysis, CapturedAction, Rewrite, Script, Step
from callbridge.fakepbx.state import PBXState, Queue, QueueConfig, is_true, parse_queues_conf
from cti.ami.codec import MessageReader, format_pairs
from cti.ami.message import Message, MessageKind

log = logging.getLogger(__name__)

BANNER = "Asterisk Call Manager/11.0.0"
LAB_QUEUES_CONF = LAB_FIXTURES / "lab-config" / "queues.conf"

#: The lab's queues.conf (comments dropped), for when the lab's fixtures are not beside the checkout.
BUILTIN_QUEUES_CONF = """\
[general]
persistentmembers = no
autofill = yes
shared_lastcall = yes
log_membername_as_agent = yes
[lab-queue](!)
musicclass = default
ringinuse = no
joinempty = yes
leavewhenempty = no
maxlen = 0
servicelevel = 20
weight = 0
[support](lab-queue)
strategy = rrmemory
timeout = 15
member => Local/agent1@agents/n,0,Alice Agent,Local/agent1@agents
member => Local/agent2@agents/n,0,Bob Agent,Local/agent2@agents
[sales](lab-queue)
strategy = linear
timeout = 5
member => Local/noanswer@agents/n,0,Nora NoAnswer,Local/noanswer@agents
member => Local/agent2@agents/n,0,Bob Agent,Local/agent2@agents
[billing](lab-queue)
strategy = ringall
timeout = 15
member => Local/agent5@agents/n,0,Eve Agent,Local/agent5@agents
[callcenter](lab-queue)
strategy = rrmemory
timeout = 10
wrapuptime = 1
member => Local/agent1@agents/n,0,Alice Agent,Local/agent1@agents
member => Local/agent2@agents/n,0,Bob Agent,Local/agent2@agents
member => Local/agent3@agents/n,0,Carol Agent,Local/agent3@agents
member => Local/agent4@agents/n,0,Dave Agent,Local/agent4@agents
member => Local/agent5@agents/n,0,Eve Agent,Local/agent5@agents
"""

Pairs = list[tuple[str, str]]
_FALSE = frozenset(("no", "false", "n", "f", "0", "off"))


def parse_event_mask(value: str) -> frozenset[str] | None:
    """An ``Events``/``EventMask`` value as a set of event classes; ``"all"`` in it means every
    class. None when the value is empty (Asterisk: invalid mask). manager.c ``strings_to_mask``:
    a number is a bit mask (here: 0 none, anything else all), a false word none, a true word all,
    otherwise a comma list of classes."""
    text = value.strip().lower()
    if not text:
        return None
    if text.isdigit():
        return frozenset() if int(text) == 0 else frozenset(("all",))
    if text in _FALSE:
        return frozenset()
    if is_true(text):
        return frozenset(("all",))
    return frozenset(part.strip() for part in text.split(",") if part.strip())


def _classes(privilege: str | None) -> frozenset[str]:
    return frozenset(p.strip().lower() for p in (privilege or "").split(",")) - {"all", ""}


def _response(action_id: str | None, response: str, fields: Sequence[tuple[str, str]] = ()) -> Pairs:
    """``Response: X``, then the ActionID if the client sent one, then the fields (astman_start_ack)."""
    return [("Response", response), *([("ActionID", action_id)] if action_id else []), *fields]


def _error(action_id: str | None, message: str) -> Pairs:
    return _response(action_id, "Error", [("Message", message)])


def _ack(action_id: str | None, message: str) -> Pairs:
    return _response(action_id, "Success", [("Message", message)])


def _event_tv(moment: float) -> str:
    stamp = datetime.datetime.fromtimestamp(moment, datetime.UTC)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{stamp.microsecond // 1000:03d}+0000"


@functools.lru_cache(maxsize=4)
def _captured_responses(_dirs: tuple[str, ...]) -> CapturedResponses:
    return CapturedResponses.from_captures()


@dataclass(eq=False)
class _Session:
    number: int
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    peer: str
    local: str
    opened: float = field(default_factory=time.time)
    authenticated: bool = False
    username: str = ""
    mask: frozenset[str] = frozenset(("all",))
    challenge: str = ""
    closing: str = ""
    task: asyncio.Task[None] | None = None
    filters: list[tuple[re.Pattern[str], bool]] = field(default_factory=list)
    """AMI ``Filter`` regexes on the event text; True: an exclusion (``!``)."""

    @property
    def session_id(self) -> str:
        return f"0x{0x7F0000001460 + self.number * 0x1000:x}"

    def wants(self, privilege: str | None) -> bool:
        if not self.authenticated or not self.mask:
            return False
        return "all" in self.mask or bool(_classes(privilege) & self.mask)

    def passes(self, text: str) -> bool:
        """manager.c's filter rule: with include filters an event must match one of them, and it
        must match no exclude filter."""
        includes = [pattern for pattern, exclude in self.filters if not exclude]
        if includes and not any(pattern.search(text) for pattern in includes):
            return False
        return not any(pattern.search(text) for pattern, exclude in self.filters if exclude)

    def close(self, reason: str, *, abort: bool = False) -> None:
        if not self.closing:
            self.closing = reason
        if abort:
            self.writer.transport.abort()
        else:
            self.writer.close()


class _Play:
    """One capture being played: the sequence's current scenario or an Originate's call."""

    def __init__(self, script: Script, *, sequence: bool, base: float) -> None:
        self.script = script
        self.sequence = sequence
        self.base = base
        self.task: asyncio.Task[None] | None = None


@dataclass(frozen=True, slots=True)
class _OriginateCandidate:
    analysis: Analysis
    action: CapturedAction


class FakePBX:
    """An AMI server on loopback that replays captures; see the module's rules.

    ``scenarios``: capture names (``load_capture``) or ``Capture`` objects, played in order after
    the first login; ``loop_scenarios`` starts over at the end, rewriting identifiers so that no
    Uniqueid, Linkedid, Local channel name or bridge id of a later play repeats an earlier one.
    ``originate_scenarios``: captures a client's ``Originate`` can start (Rule 5).
    ``queues_conf``: the queue roster (default: the lab's ``queues.conf``, or a copy of it
    built in when the lab's fixtures are absent).
    """

    def __init__(
        self,
        scenarios: Sequence[str | Capture] = (),
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        speed: float | None = 1.0,
        username: str = "lab",
        secret: str = "lab",
        loop_scenarios: bool = False,
        originate_scenarios: Sequence[str | Capture] = (),
        autoplay: bool = True,
        scenario_gap: float = 1.0,
        auth_fail_delay: float = 1.0,
        write_timeout: float = 5.0,
        queues_conf: str | Path | None = None,
        banner: str = BANNER,
    ) -> None:
        if speed is not None and speed <= 0:
            raise ValueError(f"speed must be positive or None (as fast as possible), not {speed!r}")
        self.host = host
        self._requested_port = port
        self.speed = speed
        self.username = username
        self.secret = secret
        self.loop_scenarios = loop_scenarios
        self.autoplay = autoplay
        self.scenario_gap = scenario_gap
        self.auth_fail_delay = auth_fail_delay
        self.write_timeout = write_timeout
        self.banner = banner

        analyses: dict[str | Capture, Analysis] = {}

        def analyse(item: str | Capture) -> Analysis:
            if item not in analyses:
                analyses[item] = Analysis(load_capture(item) if isinstance(item, str) else item)
            return analyses[item]

        self._scenarios = [analyse(s) for s in scenarios]
        self._originate_candidates = [
            _OriginateCandidate(a, action)
            for a in map(analyse, originate_scenarios)
            for action in a.originates()
        ]
        epochs = [e for a in analyses.values() for e in a.epochs]
        # Play k adds k * stride to every epoch; a stride wider than all captures together keeps
        # the epoch ranges of two plays disjoint.
        self._epoch_stride = max(epochs) - min(epochs) + 1 if epochs else 1
        self._queue_configs = self._load_queues(queues_conf)

        #: Every action received, from every connection, in arrival order.
        self.received_actions: list[Message] = []
        #: The same, by connection number (1, 2, ... in the order the connections were accepted).
        self.actions_by_connection: dict[int, list[Message]] = {}
        #: Names of the sequence's scenarios whose replay ended, in order (cut short by a restart too).
        self.played: list[str] = []

        self._server: asyncio.Server | None = None
        self._port: int | None = None
        self._sessions: dict[int, _Session] = {}
        self._numbers = itertools.count(1)
        self._plays: set[_Play] = set()
        self._sequence_task: asyncio.Task[None] | None = None
        self._next_scenario = 0
        self._plays_started = 0
        self._channel_base = 0
        self._started_at = time.time()
        self.state = self._fresh_state()
        self._clock = 0.0  # PBX seconds, advanced by the replay
        self._clock_at = 0.0  # loop time when _clock was last set
        self._resume = asyncio.Event()
        self._resume.set()
        self._pause_at: float | None = None
        self._holding = False
        self._changed = asyncio.Event()
        self._handlers: dict[str, Callable[[_Session, Message], Awaitable[bool]]] = {
            "login": self._action_login,
            "challenge": self._action_challenge,
            "logoff": self._action_logoff,
            "ping": self._action_ping,
            "events": self._action_events,
            "filter": self._action_filter,
            "coreshowchannels": self._action_core_show_channels,
            "status": self._action_status,
            "queuestatus": self._action_queue_status,
            "queuesummary": self._action_queue_summary,
            "queuepause": self._action_queue_pause,
            "queueadd": self._action_queue_add,
            "queueremove": self._action_queue_remove,
            "queuepenalty": self._action_queue_penalty,
            "queuememberringinuse": self._action_queue_ringinuse,
            "originate": self._action_originate,
            "hangup": self._action_hangup,
            "getvar": self._action_getvar,
            "setvar": self._action_setvar,
            "corestatus": self._action_core_status,
            "command": self._action_command,
        }

    # --- lifecycle -------------------------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("the fake PBX is not started")
        return self._port

    @property
    def connections(self) -> int:
        """Open client connections (logged in or not)."""
        return len(self._sessions)

    async def start(self) -> None:
        if self._server is not None:
            return
        await self._listen(self._requested_port)
        log.info("fake PBX listening on %s:%d (%d scenarios)", self.host, self.port, len(self._scenarios))

    async def stop(self) -> None:
        """Stop accepting, end the replay, close every connection; return when all is done."""
        if self._server is not None:
            self._server.close()
        await self._cancel_plays()
        await self._close_sessions("PBX stopped", abort=False)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None
            log.info("fake PBX on port %s stopped", self._port)

    async def __aenter__(self) -> FakePBX:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def _listen(self, port: int) -> None:
        self._server = await asyncio.start_server(self._on_connect, self.host, port, reuse_address=True)
        self._port = self._server.sockets[0].getsockname()[1]

    # --- fault injection -----------------------------------------------------------------------

    async def restart(self, delay: float = 0.0) -> None:
        """Act like an Asterisk restart: every connection dropped, every call gone, queues back
        to the configuration, uptime from zero. The scenario that was playing is over (it counts
        as played); the sequence goes on with the next one at the next login (``autoplay``) or
        ``start_replay()``. With ``delay`` the port is closed for that many seconds, then listens
        again on the same port."""
        log.info("fake PBX restarting (down for %.1fs)", delay)
        if delay > 0 and self._server is not None:
            self._server.close()
        await self._cancel_plays()
        await self._close_sessions("PBX restart", abort=True)
        if delay > 0 and self._server is not None:
            await self._server.wait_closed()
            await asyncio.sleep(delay)
            await self._listen(self.port)
        self._started_at = time.time()
        self.state = self._fresh_state()
        log.info("fake PBX restarted on port %d", self.port)

    async def cut_connections(self) -> None:
        """Close every client socket at once, without a goodbye; calls and the replay go on."""
        await self._close_sessions("cut by the PBX", abort=True)

    async def send_raw(self, data: bytes) -> None:
        """Write ``data`` as is to every connected client (between two messages)."""
        sessions = [s for s in self._sessions.values() if not s.closing]
        for session in sessions:
            session.writer.write(data)
        await asyncio.gather(*(self._drain(s) for s in sessions))

    def start_replay(self) -> None:
        """Start the scenario sequence now (``autoplay`` does it at the first login)."""
        if self._sequence_task is not None:
            return
        if self._next_scenario >= len(self._scenarios) and not (self.loop_scenarios and self._scenarios):
            return
        self._sequence_task = asyncio.get_running_loop().create_task(
            self._run_sequence(), name="fakepbx-replay"
        )

    def pause_replay(self, *, at: float | None = None) -> None:
        """Hold the replay (the sequence and the calls Originates started) before its next step;
        with ``at``, from the first step of the sequence's current (or next) scenario whose
        capture time (the ``t`` of the capture files) is past ``at``: the state is then the one
        Asterisk had at that moment of the capture."""
        if at is None:
            self._resume.clear()
        else:
            self._pause_at = at

    def resume_replay(self) -> None:
        self._pause_at = None
        self._resume.set()

    async def wait_paused(self) -> bool:
        """Wait until the replay is held by a pause: True; or has nothing left to play: False."""
        while True:
            if self._holding:
                return True
            if self._sequence_over():
                return False
            await self._wait_change()

    async def replay_done(self, count: int | None = None) -> None:
        """Wait until ``count`` scenarios of the sequence have been played (default: each once)."""
        target = len(self._scenarios) if count is None else count
        while len(self.played) < target and not self._sequence_over():
            await self._wait_change()

    def actions_named(self, name: str) -> list[Message]:
        """The received actions of one name (case-insensitive), e.g. every ``Originate``."""
        return [m for m in self.received_actions if m.name.lower() == name.lower()]

    # --- the replay ------------------------------------------------------------------------------

    def _fresh_state(self) -> PBXState:
        return PBXState(self._queue_configs, login_time=int(time.time()))

    @staticmethod
    def _load_queues(queues_conf: str | Path | None) -> list[QueueConfig]:
        if queues_conf is not None:
            path = Path(queues_conf)
            return parse_queues_conf(path.read_text(encoding="utf-8"), str(path))
        if LAB_QUEUES_CONF.exists():
            return parse_queues_conf(LAB_QUEUES_CONF.read_text(encoding="utf-8"), str(LAB_QUEUES_CONF))
        return parse_queues_conf(BUILTIN_QUEUES_CONF, "built-in lab queues.conf")

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def _wait_change(self) -> None:
        await self._changed.wait()

    def _can_play_more(self) -> bool:
        return bool(self._scenarios) and (self.loop_scenarios or self._next_scenario < len(self._scenarios))

    def _sequence_over(self) -> bool:
        return self._sequence_task is None and not self._can_play_more()

    def _pbx_now(self) -> float:
        if self.speed is None or self._holding:
            return self._clock
        return self._clock + (asyncio.get_running_loop().time() - self._clock_at) * self.speed

    def _new_script(
        self,
        analysis: Analysis,
        originate: CapturedAction | None = None,
        originate_action_id: str | None = None,
    ) -> Script:
        """The next play's script: play k moves its ids past those of plays 0..k-1 (script.py Rule 4)."""
        index = self._plays_started
        self._plays_started += 1
        rewrite = Rewrite(
            epoch_offset=index * self._epoch_stride, channel_offset=self._channel_base, bridge_offset=index
        )
        self._channel_base += analysis.channel_span
        if originate is None:
            return analysis.script(rewrite=rewrite)
        return analysis.script(
            start="originate", rewrite=rewrite, originate=originate, originate_action_id=originate_action_id
        )

    async def _run_sequence(self) -> None:
        try:
            while self._can_play_more():
                if self._next_scenario >= len(self._scenarios):
                    self._next_scenario = 0
                analysis = self._scenarios[self._next_scenario]
                self._next_scenario += 1
                play = _Play(self._new_script(analysis), sequence=True, base=self._pbx_now())
                self._plays.add(play)
                log.info("replay of %s started", analysis.name)
                try:
                    await self._play(play)
                finally:
                    self._plays.discard(play)
                    self.played.append(analysis.name)
                    self._notify()
                log.info("replay of %s done", analysis.name)
                if self._can_play_more() and self.scenario_gap > 0:
                    await self._sleep_scaled(self.scenario_gap)
                    self._set_clock(self._clock + self.scenario_gap)
        finally:
            self._sequence_task = None
            self._holding = False
            self._notify()

    async def _sleep_scaled(self, seconds: float) -> None:
        await asyncio.sleep(0 if self.speed is None else seconds / self.speed)

    def _set_clock(self, value: float) -> None:
        self._clock = max(self._clock, value)
        self._clock_at = asyncio.get_running_loop().time()

    async def _play(self, play: _Play) -> None:
        loop = asyncio.get_running_loop()
        origin = loop.time()
        for step in play.script.steps:
            if self.speed is not None:
                delay = origin + step.t / self.speed - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
            else:
                await asyncio.sleep(0)
            origin += await self._gate(play, step)
            self._set_clock(play.base + step.t)
            now = self._clock
            for message in step.messages:
                self.state.apply(message, now)
            await self._broadcast_step(step)

    async def _gate(self, play: _Play, step: Step) -> float:
        """Hold here while paused; return how long we held (it does not count as replay time).

        Held by ``pause_replay(at=...)``, the PBX clock shows ``at``: a CoreShowChannels then
        reports the durations Asterisk reported at that moment of the capture."""
        clock = self._pbx_now()
        if play.sequence and self._pause_at is not None and step.capture_t > self._pause_at:
            clock = play.base + self._pause_at - (step.capture_t - step.t)
            self._pause_at = None
            self._resume.clear()
        if self._resume.is_set():
            return 0.0
        loop = asyncio.get_running_loop()
        held_from = loop.time()
        self._set_clock(clock)
        self._holding = True
        self._notify()
        try:
            await self._resume.wait()
        finally:
            self._holding = False
            self._set_clock(self._clock)
        return loop.time() - held_from

    async def _broadcast_step(self, step: Step) -> None:
        targets = []
        for session in self._sessions.values():
            if session.closing or not session.authenticated or not session.mask:
                continue
            if "all" in session.mask and not session.filters:
                data = step.data
            else:
                data = b"".join(
                    m.text.encode() + b"\r\n\r\n"
                    for m in step.messages
                    if session.wants(m.get("Privilege")) and session.passes(m.text)
                )
            if data:
                session.writer.write(data)
                targets.append(session)
        if targets:
            await asyncio.gather(*(self._drain(s) for s in targets))

    async def _emit(self, event: Pairs) -> None:
        """Send an event the PBX makes itself (not from a capture) to every session that wants it."""
        message = Message.from_pairs(event)
        self.state.apply(message, self._pbx_now())
        data = format_pairs(event)
        privilege = message.get("Privilege")
        targets = [
            s
            for s in self._sessions.values()
            if not s.closing and s.wants(privilege) and s.passes(message.text)
        ]
        for session in targets:
            session.writer.write(data)
        await asyncio.gather(*(self._drain(s) for s in targets))

    async def _drain(self, session: _Session) -> None:
        try:
            async with asyncio.timeout(self.write_timeout):
                await session.writer.drain()
        except TimeoutError:
            session.close(f"slow client: output not taken within {self.write_timeout}s", abort=True)
        except (ConnectionError, RuntimeError):
            session.close("connection lost", abort=True)

    async def _cancel_plays(self) -> None:
        tasks = [t for t in [self._sequence_task, *(p.task for p in self._plays)] if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._plays.clear()
        self._sequence_task = None
        self._holding = False
        self._notify()

    # --- connections -----------------------------------------------------------------------------

    async def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername") or ("?", 0)
        local = writer.get_extra_info("sockname") or ("?", 0)
        session = _Session(
            next(self._numbers), reader, writer, f"{peer[0]}:{peer[1]}", f"{local[0]}:{local[1]}"
        )
        session.task = asyncio.current_task()
        self._sessions[session.number] = session
        log.info("AMI connection #%d from %s", session.number, session.peer)
        try:
            writer.write(f"{self.banner}\r\n".encode())
            await self._drain(session)
            parser = MessageReader(expect_banner=False)
            while not session.closing:
                data = await reader.read(65536)
                if not data:
                    session.closing = "closed by the client"
                    break
                for item in parser.feed(data):
                    if session.closing:
                        break
                    if isinstance(item, Message) and item.kind is MessageKind.ACTION:
                        if not await self._handle(session, item):
                            break
                    else:
                        # A frame without "Action:" first: manager.c answers "Missing action in request".
                        await self._send(session, _error(None, "Missing action in request"))
        except (ConnectionError, OSError):
            session.closing = session.closing or "connection lost"
        except asyncio.CancelledError:
            # Only _close_sessions cancels us, as a last resort. asyncio's streams log any handler
            # that ends with an exception, cancellation included, so end quietly instead.
            session.closing = session.closing or "cancelled"
        finally:
            self._sessions.pop(session.number, None)
            if session.closing == "cancelled":
                writer.transport.abort()
            else:
                writer.close()
            log.info("AMI connection #%d from %s closed: %s", session.number, session.peer, session.closing)

    async def _close_sessions(self, reason: str, *, abort: bool) -> None:
        sessions = list(self._sessions.values())
        for session in sessions:
            session.close(reason, abort=abort)
        tasks = [s.task for s in sessions if s.task is not None and s.task is not asyncio.current_task()]
        if tasks:
            # A closed socket ends every handler at once, but for one sleeping on a refused login.
            _, pending = await asyncio.wait(tasks, timeout=self.auth_fail_delay + 1.0)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    async def _send(self, session: _Session, pairs: Pairs, *more: Pairs) -> None:
        if session.closing:
            return
        session.writer.write(b"".join(format_pairs(p) for p in (pairs, *more)))
        await self._drain(session)

    async def _handle(self, session: _Session, action: Message) -> bool:
        """Answer one action; False closes the connection."""
        self.received_actions.append(action)
        self.actions_by_connection.setdefault(session.number, []).append(action)
        name = action.name.strip()
        key = name.lower()
        action_id = action.action_id or None
        if not session.authenticated and key not in ("login", "logoff", "challenge"):
            await self._send(session, _error(action_id, "Permission denied"))
            await self._security_event("RequestNotAllowed", session, [("RequestType", f"Action: {name}")])
            return True
        handler = self._handlers.get(key)
        if handler is not None:
            return await handler(session, action)
        answer = _captured_responses(tuple(map(str, capture_dirs()))).answer(action)
        if answer is not None:
            await self._send(session, answer)
            return True
        await self._send(
            session,
            _error(
                action_id,
                f"Invalid/unknown command: {name}. Use Action: ListCommands to show available commands.",
            ),
        )
        await self._security_event("RequestBadFormat", session, [("RequestType", f"Action: {name}")])
        return True

    async def _security_event(self, name: str, session: _Session, extra: Pairs) -> None:
        """The security events of manager.c, in the layout of the ``actions`` capture."""
        now = time.time()
        severity = "Informational" if name == "SuccessfulAuth" else "Error"
        fields: Pairs = [
            ("Event", name),
            ("Privilege", "security,all"),
            ("EventTV", _event_tv(now)),
            ("Severity", severity),
            ("Service", "AMI"),
            ("EventVersion", "2" if name == "InvalidPassword" else "1"),
        ]
        account = session.username if session.authenticated else ""
        if name != "RequestBadFormat":
            fields.append(("AccountID", account if name != "InvalidPassword" else self.username))
        fields += [
            ("SessionID", session.session_id),
            ("LocalAddress", f"IPV4/TCP/{session.local}"),
            ("RemoteAddress", f"IPV4/TCP/{session.peer}"),
        ]
        if name == "SuccessfulAuth":
            fields.append(("UsingPassword", "0"))
        fields += extra
        session_tv = _event_tv(session.opened) if session.authenticated else "1970-01-01T00:00:00.000+0000"
        fields.append(("SessionTV", session_tv))
        if name == "RequestBadFormat":
            fields.append(("AccountID", account))
        await self._emit(fields)

    # --- session actions (manager.c) -----------------------------------------------------------

    async def _action_login(self, session: _Session, action: Message) -> bool:
        action_id = action.action_id or None
        if session.authenticated:
            await self._send(session, _ack(action_id, "Already authenticated"))
            return True
        username = action.get("Username") or ""
        if (action.get("AuthType") or "").lower() == "md5":
            expected = hashlib.md5((session.challenge + self.secret).encode()).hexdigest()
            ok = bool(session.challenge) and (action.get("Key") or "") == expected
        else:
            ok = (action.get("Secret") or "") == self.secret
        ok = ok and username.lower() == self.username.lower()  # manager.c: strcasecmp
        if not ok:
            log.info(
                "AMI connection #%d from %s: login as %r refused", session.number, session.peer, username
            )
            if username.lower() == self.username.lower():
                await self._security_event("InvalidPassword", session, [])
            if self.auth_fail_delay > 0:
                await asyncio.sleep(self.auth_fail_delay)
            await self._send(session, _error(action_id, "Authentication failed"))
            session.closing = "authentication failed"
            return False
        events = action.get("Events") or ""
        mask = parse_event_mask(events) if events.strip() else frozenset(("all",))
        session.mask = mask if mask is not None else frozenset(("all",))
        session.authenticated = True
        session.username = username
        session.opened = time.time()
        replies = [_ack(action_id, "Authentication accepted")]
        if session.wants("system"):
            uptime = str(int(time.time() - self._started_at))
            replies.append(
                [
                    ("Event", "FullyBooted"),
                    ("Privilege", "system,all"),
                    ("Uptime", uptime),
                    ("LastReload", uptime),
                    ("Status", "Fully Booted"),
                ]
            )
        await self._send(session, *replies)
        log.info(
            "AMI connection #%d from %s logged in as %s (events %s)",
            session.number,
            session.peer,
            username,
            ",".join(sorted(session.mask)) or "off",
        )
        await self._security_event("SuccessfulAuth", session, [])
        if self.autoplay:
            self.start_replay()
        return True

    async def _action_challenge(self, session: _Session, action: Message) -> bool:
        action_id = action.action_id or None
        if (action.get("AuthType") or "").lower() != "md5":
            await self._send(session, _error(action_id, "Must specify AuthType"))
            return True
        if not session.challenge:
            session.challenge = str(random.randrange(2**31))
        await self._send(session, _response(action_id, "Success", [("Challenge", session.challenge)]))
        return True

    async def _action_logoff(self, session: _Session, action: Message) -> bool:
        await self._send(
            session, _response(action.action_id or None, "Goodbye", [("Message", "Thanks for all the fish.")])
        )
        session.closing = "logoff"
        return False

    async def _action_ping(self, session: _Session, action: Message) -> bool:
        now = time.time()
        await self._send(
            session,
            _response(action.action_id or None, "Success", [("Ping", "Pong"), ("Timestamp", f"{now:.6f}")]),
        )
        return True

    async def _action_filter(self, session: _Session, action: Message) -> bool:
        """``Filter`` (Operation ``Add``): a regex on the event text, ``!`` in front to exclude."""
        action_id = action.action_id or None
        if (action.get("Operation") or "").lower() != "add":
            await self._send(session, _error(action_id, "Unknown operation"))
            return True
        text = action.get("Filter") or ""
        exclude = text.startswith("!")
        try:
            pattern = re.compile(text[1:] if exclude else text)
        except re.error:
            await self._send(session, _error(action_id, "Filter Not Added"))
            return True
        session.filters.append((pattern, exclude))
        await self._send(session, _response(action_id, "Success", [("Message", "Filter Added")]))
        return True

    async def _action_events(self, session: _Session, action: Message) -> bool:
        action_id = action.action_id or None
        mask = parse_event_mask(action.get("EventMask") or "")
        if mask is None:
            await self._send(session, _error(action_id, "Invalid event mask"))
            return True
        session.mask = mask
        await self._send(session, _response(action_id, "Success", [("Events", "On" if mask else "Off")]))
        return True

    async def _action_core_status(self, session: _Session, action: Message) -> bool:
        started = datetime.datetime.fromtimestamp(self._started_at)
        date, clock = started.strftime("%Y-%m-%d"), started.strftime("%H:%M:%S")
        fields = [
            ("CoreStartupDate", date),
            ("CoreStartupTime", clock),
            ("CoreReloadDate", date),
            ("CoreReloadTime", clock),
            ("CoreCurrentCalls", str(len(self.state.channels))),
            ("CoreProcessedCalls", str(self.state.channels_created)),
        ]
        await self._send(session, _response(action.action_id or None, "Success", fields))
        return True

    # --- list actions, from the replayed state ---------------------------------------------------

    async def _send_list(
        self, session: _Session, action: Message, message: str, items: list[Pairs], complete: str
    ) -> None:
        action_id = action.action_id or None
        start = _response(action_id, "Success", [("EventList", "start"), ("Message", message)])
        end: Pairs = [("Event", complete), *([("ActionID", action_id)] if action_id else [])]
        end += [("EventList", "Complete"), ("ListItems", str(len(items)))]
        if complete == "StatusComplete":
            end.append(("Items", str(len(items))))
        await self._send(session, start, *items, end)

    async def _action_core_show_channels(self, session: _Session, action: Message) -> bool:
        items = self.state.core_show_channels(action.action_id or None, self._pbx_now())
        await self._send_list(session, action, "Channels will follow", items, "CoreShowChannelsComplete")
        return True

    async def _action_status(self, session: _Session, action: Message) -> bool:
        items = self.state.status(action.action_id or None, self._pbx_now(), action.get("Channel") or None)
        if items is None:
            await self._send(session, _error(action.action_id or None, "No such channel"))
        else:
            await self._send_list(session, action, "Channel status will follow", items, "StatusComplete")
        return True

    async def _action_queue_status(self, session: _Session, action: Message) -> bool:
        items = self.state.queue_status(
            action.action_id or None,
            self._pbx_now(),
            action.get("Queue") or None,
            action.get("Member") or None,
        )
        await self._send_list(session, action, "Queue status will follow", items, "QueueStatusComplete")
        return True

    async def _action_queue_summary(self, session: _Session, action: Message) -> bool:
        items = self.state.queue_summary(
            action.action_id or None, self._pbx_now(), action.get("Queue") or None
        )
        await self._send_list(session, action, "Queue summary will follow", items, "QueueSummaryComplete")
        return True

    # --- queue actions (app_queue.c), with their events -------------------------------------------

    async def _member_events(
        self, changed: list[tuple[Queue, dict[str, str]]], event: str, pause: bool
    ) -> None:
        for queue, member in changed:
            if pause:
                device = f"Queue:{queue.name}_pause_{member.get('Interface', '')}"
                state = "INUSE" if member.get("Paused") == "1" else "NOT_INUSE"
                await self._emit(
                    [
                        ("Event", "DeviceStateChange"),
                        ("Privilege", "call,all"),
                        ("Device", device),
                        ("State", state),
                    ]
                )
            await self._emit(self.state.member_event(event, queue, member))

    async def _action_queue_pause(self, session: _Session, action: Message) -> bool:
        action_id = action.action_id or None
        interface = action.get("Interface") or ""
        paused_text = action.get("Paused") or ""
        if not interface or not paused_text:
            await self._send(session, _error(action_id, "Need 'Interface' and 'Paused' parameters."))
            return True
        paused = is_true(paused_text)
        found = self.state.find_members(interface, action.get("Queue") or None)
        if not found:
            await self._send(session, _error(action_id, "Interface not found"))
            return True
        reason = action.get("Reason") or ""
        changed = []
        for queue, member in found:
            updated = dict(member)
            updated["Paused"] = "1" if paused else "0"
            updated["PausedReason"] = reason if paused else ""
            if paused:
                updated["LastPause"] = str(int(time.time()))
            changed.append((queue, updated))
        await self._send(
            session,
            _ack(action_id, "Interface paused successfully" if paused else "Interface unpaused successfully"),
        )
        await self._member_events(changed, "QueueMemberPause", pause=True)
        return True

    async def _action_queue_add(self, session: _Session, action: Message) -> bool:
        action_id = action.action_id or None
        queue_name = action.get("Queue") or ""
        interface = action.get("Interface") or ""
        if not queue_name:
            await self._send(session, _error(action_id, "'Queue' not specified."))
            return True
        if not interface:
            await self._send(session, _error(action_id, "'Interface' not specified."))
            return True
        queue = self.state.queues.get(queue_name)
        if queue is None:
            await self._send(session, _error(action_id, "Unable to add interface to queue: No such queue"))
            return True
        if interface in queue.members:
            await self._send(session, _error(action_id, "Unable to add interface: Already there"))
            return True
        paused = is_true(action.get("Paused"))
        penalty = action.get("Penalty") or "0"
        member = {
            "MemberName": action.get("MemberName") or interface,
            "Interface": interface,
            "StateInterface": action.get("StateInterface") or interface,
            "Membership": "dynamic",
            "Penalty": penalty if penalty.isdigit() else "0",
            "CallsTaken": "0",
            "LastCall": "0",
            "LastPause": str(int(time.time())) if paused else "0",
            "LoginTime": str(int(time.time())),
            "InCall": "0",
            "Status": "1",
            "Paused": "1" if paused else "0",
            "PausedReason": (action.get("Reason") or "") if paused else "",
            "Ringinuse": "1" if queue.config.ringinuse else "0",
            "Wrapuptime": action.get("Wrapuptime") or "0",
        }
        await self._send(session, _ack(action_id, "Added interface to queue"))
        await self._member_events([(queue, member)], "QueueMemberAdded", pause=False)
        return True

    async def _action_queue_remove(self, session: _Session, action: Message) -> bool:
        action_id = action.action_id or None
        queue_name = action.get("Queue") or ""
        interface = action.get("Interface") or ""
        if not queue_name or not interface:
            await self._send(session, _error(action_id, "Need 'Queue' and 'Interface' parameters."))
            return True
        queue = self.state.queues.get(queue_name)
        if queue is None:
            await self._send(
                session, _error(action_id, "Unable to remove interface from queue: No such queue")
            )
            return True
        member = queue.members.get(interface)
        if member is None:
            await self._send(session, _error(action_id, "Unable to remove interface: Not there"))
            return True
        if member.get("Membership") != "dynamic":
            await self._send(session, _error(action_id, "Member not dynamic"))
            return True
        await self._send(session, _ack(action_id, "Removed interface from queue"))
        await self._member_events([(queue, member)], "QueueMemberRemoved", pause=False)
        return True

    async def _action_queue_penalty(self, session: _Session, action: Message) -> bool:
        action_id = action.action_id or None
        interface = action.get("Interface") or ""
        penalty = action.get("Penalty") or ""
        if not interface or not penalty:
            await self._send(session, _error(action_id, "Need 'Interface' and 'Penalty' parameters."))
            return True
        found = self.state.find_members(interface, action.get("Queue") or None)
        if not found or not penalty.lstrip("-").isdigit() or int(penalty) < 0:
            await self._send(session, _error(action_id, "Invalid interface, queuename or penalty"))
            return True
        changed = [(q, {**m, "Penalty": str(int(penalty))}) for q, m in found]
        await self._send(session, _ack(action_id, "Interface penalty set successfully"))
        await self._member_events(changed, "QueueMemberPenalty", pause=False)
        return True

    async def _action_queue_ringinuse(self, session: _Session, action: Message) -> bool:
        action_id = action.action_id or None
        interface = action.get("Interface") or ""
        value = action.get("RingInUse") or ""
        if not interface or not value:
            await self._send(session, _error(action_id, "Need 'Interface' and 'RingInUse' parameters."))
            return True
        lowered = value.strip().lower()
        if lowered not in _FALSE and not is_true(lowered):
            await self._send(
                session,
                _error(action_id, "'RingInUse' parameter must be a truth value (yes/no, on/off, 0/1, etc)"),
            )
            return True
        found = self.state.find_members(interface, action.get("Queue") or None)
        if not found:
            # manager.c ends this message with a stray "\n", left out here.
            await self._send(session, _error(action_id, "Invalid interface, queuename, or ringinuse value"))
            return True
        changed = [(q, {**m, "Ringinuse": "1" if is_true(lowered) else "0"}) for q, m in found]
        await self._send(session, _ack(action_id, "Interface ringinuse set successfully"))
        await self._member_events(changed, "QueueMemberRinginuse", pause=False)
        return True

    # --- call actions ---------------------------------------------------------------------------

    async def _action_originate(self, session: _Session, action: Message) -> bool:
        action_id = action.action_id or None
        channel = action.get("Channel") or ""
        if not channel:
            await self._send(session, _error(action_id, "Channel not specified"))
            return True
        await self._send(session, _ack(action_id, "Originate successfully queued"))
        candidate = self._match_originate(action)
        if candidate is None:
            log.debug("Originate %s: no capture matches, no call is made", channel)
            return True
        script = self._new_script(candidate.analysis, candidate.action, action_id)
        play = _Play(script, sequence=False, base=self._pbx_now())
        play.task = asyncio.get_running_loop().create_task(
            self._run_originate(play), name="fakepbx-originate"
        )
        self._plays.add(play)
        return True

    def _match_originate(self, action: Message) -> _OriginateCandidate | None:
        channel = action.get("Channel")
        best: tuple[int, _OriginateCandidate] | None = None
        for candidate in self._originate_candidates:
            captured = candidate.action.message
            if captured.get("Channel") != channel:
                continue
            score = sum(captured.get(k) == action.get(k) for k in ("Context", "Exten", "CallerID"))
            if best is None or score > best[0]:
                best = (score, candidate)
        return best[1] if best else None

    async def _run_originate(self, play: _Play) -> None:
        log.info("call from capture %s started by an Originate", play.script.name)
        try:
            await self._play(play)
        finally:
            self._plays.discard(play)
        log.info("call from capture %s done", play.script.name)

    async def _action_hangup(self, session: _Session, action: Message) -> bool:
        action_id = action.action_id or None
        channel = action.get("Channel") or ""
        if not channel:
            await self._send(session, _error(action_id, "No channel specified"))
        elif channel not in self.state.channels:
            await self._send(session, _error(action_id, "No such channel"))
        else:
            await self._send(session, _ack(action_id, "Channel Hungup"))
        return True

    async def _action_getvar(self, session: _Session, action: Message) -> bool:
        action_id = action.action_id or None
        variable = action.get("Variable") or ""
        if not variable:
            await self._send(session, _error(action_id, "No variable specified"))
            return True
        name = action.get("Channel") or ""
        value = ""
        if name:
            channel = self.state.channels.get(name)
            if channel is None:
                await self._send(session, _error(action_id, "No such channel"))
                return True
            functions = {"callerid(num)": "CallerIDNum", "callerid(name)": "CallerIDName"}
            field_name = functions.get(variable.lower())
            value = channel.get(field_name) if field_name else channel.variables.get(variable.lstrip("_"), "")
        await self._send(session, _response(action_id, "Success", [("Variable", variable), ("Value", value)]))
        return True

    async def _action_setvar(self, session: _Session, action: Message) -> bool:
        action_id = action.action_id or None
        variable = action.get("Variable") or ""
        if not variable:
            await self._send(session, _error(action_id, "No variable specified"))
            return True
        name = action.get("Channel") or ""
        if name:
            channel = self.state.channels.get(name)
            if channel is None:
                await self._send(session, _error(action_id, "No such channel"))
                return True
            channel.variables[variable.lstrip("_")] = action.get("Value") or ""
        await self._send(session, _ack(action_id, "Variable Set"))
        return True

    async def _action_command(self, session: _Session, action: Message) -> bool:
        command = (action.get("Command") or "").strip()
        responses = _captured_responses(tuple(map(str, capture_dirs())))
        answer = responses.answer(action, require=("Command",))
        if answer is not None:
            await self._send(session, answer)
            return True
        # An uncaptured CLI command: the form of Asterisk's reply; its help hint needs the real CLI.
        first = command.split(" ", 1)[0]
        output = f"No such command '{command}' (type 'core show help {first}' for other possible commands)"
        fields = [("Message", "Command output follows"), ("Output", output)]
        await self._send(session, _response(action.action_id or None, "Error", fields))
        return True
