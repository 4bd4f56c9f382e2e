"""Differential tests: the same Asterisk bytes through asterisk-ami 0.1.7, pyst2 0.5.1 and our codec.

Each package is driven through its own reading code:

* asterisk-ami: ``AMIClient.listen()`` (the body of the thread ``connect()`` starts), which reads
  with ``_next_pack()`` (splits on ``\\r\\n\\r\\n`` bytes) and parses with ``Event.read`` /
  ``Response.read``. The capture is served by a scripted socket that returns the recorded TCP
  reads (cut to its 1024-byte ``recv`` size), so the run is deterministic; one test checks the same
  result through a real loopback ``connect()``.
* pyst2: ``Manager._receive_data()`` (its reader thread: one ``readline`` per line on an unbuffered
  socket file, as ``connect()`` makes it) frames the stream, ``ManagerMsg`` parses a frame and the
  ``message_loop`` thread routes it. The end-to-end tests use the real ``Manager.connect()``.

Where they agree with us the fields are compared; where they differ, the test asserts the exact
result they produce, so it documents the difference and fails if their behaviour changes.
Findings are summarised in ``docs/dependencies.md``.

Both packages install into the ``asterisk`` package directory and both ship
``asterisk/__init__.py``; pip lets the last one installed overwrite the other's (see
``test_both_packages_import_side_by_side``).
"""

from __future__ import annotations

import base64
import functools
import gc
import hashlib
import importlib.metadata
import importlib.util
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asterisk
import asterisk.ami
import asterisk.manager as pyst
import pytest
from asterisk.ami import AMIClient
from asterisk.ami import Event as AmiEvent
from asterisk.ami import Response as AmiResponse
from panoramisk.ami_protocol import AMIProtocol

from callbridge.captures import available_captures, load_capture
from cti.ami import Message, MessageKind, MessageReader, format_pairs

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # their setDaemon/isSet/notifyAll

CAPTURES = available_captures()
BANNER = b"Asterisk Call Manager/11.0.0\r\n"
# asterisk-ami turns these keys into a {NAME: value} dict (its ``Event.parsers`` table).
AMI_DICT_KEYS = frozenset(
    {
        "ChanVariable",
        "DestChanVariable",
        "TargetChanVariable",
        "OrigTransfererChanVariable",
        "SecondTransfererChanVariable",
        "TransfereeChanVariable",
        "TransferTargetChanVariable",
    }
)
HAS_KEY_ERROR = "'dict' object has no attribute 'has_key'"


def frame(*pairs: tuple[str, str]) -> bytes:
    return format_pairs(pairs)


@functools.cache
def incoming_chunks(name: str) -> tuple[bytes, ...]:
    return tuple(c.data for c in load_capture(name).incoming() if c.data is not None)


def ours(data: bytes) -> list[Message]:
    return [m for m in MessageReader().feed(data) if isinstance(m, Message)]


@pytest.fixture(scope="module", autouse=True)
def collect_pyst2_managers() -> Iterator[None]:
    """A ``pyst.Manager`` sits in a reference cycle (its threads' targets); its ``__del__`` calls
    ``close()``, which warns (``isSet``). Collect them here, under this module's warning filter."""
    yield
    gc.collect()


@pytest.fixture
def thread_errors(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, type[BaseException], str]]:
    """Exceptions that kill threads during the test: (thread target, type, message)."""
    errors: list[tuple[str, type[BaseException], str]] = []

    def hook(args: threading.ExceptHookArgs) -> None:
        name = args.thread.name if args.thread is not None else "?"
        errors.append((name.partition("(")[2].rstrip(")"), args.exc_type, str(args.exc_value)))

    monkeypatch.setattr(threading, "excepthook", hook)
    return errors


# --- loopback peers --------------------------------------------------------------------------------

Step = bytes | float | Callable[[socket.socket], None]


