"""Record a click-to-dial against the lab Asterisk in the fixtures' capture format (not a test).

    python tests/cti/model/record_click_to_dial.py NAME NUMBER OUT_DIR [VAR=VALUE ...]

Logs in as lab/lab (plain ``Login``, ``Events: on``), sends the ``Originate`` that
``screenpop.dial`` sends for agent1 (Channel ``Local/agent1@agents``, Context ``customers``, Exten
NUMBER, Async) with ``CALLBRIDGE_AGENT``/``CUSTOMER_ID`` and the lab's ring/hold knobs, reads until
every channel it saw has hung up and 2 s passed quietly, then sends ``Logoff`` and reads to EOF.
Writes ``NAME.chunks.jsonl`` (every read and write, timed, latin-1) and ``NAME.jsonl`` (parsed
messages, each timed by the read that completed it), as ``callbridge.captures`` describes.
"""

from __future__ import annotations

import json
import socket
import sys
import time
from pathlib import Path
from typing import Any

Fields = list[tuple[str, str]]


def parse(block: str) -> dict[str, Any]:
    """``Key: Value`` lines; a repeated key becomes a list (the fixtures' ``.jsonl`` rule)."""
    msg: dict[str, Any] = {}
    for line in block.split("\r\n"):
        if not line:
            continue
        key, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if key not in msg:
            msg[key] = value
        elif isinstance(msg[key], list):
            msg[key].append(value)
        else:
            msg[key] = [msg[key], value]
    return msg


class Session:
    def __init__(self, name: str) -> None:
        self.name = name
        self.sock = socket.create_connection(("127.0.0.1", 5038))
        self.sock.settimeout(0.05)
        self.t0 = time.monotonic()
        self.chunks: list[dict[str, Any]] = []
        self.messages: list[dict[str, Any]] = []
        self.buffer = ""
        self.banner = False
        self.sent = 0

    def now(self) -> float:
        return round(time.monotonic() - self.t0, 6)

    def send(self, fields: Fields) -> None:
        self.sent += 1
        fields = [fields[0], ("ActionID", f"{self.name}-{self.sent:04d}"), *fields[1:]]
        data = "".join(f"{key}: {value}\r\n" for key, value in fields) + "\r\n"
        t = self.now()
        self.sock.sendall(data.encode("latin-1"))
        self.chunks.append({"t": t, "dir": "out", "data": data})
        self.messages.append({"t": t, "dir": "out", "msg": parse(data)})

    def read(self) -> bool:
        """One read; False at EOF."""
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            return True
        t = self.now()
        if not data:
            self.chunks.append({"t": t, "dir": "in", "eof": True})
            return False
        text = data.decode("latin-1")
        self.chunks.append({"t": t, "dir": "in", "data": text})
        self.buffer += text
        if not self.banner and "\r\n" in self.buffer:
            line, _, self.buffer = self.buffer.partition("\r\n")
            self.messages.append({"t": t, "dir": "in", "banner": line})
            self.banner = True
        while "\r\n\r\n" in self.buffer:
            block, _, self.buffer = self.buffer.partition("\r\n\r\n")
            self.messages.append({"t": t, "dir": "in", "msg": parse(block + "\r\n")})
        return True

    def save(self, folder: Path) -> None:
        for suffix, records in ((".chunks.jsonl", self.chunks), (".jsonl", self.messages)):
            text = "".join(json.dumps(record) + "\n" for record in records)
            (folder / f"{self.name}{suffix}").write_text(text, encoding="utf-8")


def record(name: str, originate: Fields, folder: Path, quiet: float = 2.0, limit: float = 60.0) -> None:
    session = Session(name)
    while not session.banner:
        session.read()
    session.send([("Action", "Login"), ("Username", "lab"), ("Secret", "lab"), ("Events", "on")])
    settle = time.monotonic() + 0.5
    while time.monotonic() < settle:
        session.read()
    session.send(originate)
    live: set[str] = set()
    seen = False
    quiet_since: float | None = None
    start = time.monotonic()
    while time.monotonic() - start < limit:
        count = len(session.messages)
        session.read()
        for record_ in session.messages[count:]:
            event = record_.get("msg", {}).get("Event")
            if event == "Newchannel":
                live.add(record_["msg"]["Uniqueid"])
                seen = True
            elif event == "Hangup":
                live.discard(record_["msg"]["Uniqueid"])
        if seen and not live:
            quiet_since = quiet_since or time.monotonic()
            if time.monotonic() - quiet_since > quiet:
                break
    session.send([("Action", "Logoff")])
    while session.read():
        pass
    session.sock.close()
    session.save(folder)


def main(argv: list[str]) -> None:
    name, number, folder, *extra = argv
    originate: Fields = [
        ("Action", "Originate"),
        ("Channel", "Local/agent1@agents"),
        ("Context", "customers"),
        ("Exten", number),
        ("Priority", "1"),
        ("Timeout", "30000"),
        ("Async", "true"),
        ("Variable", "CALLBRIDGE_AGENT=agent1"),
        ("Variable", "CUSTOMER_ID=C-100188"),
        ("Variable", f"LAB_SCENARIO={name}"),
        ("Variable", "AGENT_RING=2"),
        ("Variable", "CUSTOMER_RING=3"),
        ("Variable", "CUSTOMER_HOLD=5"),
        *[("Variable", item) for item in extra],
    ]
    record(name, originate, Path(folder))


if __name__ == "__main__":
    main(sys.argv[1:])
