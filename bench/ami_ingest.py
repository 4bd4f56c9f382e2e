"""AMI ingest throughput: messages per second from the bytes of a real Asterisk capture.

The incoming bytes of a capture (``load_50`` by default: 50 calls through queues, 7,471
messages) are repeated ``--repeat`` times (banner once, Logoff's ``Goodbye`` left out) and cut
into pieces of the recorded TCP read sizes, taken in turn. Each reader gets the same pieces:

  floor          ``bytes.split(b"\\r\\n\\r\\n")`` on each read plus the carried remainder: framing
                 and nothing else
  codec          ``AMIClientProtocol.receive_data()`` + ``events_received()``: frame, decode,
                 classify, route (ActionID, lists); headers are parsed lazily
  codec+dict     the same, then ``to_dict()`` on every message: every header parsed, as the
                 peers below do
  codec+model    the codec, then ``cti.model.CallModel.apply(msg, now)`` on every event
  panoramisk     ``panoramisk.ami_protocol.AMIProtocol.data_received()`` (1.4): decode each read,
                 split, ``Message.from_line``, ``handle_message`` to a counting factory
  asterisk-ami   ``AMIClient.listen()`` (0.1.7), the body of its reader thread, on a socket
                 stand-in that returns the same reads (``recv`` size 64 KiB so that the reads
                 pass whole; ``1 KiB``, its default, is measured too)

Each is run ``--runs`` times; the best run is reported (the median beside it). ``--io`` adds
loopback TCP runs of one copy of the capture through the real clients (our codec under asyncio,
asterisk-ami's thread, pyst2's reader), with process CPU time, thread counts and per-message
latency.

    python bench/ami_ingest.py [--capture load_50] [--repeat 40] [--runs 5] [--io]
    python bench/ami_ingest.py --capture queue_answered --drop-events VarSet --repeat 300
                               # the screen-pop bench's calls: 81 events each

``--only TEXT`` runs only the readers whose label holds TEXT: under ``valgrind --tool=callgrind``
(instruction counts do not depend on the machine's load), ``--only model`` minus ``--only none``
is the instructions of codec + model.apply.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import platform
import re
import socket
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from callbridge.captures import load_capture
from cti.ami import ActionResult, AMIClientProtocol, Message, UnmatchedResponse

TERMINATOR = b"\r\n\r\n"
BANNER_PREFIX = b"Asterisk Call Manager/"


# --- the input ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Workload:
    chunks: list[bytes]
    times: list[float]  # the capture's read time of each piece (for the model's ``now``)
    messages: int
    events: int
    size: int


def _renumber(body: bytes, copy: int) -> bytes:
    """Give copy ``copy`` its own Uniqueids/Linkedids and Local channel numbers.

    Without this every copy would replay the same ids; the model would see calls it already
    ended. Ids are ``<epoch>.<seq>``; Local channels are ``-<8 hex digits>;1``.
    """
    if copy == 0:
        return body
    body = re.sub(rb"\b(17\d{8})\.(\d+)\b", lambda m: b"%s.%d" % (m[1], int(m[2]) + copy * 100_000), body)
    return re.sub(rb"-([0-9a-f]{8});", lambda m: b"-%08x;" % (int(m[1], 16) + copy * 0x10000), body)


def build_workload(name: str, repeat: int, drop: frozenset[str] = frozenset()) -> Workload:
    capture = load_capture(name)
    reads = [c for c in capture.incoming() if c.data]
    data = b"".join(c.data for c in reads if c.data is not None)
    banner = b""
    if data.startswith(BANNER_PREFIX):
        end = data.index(b"\r\n") + 2
        banner, data = data[:end], data[end:]
    last = data.rfind(TERMINATOR, 0, len(data) - 4) + 4 if data.count(TERMINATOR) > 1 else 0
    if data[last:].startswith(b"Response: Goodbye"):
        data = data[:last]  # asterisk-ami stops reading at Goodbye
    if drop:
        # What a manager.conf event filter (or the service's AMI ``Filter``) keeps from the PBX.
        frames = data.split(TERMINATOR)[:-1]
        kept = [
            f
            for f in frames
            if not (f.startswith(b"Event: ") and f.split(b"\r\n", 1)[0][7:].decode() in drop)
        ]
        data = b"".join(f + TERMINATOR for f in kept)
    frames_per_copy = data.count(TERMINATOR)
    events_per_copy = data.count(b"\r\n\r\nEvent: ") + data.startswith(b"Event: ")
    stream = banner + b"".join(_renumber(data, copy) for copy in range(repeat))
    sizes = [len(c.data) for c in reads if c.data is not None]
    read_times = [c.t for c in reads]
    span = read_times[-1] - read_times[0] + 1.0
    chunks: list[bytes] = []
    times: list[float] = []
    position = index = 0
    while position < len(stream):
        size = sizes[index % len(sizes)]
        chunks.append(stream[position : position + size])
        times.append(read_times[index % len(sizes)] + (index // len(sizes)) * span)
        position += size
        index += 1
    return Workload(chunks, times, frames_per_copy * repeat, events_per_copy * repeat, len(stream))


# --- the readers ----------------------------------------------------------------------------------


def run_floor(work: Workload) -> int:
    count = 0
    rest = b""
    for chunk in work.chunks:
        frames = (rest + chunk).split(TERMINATOR)
        rest = frames.pop()
        count += len(frames)
    return count


def _count_items(items: list[Any]) -> int:
    count = 0
    for item in items:
        if type(item) is Message or type(item) is UnmatchedResponse:
            count += 1
        elif type(item) is ActionResult:
            count += 1 + len(item.events) + (item.complete is not None)
    return count


def run_codec(work: Workload) -> int:
    protocol = AMIClientProtocol()
    count = 0
    for chunk in work.chunks:
        protocol.receive_data(chunk)
        count += _count_items(protocol.events_received())
    return count


def run_codec_dict(work: Workload) -> int:
    protocol = AMIClientProtocol()
    count = 0
    for chunk in work.chunks:
        protocol.receive_data(chunk)
        for item in protocol.events_received():
            if type(item) is Message:
                item.to_dict()
                count += 1
            elif type(item) is UnmatchedResponse:
                item.response.to_dict()
                count += 1
            elif type(item) is ActionResult:
                for message in (item.response, *item.events):
                    message.to_dict()
                count += 1 + len(item.events) + (item.complete is not None)
    return count


def load_model() -> tuple[type[Any] | None, str]:
    try:
        from cti.model import CallModel
    except ImportError as exc:
        return None, f"not available yet ({exc})"
    if not callable(getattr(CallModel, "apply", None)):
        return None, "not available yet (CallModel has no apply())"
    return CallModel, "cti.model.CallModel"


def make_run_model(model_class: type[Any]) -> Callable[[Workload], int]:
    def run_model(work: Workload) -> int:
        protocol = AMIClientProtocol()
        model = model_class()
        apply = model.apply
        count = 0
        for chunk, now in zip(work.chunks, work.times, strict=True):
            protocol.receive_data(chunk)
            for item in protocol.events_received():
                if type(item) is Message:
                    apply(item, now)
                    count += 1
                elif type(item) is UnmatchedResponse:
                    count += 1
                elif type(item) is ActionResult:
                    count += 1 + len(item.events) + (item.complete is not None)
        return count

    return run_model


def run_panoramisk(work: Workload) -> int:
    from panoramisk.ami_protocol import AMIProtocol

    dispatched = 0

    class Factory:
        def dispatch(self, message: Any) -> None:
            nonlocal dispatched
            dispatched += 1

    protocol = AMIProtocol()
    protocol.connection_made(None)
    protocol.factory = Factory()
    protocol.encoding = "utf8"  # panoramisk.Manager's default
    for chunk in work.chunks:
        protocol.data_received(chunk)
    # Responses to actions it did not send are parsed, then dropped; only events are dispatched.
    return dispatched + (work.messages - work.events)


class ScriptedSocket:
    """The recorded reads, each cut to the ``recv`` size asked for; then end of stream."""

    def __init__(self, chunks: list[bytes]) -> None:
        self._chunks = chunks
        self._index = 0
        self._rest = b""

    def recv(self, size: int) -> bytes:
        if not self._rest:
            if self._index == len(self._chunks):
                return b""
            self._rest = self._chunks[self._index]
            self._index += 1
        data, self._rest = self._rest[:size], self._rest[size:]
        return data

    def close(self) -> None:
        pass


def make_run_asterisk_ami(buffer_size: int) -> Callable[[Workload], int]:
    def run_asterisk_ami(work: Workload) -> int:
        from asterisk.ami import AMIClient

        count = 0

        def counted(source: Any, **kwargs: Any) -> None:
            nonlocal count
            count += 1

        client = AMIClient(buffer_size=buffer_size)
        client.add_listener(on_event=counted, on_response=counted, on_unknown=counted)
        client._socket = ScriptedSocket(work.chunks)
        client.finished = threading.Event()
        client.listen()
        return count

    return run_asterisk_ami


# --- timing ---------------------------------------------------------------------------------------


@dataclass
class Result:
    label: str
    best: float
    median: float
    count: int

    def rate(self, messages: int) -> float:
        return messages / self.best


def measure(label: str, run: Callable[[Workload], int], work: Workload, runs: int) -> Result:
    times = []
    count = 0
    for _ in range(runs):
        gc.collect()
        start = time.perf_counter()
        count = run(work)
        times.append(time.perf_counter() - start)
    if count != work.messages:
        raise SystemExit(f"{label}: read {count} messages, expected {work.messages}")
    return Result(label, min(times), statistics.median(times), count)


# --- loopback TCP runs (--io) -------------------------------------------------------------------


@contextmanager
def serve_once(payload: list[bytes], *, hold: threading.Event | None = None) -> Iterator[int]:
    """Accept one client on 127.0.0.1, send ``payload``, half-close (or hold until ``hold``)."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(30)

    def run() -> None:
        conn, _ = server.accept()
        with conn:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for piece in payload:
                conn.sendall(piece)
            if hold is not None:
                hold.wait(60)
                return
            conn.shutdown(socket.SHUT_WR)
            conn.settimeout(30)
            try:
                while conn.recv(65536):
                    pass
            except OSError:
                pass

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        if hold is not None:
            hold.set()
        thread.join(30)
        server.close()