@contextmanager
def loopback_pbx(steps: list[Step], *, close: bool = True) -> Iterator[tuple[int, threading.Event]]:
    """A one-connection server on 127.0.0.1 that plays ``steps`` (bytes to send, seconds to wait).

    With ``close`` it then half-closes and waits for the client to go; otherwise it holds the
    connection until the yielded event is set.
    """
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(5)
    release = threading.Event()

    def run() -> None:
        conn, _ = server.accept()
        conn.settimeout(5)
        with conn:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for step in steps:
                if isinstance(step, bytes):
                    conn.sendall(step)
                elif isinstance(step, float):
                    time.sleep(step)
                else:
                    step(conn)
                    return
            if close:
                conn.shutdown(socket.SHUT_WR)
                try:
                    while conn.recv(65536):
                        pass
                except OSError:
                    pass
            else:
                release.wait(5)

    thread = threading.Thread(target=run, name="loopback-pbx", daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1], release
    finally:
        release.set()
        thread.join(5)
        server.close()


def reset(conn: socket.socket) -> None:
    """Abort the connection with a TCP RST."""
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")


def started_threads(before: set[threading.Thread]) -> list[str]:
    return sorted(t.name.partition("(")[2].rstrip(")") for t in threading.enumerate() if t not in before)


# --- asterisk-ami ----------------------------------------------------------------------------------


class ScriptedSocket:
    """Returns the recorded TCP reads, each cut to the size asked for; then end of stream."""

    def __init__(self, chunks: list[bytes] | tuple[bytes, ...]) -> None:
        self._chunks = list(chunks)
        self.closed = False

    def recv(self, size: int) -> bytes:
        if not self._chunks:
            return b""
        chunk = self._chunks[0]
        if len(chunk) <= size:
            return self._chunks.pop(0)
        self._chunks[0] = chunk[size:]
        return chunk[:size]

    def close(self) -> None:
        self.closed = True


@dataclass
class AmiRun:
    items: list[AmiEvent | AmiResponse | str] = field(default_factory=list)
    disconnects: list[BaseException | None] = field(default_factory=list)
    connects: int = 0


def listen_to(client: AMIClient) -> AmiRun:
    run = AmiRun()

    def on_connect(source: AMIClient) -> None:
        run.connects += 1

    client.add_listener(
        on_event=lambda source, event: run.items.append(event),
        on_response=lambda source, response: run.items.append(response),
        on_unknown=lambda source, pack: run.items.append(pack),
        on_connect=on_connect,
        on_disconnect=lambda source, error=None: run.disconnects.append(error),
    )
    return run


def asterisk_ami_read(chunks: list[bytes] | tuple[bytes, ...], **kwargs: Any) -> tuple[AMIClient, AmiRun]:
    client = AMIClient(**kwargs)
    run = listen_to(client)
    client._socket = ScriptedSocket(chunks)
    client.finished = threading.Event()
    client.listen()
    return client, run


@functools.cache
def asterisk_ami_capture(name: str) -> tuple[AMIClient, AmiRun]:
    return asterisk_ami_read(incoming_chunks(name))


def ami_event_view(message: Message) -> dict[str, Any]:
    """What asterisk-ami's ``Event.read`` keeps of one of our messages (values verbatim)."""
    keys: dict[str, Any] = {}
    for key, value in message.pairs[1:]:  # the first line is ``Event: <name>``
        if key in AMI_DICT_KEYS:
            name, _, val = value.partition("=")
            keys.setdefault(key, {})[name] = val
        else:
            keys[key] = value  # a repeated key: the last value wins
    return keys


def ami_response_view(message: Message) -> dict[str, str]:
    """What ``Response.read`` keeps: values stripped, a repeated key's values joined by newlines."""
    keys: dict[str, str] = {}
    for key, value in message.pairs[1:]:
        keys[key] = f"{keys[key]}\n{value.strip()}" if key in keys else value.strip()
    return keys


@pytest.mark.parametrize("name", CAPTURES)
def test_asterisk_ami_on_capture(name: str) -> None:
    expected = ours(b"".join(incoming_chunks(name)))
    client, run = asterisk_ami_capture(name)
    assert client._ami_version == "11.0.0"
    assert run.connects == 1
    # Every message is delivered, in order, as the right kind.
    assert len(run.items) == len(expected)
    for theirs, mine in zip(run.items, expected, strict=True):
        if mine.kind is MessageKind.EVENT:
            assert isinstance(theirs, AmiEvent)
            assert theirs.name == mine.name
            assert theirs.keys == ami_event_view(mine)
        else:
            assert isinstance(theirs, AmiResponse)
            assert theirs.status == mine.name
            assert theirs.keys == ami_response_view(mine)
            assert theirs.follows == []
    # The capture ends with Logoff's ``Goodbye`` (a clean stop), or with Asterisk closing the socket.
    goodbye = expected[-1].name == "Goodbye"
    assert [type(e) for e in run.disconnects] == [type(None) if goodbye else StopIteration]


