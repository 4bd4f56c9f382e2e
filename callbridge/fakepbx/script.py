"""A capture turned into what the fake PBX replays: timed steps of bytes and the events they hold.

Sans-IO: a ``Capture`` in, a ``Script`` out; no clock, no socket.

Rules:

Rule 1. Only what Asterisk sent is replayed, and of that only events. Cut out: the banner; every
        response (they answer actions the capture client sent, not ours); the events of the
        capture client's list actions (those carrying the ActionID of an action answered with
        ``EventList: start``: ``CoreShowChannel``, ``QueueMember``...); the events its own Login
        produced (``FullyBooted`` and the ``SuccessfulAuth`` right after the Login response: the
        fake PBX makes those for each real login). ``OriginateResponse`` stays: it is how the call
        ended, whoever asked for it.
Rule 2. What is left keeps its captured chunking: the events of one TCP read are written in one
        write. A read that ends inside a message is merged with the next ones (no capture has
        one), so every step ends on a message boundary and the PBX can put its own responses
        between steps without cutting an event in two.
Rule 3. Step times count from a reference point of the capture: its Login response for a scenario
        (``start="login"``), or its Originate action for a play started by a client's Originate
        (``start="originate"``, which also drops everything before that Originate).
Rule 4. A later play rewrites the identifiers that would collide with an earlier one, keeping
        their length (so a rewrite never moves a byte): the epoch part of every Uniqueid and
        Linkedid (``1795581569.3``) gets ``epoch_offset``, the 8 hex digits of every Local channel
        name (``Local/pstn@callers-00000000;1``) get ``channel_offset``, and the last group of every
        bridge UUID gets ``bridge_offset``. Play 0 is the capture byte for byte.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from callbridge.captures import Capture
from cti.ami.codec import BANNER_PREFIX, TERMINATOR, MessageReader
from cti.ami.message import Message, MessageKind

# Each pattern starts with literal text so that a 3.6 MB capture is rewritten in milliseconds.
_EPOCH = re.compile(rb"(: |%20)(\d{9,11})(?=\.\d)")
_LOCAL_SUFFIX = re.compile(rb"-([0-9a-f]{8})(?=;[0-9]|%3B[0-9])")
_BRIDGE_UUID = re.compile(
    rb"(Bridge(?:Uniqueid|Id|ID): [0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-)([0-9a-f]{12})"
)


@dataclass(frozen=True, slots=True)
class Step:
    """One write: ``data`` at ``t`` seconds after the play's start; ``messages`` are its events."""

    t: float
    capture_t: float
    data: bytes
    messages: tuple[Message, ...]


@dataclass(frozen=True, slots=True)
class Script:
    name: str
    steps: tuple[Step, ...]


@dataclass(frozen=True, slots=True)
class Rewrite:
    epoch_offset: int = 0
    channel_offset: int = 0
    bridge_offset: int = 0

    @property
    def identity(self) -> bool:
        return not (self.epoch_offset or self.channel_offset or self.bridge_offset)


@dataclass(frozen=True, slots=True)
class CapturedAction:
    """An action the capture client sent, with the time it sent it."""

    t: float
    message: Message


@dataclass(frozen=True, slots=True)
class _Frame:
    start: int
    end: int  # end of the frame's text; the terminator follows
    chunk: int  # index of the chunk whose read completed the frame