def threads_since(before: set[threading.Thread]) -> int:
    return sum(1 for t in threading.enumerate() if t not in before)


def io_ours(chunks: list[bytes], expected: int) -> tuple[float, float, int]:
    async def main() -> tuple[float, float, int]:
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        count = 0

        class Reader(asyncio.Protocol):
            def __init__(self) -> None:
                self.ami = AMIClientProtocol()

            def data_received(self, data: bytes) -> None:
                nonlocal count
                self.ami.receive_data(data)
                count += _count_items(self.ami.events_received())
                if count >= expected and not done.done():
                    done.set_result(None)

        with serve_once(chunks) as port:
            before = set(threading.enumerate())
            wall, cpu = time.perf_counter(), time.process_time()
            transport, _ = await loop.create_connection(Reader, "127.0.0.1", port)
            started = threads_since(before)
            await asyncio.wait_for(done, 60)
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            transport.close()
        return wall, cpu, started

    return asyncio.run(main())


def io_asterisk_ami(chunks: list[bytes], expected: int) -> tuple[float, float, int]:
    from asterisk.ami import AMIClient

    count = 0
    done = threading.Event()

    def counted(source: Any, **kwargs: Any) -> None:
        nonlocal count
        count += 1
        if count >= expected:
            done.set()

    with serve_once(chunks) as port:
        client = AMIClient(address="127.0.0.1", port=port, timeout=30)
        client.add_listener(on_event=counted, on_response=counted)
        before = set(threading.enumerate())
        wall, cpu = time.perf_counter(), time.process_time()
        client.connect()
        started = threads_since(before)
        done.wait(120)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        client.disconnect()
    return wall, cpu, started