def lost_values(name: str) -> list[tuple[str, str, list[str], Any]]:
    """(event, key, our values, asterisk-ami's value) where asterisk-ami kept fewer values."""
    _, run = asterisk_ami_capture(name)
    lost = []
    for theirs, mine in zip(run.items, ours(b"".join(incoming_chunks(name))), strict=True):
        if mine.kind is not MessageKind.EVENT:
            continue
        assert isinstance(theirs, AmiEvent)
        for key in dict.fromkeys(k for k, _ in mine.pairs):
            values = mine.get_all(key)
            if len(values) > 1 and key not in AMI_DICT_KEYS:
                lost.append((mine.name, key, values, theirs.keys[key]))
    return lost


def test_asterisk_ami_loses_the_customer_id_of_an_originate_response() -> None:
    """``ChanVariable(<channel>)`` is not in its table: 3 variables in, the last one out."""
    if "originate_answered" not in CAPTURES:
        pytest.skip("originate_answered capture not available")
    lost = lost_values("originate_answered")
    originate = [entry for entry in lost if entry[0] == "OriginateResponse"]
    assert originate == [
        (
            "OriginateResponse",
            "ChanVariable(Local/+14155550142@customers-00000000;1)",
            ["CUSTOMER_ID=C-100042", "CAMPAIGN_ID=renewals-q3", "LAB_SCENARIO=originate_answered"],
            "LAB_SCENARIO=originate_answered",
        )
    ]
    local_bridge = {(event, key, their) for event, key, _, their in lost if event == "LocalBridge"}
    assert local_bridge == {
        ("LocalBridge", "LocalOneChanVariable", "LAB_SCENARIO=originate_answered"),
        ("LocalBridge", "LocalTwoChanVariable", "LAB_SCENARIO=originate_answered"),
    }


def test_asterisk_ami_collapses_repeated_keys_in_every_call_capture() -> None:
    """Across the captures: which repeated keys keep only their last value."""
    keys: set[str] = set()
    for name in CAPTURES:
        for _, key, values, their in lost_values(name):
            assert their == values[-1]
            keys.add("ChanVariable(<channel>)" if key.startswith("ChanVariable(") else key)
    if {"load_50", "blind_transfer_action"} <= set(CAPTURES):
        assert keys == {
            "ChanVariable(<channel>)",
            "LocalOneChanVariable",
            "LocalTwoChanVariable",
            "TransfererChanVariable",
        }


def test_asterisk_ami_strips_and_joins_command_output() -> None:
    if "actions" not in CAPTURES:
        pytest.skip("actions capture not available")
    _, run = asterisk_ami_capture("actions")
    mine = next(m for m in ours(b"".join(incoming_chunks("actions"))) if m.get("ActionID") == "actions-0016")
    theirs = next(
        r for r in run.items if isinstance(r, AmiResponse) and r.keys.get("ActionID") == "actions-0016"
    )
    assert mine.get_all("Output")[1] == "   Members: "
    assert theirs.keys["Output"].split("\n")[1] == "Members:"  # the CLI table's indentation is gone
    assert theirs.keys["Output"] == "\n".join(line.strip() for line in mine.get_all("Output"))


def test_threads_started_per_connection() -> None:
    with loopback_pbx([BANNER], close=False) as (port, release):
        before = set(threading.enumerate())
        client = AMIClient(address="127.0.0.1", port=port, timeout=5)
        client.connect()
        assert started_threads(before) == ["listen"]
        release.set()
        client._thread.join(5)
    with pyst2_connected([BANNER], close=False) as (run, _):
        assert run.threads == ["_receive_data", "event_dispatch", "message_loop"]