class Analysis:
    """What is replayable in one capture, computed once and reused by every play of it."""

    def __init__(self, capture: Capture) -> None:
        self.name = capture.name
        self.stream = b"".join(c.data for c in capture.chunks if c.direction == "in" and c.data is not None)
        self.chunk_times: list[float] = []
        self.actions: list[CapturedAction] = []
        self._frames: list[_Frame] = []
        self._messages: list[Message | None] = []
        self._kept: list[bool] = []
        self.login_t: float | None = None
        #: the responses Asterisk gave to the capture client's actions, by ActionID
        self.responses: dict[str, Message] = {}

        out_reader = MessageReader(expect_banner=False)
        ends: list[int] = []  # stream offset at the end of each "in" chunk
        offset = 0
        for record in capture.chunks:
            if record.data is None:
                continue
            if record.direction == "in":
                offset += len(record.data)
                ends.append(offset)
                self.chunk_times.append(record.t)
            else:
                for item in out_reader.feed(record.data):
                    if isinstance(item, Message) and item.kind is MessageKind.ACTION:
                        self.actions.append(CapturedAction(record.t, item))

        start = 0
        if self.stream.startswith(BANNER_PREFIX):
            start = self.stream.find(b"\r\n") + 2
        chunk = 0
        reader = MessageReader(expect_banner=False)
        while True:
            end = self.stream.find(TERMINATOR, start)
            if end < 0:
                break  # a capture cut inside a message: the tail is not replayable
            while ends[chunk] < end + len(TERMINATOR):
                chunk += 1
            if end > start:
                frame = _Frame(start, end, chunk)
                parsed = reader.feed(self.stream[start : end + len(TERMINATOR)])
                message = parsed[0] if parsed and isinstance(parsed[0], Message) else None
                self._frames.append(frame)
                self._messages.append(message)
            start = end + len(TERMINATOR)
        self._decide()
        self.epochs = sorted({int(epoch) for _, epoch in _EPOCH.findall(self.stream)})
        suffixes = [int(m, 16) for m in _LOCAL_SUFFIX.findall(self.stream)]
        self.channel_span = max(suffixes) + 1 if suffixes else 0

    def _decide(self) -> None:
        login_ids = {a.message.action_id for a in self.actions if a.message.name.lower() == "login"}
        list_ids: set[str] = set()
        for message in self._messages:
            if (
                message is not None
                and message.kind is MessageKind.RESPONSE
                and (message.get("EventList") or "").lower() == "start"
                and message.action_id
            ):
                list_ids.add(message.action_id)
        after_login = False
        own_auth_seen = False
        for frame, message in zip(self._frames, self._messages, strict=True):
            keep = True
            if message is None:
                keep = True  # not AMI: replayed as captured, for the client's parser to judge
            elif message.kind is MessageKind.RESPONSE:
                keep = False
                if message.action_id:
                    self.responses.setdefault(message.action_id, message)
                if message.action_id in login_ids and self.login_t is None:
                    self.login_t = self.chunk_times[frame.chunk]
                    after_login = True
            elif message.name == "FullyBooted":
                keep = False
            elif message.name == "SuccessfulAuth" and after_login and not own_auth_seen:
                keep = False
                own_auth_seen = True
            elif "ActionID:" in message.text and message.action_id in list_ids:
                keep = False
            self._kept.append(keep)

    def originates(self) -> list[CapturedAction]:
        return [a for a in self.actions if a.message.name.lower() == "originate"]

    def script(
        self,
        *,
        start: Literal["login", "originate"] = "login",
        rewrite: Rewrite = Rewrite(),
        originate: CapturedAction | None = None,
        originate_action_id: str | None = None,
    ) -> Script:
        """The steps of one play; for ``start="originate"``, ``originate`` is the captured action
        the client's Originate matched and ``originate_action_id`` the client's ActionID (None: the
        client sent none, and the ``OriginateResponse`` carries none either)."""
        stream = self.stream if rewrite.identity else _rewrite(self.stream, rewrite, self.epochs)
        if start == "originate":
            if originate is None:
                raise ValueError("start='originate' needs the captured Originate it starts from")
            t_ref = originate.t
            captured_id = originate.message.action_id
        else:
            t_ref = self.login_t if self.login_t is not None else (self.chunk_times or [0.0])[0]
            captured_id = None
        fix_id = _action_id_fixer(captured_id, originate_action_id) if captured_id else None

        steps: list[Step] = []
        data: list[bytes] = []
        messages: list[Message] = []
        reader = MessageReader(expect_banner=False)
        last_chunk = -1
        for frame, kept in zip(self._frames, self._kept, strict=True):
            if frame.chunk != last_chunk and data:
                steps.append(self._step(last_chunk, t_ref, data, messages))
                data, messages = [], []
            last_chunk = frame.chunk
            chunk_t = self.chunk_times[frame.chunk]
            if not kept or (start == "originate" and chunk_t < t_ref):
                continue
            raw = stream[frame.start : frame.end + len(TERMINATOR)]
            if fix_id is not None and b"OriginateResponse" in raw[:40]:
                raw = fix_id(raw)
            data.append(raw)
            messages.extend(m for m in reader.feed(raw) if isinstance(m, Message))
        if data:
            steps.append(self._step(last_chunk, t_ref, data, messages))
        return Script(self.name, tuple(steps))

    def _step(self, chunk: int, t_ref: float, data: list[bytes], messages: list[Message]) -> Step:
        capture_t = self.chunk_times[chunk]
        return Step(max(capture_t - t_ref, 0.0), capture_t, b"".join(data), tuple(messages))


def _action_id_fixer(captured: str, client: str | None) -> Callable[[bytes], bytes]:
    line = re.compile(rb"\r\nActionID: " + re.escape(captured.encode()) + rb"\r\n")
    replacement = b"\r\n" if client is None else b"\r\nActionID: " + client.encode() + b"\r\n"

    def fix(raw: bytes) -> bytes:
        return line.sub(lambda _: replacement, raw, count=1)

    return fix


def _rewrite(stream: bytes, rewrite: Rewrite, epochs: list[int]) -> bytes:
    out = stream
    if rewrite.epoch_offset and epochs:
        known = frozenset(epochs)

        def epoch(match: re.Match[bytes]) -> bytes:
            old = match.group(2)
            if int(old) not in known:
                return match.group(0)
            new = str(int(old) + rewrite.epoch_offset)
            if len(new) != len(old):  # wrap around rather than change the length
                width = len(old)
                new = str(10 ** (width - 1) + (int(new) - 10 ** (width - 1)) % (9 * 10 ** (width - 1)))
            return match.group(1) + new.encode()

        out = _EPOCH.sub(epoch, out)
    if rewrite.channel_offset:

        def channel(match: re.Match[bytes]) -> bytes:
            return b"-%08x" % ((int(match.group(1), 16) + rewrite.channel_offset) & 0xFFFFFFFF)

        out = _LOCAL_SUFFIX.sub(channel, out)
    if rewrite.bridge_offset:

        def bridge(match: re.Match[bytes]) -> bytes:
            tail = (int(match.group(2), 16) + rewrite.bridge_offset) % (1 << 48)
            return match.group(1) + b"%012x" % tail

        out = _BRIDGE_UUID.sub(bridge, out)
    if len(out) != len(stream):  # pragma: no cover - every rewrite above keeps lengths
        raise AssertionError("identifier rewrite changed the stream length")
    return out