def io_pyst2_framing(chunks: list[bytes]) -> tuple[float, float, int]:
    """pyst2's reader thread alone (its message thread dies at the first ChanVariable)."""
    import asterisk.manager

    threading.excepthook = lambda args: None  # the message thread's AttributeError, known
    with serve_once(chunks) as port:
        manager = asterisk.manager.Manager()
        before = set(threading.enumerate())
        wall, cpu = time.perf_counter(), time.process_time()
        manager.connect("127.0.0.1", port)
        started = threads_since(before)
        queue = manager._message_queue.queue
        while not (queue and queue[-1] is None):
            time.sleep(0.002)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        manager._running.clear()
        manager._event_queue.put(None)
    threading.excepthook = threading.__excepthook__
    return wall, cpu, started


def latency_samples(
    event: bytes, connect: Callable[[int, Callable[[], None]], Callable[[], None]], samples: int
) -> list[float]:
    """Send ``event`` ``samples`` times, each after the previous one was delivered; seconds each."""
    delivered = threading.Event()
    stamps: list[float] = []
    out: list[float] = []

    def on_message() -> None:
        out.append(time.perf_counter() - stamps[-1])
        delivered.set()

    hold = threading.Event()
    finished = threading.Event()
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    ready = threading.Event()

    def run() -> None:
        conn, _ = server.accept()
        with conn:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn.sendall(b"Asterisk Call Manager/11.0.0\r\n")
            ready.wait(10)
            for _ in range(samples):
                delivered.clear()
                stamps.append(time.perf_counter())
                conn.sendall(event)
                if not delivered.wait(10):
                    break
            finished.set()
            hold.wait(10)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    close = connect(port, on_message)
    ready.set()
    finished.wait(60)
    close()
    hold.set()
    thread.join(10)
    server.close()
    return out