def test_asterisk_ami_through_a_real_connect_reads_the_same() -> None:
    if "queue_answered" not in CAPTURES:
        pytest.skip("queue_answered capture not available")
    chunks = incoming_chunks("queue_answered")
    _, scripted = asterisk_ami_capture("queue_answered")
    with loopback_pbx(list(chunks)) as (port, _):
        client = AMIClient(address="127.0.0.1", port=port, timeout=5)
        run = listen_to(client)
        client.connect()
        client._thread.join(5)
        assert not client._thread.is_alive()  # Goodbye ended it; its socket stays open until:
        client.disconnect()
    assert [(type(i), getattr(i, "keys", i)) for i in run.items] == [
        (type(i), getattr(i, "keys", i)) for i in scripted.items
    ]
    assert run.disconnects == [None]


@pytest.mark.parametrize("caller_name", ["Zoë Müller", "张伟"])
def test_asterisk_ami_decodes_a_utf8_character_cut_between_reads(caller_name: str) -> None:
    message = frame(("Event", "NewCallerid"), ("CallerIDNum", "+14155550123"), ("CallerIDName", caller_name))
    data = BANNER + message
    first_char = next(c for c in caller_name if len(c.encode()) > 1)
    cut = data.index(first_char.encode()) + 1  # after the first byte of that character
    assert data[cut] & 0xC0 == 0x80
    _, run = asterisk_ami_read([data[:cut], data[cut:]])
    [event] = run.items
    assert isinstance(event, AmiEvent)
    assert event.keys["CallerIDName"] == caller_name  # it frames on bytes too: no loss
    [mine] = ours(data)
    assert mine["CallerIDName"] == caller_name


def test_asterisk_ami_replaces_invalid_utf8_like_we_do() -> None:
    data = BANNER + b"Event: NewCallerid\r\nCallerIDName: Zo\xeb M\xfcller\r\n\r\n"
    _, run = asterisk_ami_read([data])
    [event] = run.items
    assert isinstance(event, AmiEvent)
    assert event.keys["CallerIDName"] == "Zo\ufffd M\ufffdller" == ours(data)[0]["CallerIDName"]


def test_asterisk_ami_hands_a_garbage_frame_to_on_unknown_and_goes_on() -> None:
    valid = frame(("Event", "FullyBooted"), ("Status", "Fully Booted"))
    _, run = asterisk_ami_read([BANNER + b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + valid])
    assert run.items[0] == "GET / HTTP/1.1\r\nHost: x"
    assert isinstance(run.items[1], AmiEvent)
    assert [type(e) for e in run.disconnects] == [StopIteration]  # end of stream without Goodbye


def test_asterisk_ami_buffers_a_one_megabyte_line_whole() -> None:
    """No cap: 1 MiB without a blank line is kept and handed to on_unknown as one string."""
    flood = b"X" * (1 << 20)
    valid = frame(("Event", "FullyBooted"), ("Status", "Fully Booted"))
    chunks = [BANNER, *(flood[i : i + 65536] for i in range(0, len(flood), 65536)), b"\r\n\r\n" + valid]
    _, run = asterisk_ami_read(chunks)
    assert [len(i) if isinstance(i, str) else type(i) for i in run.items] == [1 << 20, AmiEvent]


def test_asterisk_ami_listener_dies_with_a_non_ami_banner(
    thread_errors: list[tuple[str, type[BaseException], str]],
) -> None:
    """It raises a bare ``Exception()`` in its thread: no on_connect, no on_disconnect."""
    valid = frame(("Event", "FullyBooted"), ("Status", "Fully Booted"))
    with loopback_pbx([b"SSH-2.0-OpenSSH_9.2\r\n", valid], close=False) as (port, release):
        client = AMIClient(address="127.0.0.1", port=port, timeout=5)
        run = listen_to(client)
        client.connect()
        client._thread.join(5)
        release.set()
    assert not client._thread.is_alive()
    assert thread_errors == [("listen", Exception, "")]
    assert run.items == []
    assert run.connects == 0
    assert run.disconnects == []
    assert not client.finished.is_set()  # nothing tells the application
    client._socket.close()


