"""Record an IVR caller who is then queued, against the lab Asterisk (not a test).

    python -m tests.cti.model.record_ivr_queue NAME OUT_DIR

Serves the lab's FastAGI IVR on 127.0.0.1:4573 (``COMMANDS``, which ``tests/lab/test_lab_pops.py``
serves too: ``GET DATA`` for a menu choice and an account, ``SET VARIABLE IVR_ACCOUNT``, ``EXEC Queue
support``), originates ``Local/pstn@callers-ivr`` into ``ivr,s`` as ``"Jane Doe"
<+14155550123>`` with ``AGENT_TALK=4`` (the agent hangs up 4 s after answering), and records the
AMI session as ``record_click_to_dial.record`` does.
"""

from __future__ import annotations

import socket
import sys
import threading
from pathlib import Path

from tests.cti.model.record_click_to_dial import Fields, record

COMMANDS = (  # the IVR, one AGI command after another
    "ANSWER",
    "VERBOSE ivr-start 1",
    "GET DATA beep 6000 1",
    "GET DATA beep 4000 4",
    "SET VARIABLE IVR_ACCOUNT 4155",
    "EXEC Queue support,,,,60",
)


def serve_ivr(server: socket.socket) -> None:
    conn, _ = server.accept()
    with conn, conn.makefile("rwb") as stream:
        while stream.readline().strip():
            pass
        for command in COMMANDS:
            stream.write(f"{command}\n".encode())
            stream.flush()
            if not stream.readline().startswith(b"200"):
                return


def main(argv: list[str]) -> None:
    name, folder = argv
    server = socket.create_server(("127.0.0.1", 4573))
    threading.Thread(target=serve_ivr, args=(server,), daemon=True).start()
    originate: Fields = [
        ("Action", "Originate"),
        ("Channel", "Local/pstn@callers-ivr"),
        ("Context", "ivr"),
        ("Exten", "s"),
        ("Priority", "1"),
        ("CallerID", '"Jane Doe" <+14155550123>'),
        ("Async", "true"),
        ("Variable", "__AGENT_TALK=4"),
    ]
    record(name, originate, Path(folder))
    server.close()


if __name__ == "__main__":
    main(sys.argv[1:])