def connect_ours(port: int, on_message: Callable[[], None]) -> Callable[[], None]:
    loop = asyncio.new_event_loop()

    class Reader(asyncio.Protocol):
        def __init__(self) -> None:
            self.ami = AMIClientProtocol()

        def data_received(self, data: bytes) -> None:
            self.ami.receive_data(data)
            for item in self.ami.events_received():
                if type(item) is Message:
                    on_message()

    transport, _ = loop.run_until_complete(loop.create_connection(Reader, "127.0.0.1", port))
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    def close() -> None:
        loop.call_soon_threadsafe(transport.close)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()

    return close


def connect_asterisk_ami(port: int, on_message: Callable[[], None]) -> Callable[[], None]:
    from asterisk.ami import AMIClient

    client = AMIClient(address="127.0.0.1", port=port, timeout=30)
    client.add_listener(on_event=lambda source, event: on_message())
    client.connect()

    def close() -> None:
        # disconnect() closes the socket and joins the reader, but a close does not wake a
        # blocked recv(): without this shutdown it waits out ``timeout``.
        client._socket.shutdown(socket.SHUT_RDWR)
        client.disconnect()

    return close


def connect_pyst2(port: int, on_message: Callable[[], None]) -> Callable[[], None]:
    import asterisk.manager

    manager = asterisk.manager.Manager()
    manager.register_event("*", lambda event, source: on_message())
    connected = threading.Thread(target=manager.connect, args=("127.0.0.1", port), daemon=True)
    connected.start()
    connected.join(10)

    def close() -> None:
        manager._running.clear()
        manager._event_queue.put(None)

    return close


def run_io(name: str, samples: int) -> None:
    capture = load_capture(name)
    chunks = [c.data for c in capture.incoming() if c.data is not None]
    data = b"".join(chunks)
    expected = data.count(TERMINATOR)
    mb = len(data) / 1e6
    print(f"\nloopback TCP, one copy of {name} ({expected:,} messages, {mb:.1f} MB), the recorded reads:")
    print(f"  {'reader':<34} {'threads':>7} {'wall s':>8} {'CPU s':>8} {'msgs/s':>10}")
    runs: list[tuple[str, Callable[[], tuple[float, float, int]]]] = [
        ("codec under asyncio", lambda: io_ours(chunks, expected)),
        ("asterisk-ami AMIClient (recv 1 KiB)", lambda: io_asterisk_ami(chunks, expected)),
    ]
    for label, run in runs:
        wall, cpu, started = run()
        print(f"  {label:<34} {started:>7} {wall:>8.3f} {cpu:>8.3f} {expected / wall:>10,.0f}")
    wall, cpu, started = io_pyst2_framing(chunks)
    label = "pyst2 Manager, framing only"
    print(f"  {label:<34} {started:>7} {wall:>8.3f} {cpu:>8.3f} {expected / wall:>10,.0f}")
    print("  (pyst2 reads one byte per recv(); its message thread dies on the first ChanVariable)")

    # One event without ChanVariable lines (pyst2 cannot parse those), sent when the last arrived.
    event = next(
        frame
        for frame in data.split(TERMINATOR)
        if frame.startswith(b"Event: Newexten") and b"ChanVariable" in frame
    )
    event = b"\r\n".join(line for line in event.split(b"\r\n") if b"ChanVariable" not in line) + TERMINATOR
    print(f"\nlatency, write to handler, {samples} events of {len(event)} bytes, one at a time")
    print(f"  {'reader':<34} {'median ms':>9} {'p99 ms':>8}")
    for label, connect in [
        ("codec under asyncio", connect_ours),
        ("asterisk-ami listener thread", connect_asterisk_ami),
        ("pyst2 dispatch thread", connect_pyst2),
    ]:
        got = sorted(latency_samples(event, connect, samples))
        if len(got) < samples:
            print(f"  {label:<34} only {len(got)} of {samples} delivered")
            continue
        p99 = got[min(len(got) - 1, int(len(got) * 0.99))]
        print(f"  {label:<34} {statistics.median(got) * 1e3:>9.3f} {p99 * 1e3:>8.3f}")