def test_asterisk_ami_listener_dies_after_timeout_seconds_of_silence() -> None:
    """The socket timeout (``timeout=3`` by default) also applies to its reader: a quiet PBX kills it."""
    event = frame(("Event", "FullyBooted"), ("Status", "Fully Booted"))
    later = frame(("Event", "Newchannel"), ("Channel", "Local/1@x-0;1"))
    with loopback_pbx([BANNER, event, 0.6, later], close=False) as (port, release):
        client = AMIClient(address="127.0.0.1", port=port, timeout=0.2)
        run = listen_to(client)
        client.connect()
        client._thread.join(3)
        assert not client._thread.is_alive()
        time.sleep(0.5)  # the later event is sent; nobody reads it
        release.set()
    assert [i.name for i in run.items if isinstance(i, AmiEvent)] == ["FullyBooted"]
    assert len(run.disconnects) == 1
    assert isinstance(run.disconnects[0], TimeoutError)
    assert not client.finished.is_set()  # the client still looks connected
    client._socket.close()


def test_asterisk_ami_listener_dies_when_a_handler_raises() -> None:
    events = frame(("Event", "FullyBooted"), ("Status", "Fully Booted")) * 3
    client = AMIClient()
    seen: list[str] = []
    disconnects: list[BaseException | None] = []

    def handler(source: AMIClient, event: AmiEvent) -> None:
        seen.append(event.name)
        raise ValueError("bug in one handler")

    client.add_listener(on_event=handler, on_disconnect=lambda source, error=None: disconnects.append(error))
    client._socket = ScriptedSocket([BANNER + events])
    client.finished = threading.Event()
    client.listen()
    assert seen == ["FullyBooted"]  # the other two are never read
    assert [repr(e) for e in disconnects] == ["ValueError('bug in one handler')"]


def test_asterisk_ami_pending_action_gets_none_after_timeout_when_the_pbx_closes() -> None:
    with loopback_pbx([BANNER, 0.25]) as (port, _):  # the PBX closes 0.25 s later, unanswered
        client = AMIClient(address="127.0.0.1", port=port, timeout=0.5)
        run = listen_to(client)
        client.connect()
        future = client.send_action(asterisk.ami.SimpleAction("Ping"))
        start = time.perf_counter()
        response = future.response
        waited = time.perf_counter() - start
        client._thread.join(5)
    assert response is None
    assert 0.45 <= waited < 3  # it waited out its timeout
    assert [type(e) for e in run.disconnects] == [StopIteration]


def test_asterisk_ami_on_a_reset_connection_reports_the_error() -> None:
    event = frame(("Event", "FullyBooted"), ("Status", "Fully Booted"))
    with loopback_pbx([BANNER, event, 0.2, reset]) as (port, _):
        client = AMIClient(address="127.0.0.1", port=port, timeout=5)
        run = listen_to(client)
        client.connect()
        client._thread.join(5)
    assert [i.name for i in run.items if isinstance(i, AmiEvent)] == ["FullyBooted"]
    assert len(run.disconnects) == 1
    assert isinstance(run.disconnects[0], ConnectionResetError)


# --- pyst2 -----------------------------------------------------------------------------------------


def pyst2_frames(data: bytes) -> list[list[str]]:
    """The frames pyst2's reader (``Manager._receive_data``) cuts from ``data``."""
    manager = pyst.Manager()
    ours_end, theirs_end = socket.socketpair()

    def write() -> None:
        theirs_end.sendall(data)
        theirs_end.shutdown(socket.SHUT_WR)

    writer = threading.Thread(target=write)
    writer.start()
    manager._sock = ours_end.makefile(mode="rwb", buffering=0)  # as Manager.connect() does
    ours_end.close()
    manager._connected.set()
    manager._running.set()
    try:
        manager._receive_data()  # returns at end of stream
    finally:
        manager._running.clear()
        writer.join(5)
        theirs_end.close()
    frames = list(manager._message_queue.queue)
    assert frames[-1] is None  # its end-of-stream marker
    return frames[:-1]


def pyst2_grouping(messages: list[Message]) -> list[list[Message]]:
    """pyst2 ignores blank lines from a line containing 'status will follow' to one containing
    'StatusComplete': a Status or QueueStatus list becomes one frame."""
    groups: list[list[Message]] = []
    position = 0
    while position < len(messages):
        group = [messages[position]]
        position += 1
        if "status will follow" in group[0].text:
            while "StatusComplete" not in group[-1].text:
                group.append(messages[position])
                position += 1
        groups.append(group)
    return groups


def has_chan_variable(message: Message) -> bool:
    return any("ChanVariable" in key for key, _ in message.pairs)


@pytest.mark.parametrize("name", [n for n in CAPTURES if n != "load_50"])  # 12 s for load_50
def test_pyst2_frames_and_messages_on_capture(name: str) -> None:
    data = b"".join(incoming_chunks(name))
    frames = pyst2_frames(data)
    groups = pyst2_grouping(ours(data))
    # The banner becomes a made-up response.
    assert frames[0] == ["Response: Generated Header\r\n", "Asterisk Call Manager/11.0.0\r\n"]
    # Framing: byte for byte our frames, except that status lists are glued into one.
    assert len(frames) - 1 == len(groups)
    for lines, group in zip(frames[1:], groups, strict=True):
        assert "".join(lines) == "\r\n\r\n".join(m.text for m in group) + "\r\n"
    # Parsing: any ChanVariable header raises (``dict.has_key`` is Python 2); otherwise headers
    # are stripped and a repeated key keeps its last value.
    for lines, group in zip(frames[1:], groups, strict=True):
        head = group[0]
        if has_chan_variable(head):
            with pytest.raises(AttributeError, match=HAS_KEY_ERROR):
                pyst.ManagerMsg(lines)
            continue
        parsed = pyst.ManagerMsg(lines)
        assert parsed.headers == {k.strip(): v.strip() for k, v in head.pairs}
        if len(group) > 1:  # the list events are text in ``data``, never events
            assert parsed.data == "\r\n" + "\r\n\r\n".join(m.text for m in group[1:]) + "\r\n"
        else:
            assert parsed.data == ""


def test_pyst2_cannot_parse_most_of_a_call() -> None:
    """Share of received messages ``ManagerMsg`` raises on, per capture (facts for the docs)."""
    if not {"queue_answered", "queue_member_admin"} <= set(CAPTURES):
        pytest.skip("captures not available")
    for name, counts in [("queue_answered", (143, 170)), ("queue_member_admin", (0, 39))]:
        messages = ours(b"".join(incoming_chunks(name)))
        assert (sum(map(has_chan_variable, messages)), len(messages)) == counts


@dataclass
class PystRun:
    manager: pyst.Manager
    greeting: Any
    events: list[str]
    threads: list[str]


@contextmanager
def pyst2_connected(steps: list[Step], *, close: bool = True) -> Iterator[tuple[PystRun, threading.Event]]:
    with loopback_pbx(steps, close=close) as (port, release):
        manager = pyst.Manager()
        events: list[str] = []
        manager.register_event("*", lambda event, source: events.append(event.name))
        before = set(threading.enumerate())
        greeting = manager.connect("127.0.0.1", port)
        run = PystRun(manager, greeting, events, started_threads(before))
        try:
            yield run, release
        finally:
            release.set()
            manager.message_thread.join(5)
            manager._running.clear()  # so that Manager.__del__ does not try to log off
            manager._event_queue.put(None)
            manager.event_dispatch_thread.join(5)


def drain(q: Any) -> list[Any]:
    return list(q.queue)


def test_pyst2_message_thread_dies_on_the_first_channel_event(
    thread_errors: list[tuple[str, type[BaseException], str]],
) -> None:
    if "queue_answered" not in CAPTURES:
        pytest.skip("queue_answered capture not available")
    chunks = incoming_chunks("queue_answered")
    messages = ours(b"".join(chunks))
    first_bad = next(i for i, m in enumerate(messages) if has_chan_variable(m))
    assert messages[first_bad].name == "Newchannel"
    with pyst2_connected(list(chunks)) as (run, _):
        assert run.greeting.headers == {"Response": "Generated Header"}
        assert run.greeting.data == "Asterisk Call Manager/11.0.0\r\n"
        run.manager.message_thread.join(5)
        assert not run.manager.message_thread.is_alive()
        # the dispatch thread is left blocked on its queue for ever
        assert run.manager.event_dispatch_thread.is_alive()
        delivered = list(run.events)
        responses = drain(run.manager._response_queue)
        stranded = [f for f in drain(run.manager._message_queue) if f]
    assert thread_errors == [("message_loop", AttributeError, HAS_KEY_ERROR)]
    before = messages[:first_bad]
    assert (
        delivered
        == [m.name for m in before if m.kind is MessageKind.EVENT]
        == ["FullyBooted", "SuccessfulAuth"]
    )
    assert [r.headers["Response"] for r in responses] == [
        m.name for m in before if m.kind is MessageKind.RESPONSE
    ]
    assert len(stranded) == len(messages) - first_bad - 1  # read from the socket, never delivered