# --- main -----------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--capture", default="load_50")
    parser.add_argument("--repeat", type=int, default=40, help="copies of the capture (default 40)")
    parser.add_argument("--runs", type=int, default=5, help="timed runs of each reader (default 5)")
    parser.add_argument("--io", action="store_true", help="also loopback TCP runs of the real clients")
    parser.add_argument("--samples", type=int, default=300, help="latency samples with --io")
    parser.add_argument(
        "--drop-events",
        default="",
        metavar="A,B",
        help="leave these events out of the capture, as an AMI event filter would (e.g. VarSet)",
    )
    parser.add_argument(
        "--only",
        metavar="TEXT",
        help="run only the readers whose label contains TEXT (e.g. 'model' under valgrind; 'none': none)",
    )
    args = parser.parse_args(argv)
    logging.disable(logging.CRITICAL)  # panoramisk logs at DEBUG per message: keep it cheap for all

    drop = frozenset(e for e in args.drop_events.split(",") if e)
    work = build_workload(args.capture, args.repeat, drop)
    print(
        f"{args.capture} x{args.repeat}{' without ' + ','.join(sorted(drop)) if drop else ''}: "
        f"{work.messages:,} messages ({work.events:,} events), "
        f"{work.size / 1e6:.1f} MB in {len(work.chunks):,} reads"
    )
    print(
        f"python {platform.python_version()}, {platform.machine()}, {os.cpu_count()} cores; "
        f"best of {args.runs} runs (median in brackets)\n"
    )

    readers: list[tuple[str, Callable[[Workload], int]]] = [
        ("floor: bytes.split", run_floor),
        ("codec (receive_data+events)", run_codec),
        ("codec + to_dict() of every msg", run_codec_dict),
    ]
    model_class, model_note = load_model()
    if model_class is not None:
        readers.append(("codec + model.apply", make_run_model(model_class)))
    readers += [
        ("panoramisk 1.4", run_panoramisk),
        ("asterisk-ami 0.1.7 (recv 64 KiB)", make_run_asterisk_ami(65536)),
        ("asterisk-ami 0.1.7 (recv 1 KiB)", make_run_asterisk_ami(1024)),
    ]
    if args.only is not None:
        readers = [(label, run) for label, run in readers if args.only in label]
    results: dict[str, Result] = {}
    for label, run in readers:
        result = measure(label, run, work, args.runs)
        results[label] = result
        print(
            f"  {label:<34} {result.rate(work.messages):>12,.0f} msgs/s"
            f"  ({work.messages / result.median:,.0f})  {result.best:7.3f} s"
        )
    if model_class is None:
        print(f"  {'codec + model.apply':<34} model: {model_note}")
    if args.only is not None:
        return 0

    codec = results["codec (receive_data+events)"].rate(work.messages)
    full = results["codec + to_dict() of every msg"].rate(work.messages)
    print("\nratios (best runs):")
    for peer in ("panoramisk 1.4", "asterisk-ami 0.1.7 (recv 64 KiB)", "asterisk-ami 0.1.7 (recv 1 KiB)"):
        rate = results[peer].rate(work.messages)
        print(f"  codec / {peer:<34} {codec / rate:6.2f}x   (codec + to_dict: {full / rate:5.2f}x)")
    print(f"  codec / {'floor':<34} {codec / results['floor: bytes.split'].rate(work.messages):6.2f}x")
    if model_class is not None:
        model_rate = results["codec + model.apply"].rate(work.messages)
        panoramisk = results["panoramisk 1.4"].rate(work.messages)
        print(f"  codec+model / {'panoramisk 1.4':<28} {model_rate / panoramisk:6.2f}x")
    targets = [f"codec >= 150k msgs/s: {'yes' if codec >= 150_000 else 'NO'} ({codec:,.0f})"]
    targets.append(
        f"codec >= 2.5x panoramisk: "
        f"{'yes' if codec >= 2.5 * results['panoramisk 1.4'].rate(work.messages) else 'NO'}"
    )
    if model_class is not None:
        model_rate = results["codec + model.apply"].rate(work.messages)
        targets.append(
            f"codec+model >= 50k msgs/s: {'yes' if model_rate >= 50_000 else 'NO'} ({model_rate:,.0f})"
        )
    print("\ntargets (2-core machine, not asserted): " + "; ".join(targets))

    if args.io:
        run_io(args.capture, args.samples)
    return 0


if __name__ == "__main__":
    sys.exit(main())