def test_pyst2_works_on_a_session_without_channel_variables_but_swallows_status_lists() -> None:
    if "queue_member_admin" not in CAPTURES:
        pytest.skip("queue_member_admin capture not available")
    chunks = incoming_chunks("queue_member_admin")
    groups = pyst2_grouping(ours(b"".join(chunks)))
    with pyst2_connected(list(chunks)) as (run, _):
        run.manager.message_thread.join(5)
        delivered = list(run.events)
        responses = drain(run.manager._response_queue)
    heads = [g[0] for g in groups]
    assert delivered == [m.name for m in heads if m.kind is MessageKind.EVENT]
    assert "QueueMember" not in delivered  # the QueueStatus list came in as one response
    assert [r.headers["Response"] for r in responses] == [
        m.name for m in heads if m.kind is MessageKind.RESPONSE
    ]
    merged = next(r for r in responses if r.headers.get("Message") == "Queue status will follow")
    assert merged.data.count("Event: QueueMember\r\n") == 3


def test_pyst2_matches_responses_by_order_so_one_stray_frame_shifts_every_reply() -> None:
    pong = frame(("Response", "Success"), ("ActionID", "p1"), ("Ping", "Pong"))
    steps: list[Step] = [BANNER, b"not an AMI message\r\n\r\n", 0.3, pong]
    with pyst2_connected(steps, close=False) as (run, release):
        first = run.manager.send_action({"Action": "Ping", "ActionID": "p1"})
        second = run.manager.send_action({"Action": "Ping", "ActionID": "p2"})
        release.set()
    assert first.headers == {"Response": "Generated Header"}
    assert first.data == "not an AMI message\r\n"
    assert second.headers["ActionID"] == "p1"  # the reply to the first Ping, given to the second


def test_pyst2_send_action_waits_for_ever_after_its_message_thread_died(
    thread_errors: list[tuple[str, type[BaseException], str]],
) -> None:
    newchannel = frame(
        ("Event", "Newchannel"), ("Channel", "Local/1@x-0;1"), ("ChanVariable", "CUSTOMER_ID=C-1")
    )
    pong = frame(("Response", "Success"), ("ActionID", "p1"), ("Ping", "Pong"))
    outcome: list[object] = []
    with pyst2_connected([BANNER, newchannel, 0.2, pong], close=False) as (run, release):

        def ping() -> None:
            try:
                outcome.append(run.manager.send_action({"Action": "Ping", "ActionID": "p1"}))
            except pyst.ManagerSocketException as exc:
                outcome.append(exc)

        waiter = threading.Thread(target=ping, daemon=True)
        waiter.start()
        waiter.join(0.8)
        assert waiter.is_alive()  # the Pong arrived 0.6 s ago; nobody routes it
        assert thread_errors == []  # and nothing has been reported: the dying thread waits in join()
        assert run.manager.connected()
        release.set()  # the PBX closes the socket
        run.manager.message_thread.join(5)
        assert thread_errors == [("message_loop", AttributeError, HAS_KEY_ERROR)]
        waiter.join(0.3)
        assert waiter.is_alive()  # still waiting: no one will ever answer
        run.manager._response_queue.put(None)  # unblock it for the test's sake
        waiter.join(5)
    assert [type(o) for o in outcome] == [pyst.ManagerSocketException]


def test_pyst2_fails_a_waiting_action_when_the_connection_is_cut() -> None:
    outcome: list[object] = []
    with pyst2_connected([BANNER, 0.5]) as (run, _):
        try:
            run.manager.send_action({"Action": "Ping", "ActionID": "p1"})
        except pyst.ManagerSocketException as exc:
            outcome.append(exc)
    assert [str(o) for o in outcome] == ["(0, 'Connection Terminated')"]


def test_pyst2_has_no_cap_a_long_line_becomes_a_made_up_response() -> None:
    """300 kB without a line end (more than our 256 KiB cap) is one frame, then a response."""
    event = frame(("Event", "FullyBooted"), ("Status", "Fully Booted"))
    frames = pyst2_frames(BANNER + b"X" * 300_000 + b"\r\n\r\n" + event)
    assert frames[1] == ["X" * 300_000 + "\r\n"]
    parsed = pyst.ManagerMsg(frames[1])
    assert parsed.headers == {"Response": "Generated Header"}
    assert len(parsed.data) == 300_002
    assert pyst.ManagerMsg(frames[2]).headers == {"Event": "FullyBooted", "Status": "Fully Booted"}


def test_pyst2_reads_lines_so_a_split_character_survives_but_invalid_bytes_vanish() -> None:
    good = frame(("Event", "NewCallerid"), ("CallerIDName", "Zoë Müller"))
    bad = b"Event: NewCallerid\r\nCallerIDName: Zo\xeb M\xfcller\r\n\r\n"
    frames = pyst2_frames(BANNER + good + bad)
    assert pyst.ManagerMsg(frames[1]).headers["CallerIDName"] == "Zoë Müller"
    assert pyst.ManagerMsg(frames[2]).headers["CallerIDName"] == "Zo Mller"  # decode(..., 'ignore')
    assert ours(BANNER + bad)[0]["CallerIDName"] == "Zo\ufffd M\ufffdller"


# --- panoramisk, for the record (it is the bench peer) --------------------------------------------


@pytest.mark.parametrize(("caller_name", "seen"), [("Zoë Müller", "Zo Müller"), ("张伟", "伟")])
def test_panoramisk_loses_a_utf8_character_cut_between_reads(caller_name: str, seen: str) -> None:
    message = frame(("Event", "NewCallerid"), ("CallerIDName", caller_name))
    data = BANNER + message
    first_char = next(c for c in caller_name if len(c.encode()) > 1)
    cut = data.index(first_char.encode()) + 1  # after the first byte of that character
    dispatched: list[Any] = []

    class Factory:
        def dispatch(self, message: Any) -> None:
            dispatched.append(message)

    protocol = AMIProtocol()
    protocol.connection_made(None)
    protocol.factory = Factory()
    protocol.encoding = "utf8"  # panoramisk.Manager's default
    protocol.data_received(data[:cut])
    protocol.data_received(data[cut:])
    [event] = dispatched
    assert event["CallerIDName"] == seen
    assert ours(data)[0]["CallerIDName"] == caller_name


# --- packaging -------------------------------------------------------------------------------------


def test_both_packages_import_side_by_side(tmp_path: Path) -> None:
    """Both ship ``asterisk/__init__.py``: the one installed last overwrites the other's (here,
    pyst2's). Without it (as after uninstalling either), ``asterisk`` is a namespace package and
    both still import."""
    init = Path(asterisk.__file__ or "")
    assert init.name == "__init__.py"
    digest = base64.urlsafe_b64encode(hashlib.sha256(init.read_bytes()).digest()).rstrip(b"=").decode()
    installed = {}
    for dist in ("asterisk-ami", "pyst2"):
        files = importlib.metadata.files(dist) or []
        record = next(f for f in files if str(f) == "asterisk/__init__.py")
        assert record.hash is not None
        installed[dist] = record.hash.value == digest
    assert sum(installed.values()) == 1  # one file, two owners
    assert Path(asterisk.ami.__file__ or "").parent.parent == init.parent == Path(pyst.__file__).parent

    copy = tmp_path / "asterisk"
    copy.mkdir()
    for part in ("ami", "manager.py"):
        source = init.parent / part
        target = copy / part
        if source.is_dir():
            target.mkdir()
            for py in source.glob("*.py"):
                (target / py.name).write_bytes(py.read_bytes())
        else:
            target.write_bytes(source.read_bytes())
    spec = importlib.util.find_spec("six")  # pyst2 needs it
    assert spec is not None
    six = Path(spec.origin or "")
    (tmp_path / "six.py").write_bytes(six.read_bytes())
    code = (
        "import asterisk, asterisk.ami, asterisk.manager as m; print(asterisk.__file__, m.Manager.__name__)"
    )
    result = subprocess.run(
        [sys.executable, "-S", "-c", code],  # -S: no site-packages, only the copy
        cwd=tmp_path,
        env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    assert result.stdout.split() == ["None", "Manager"]
