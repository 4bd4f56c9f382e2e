"""Recorded AMI traffic from a real Asterisk 22: where to find it and how to read it.

A capture is a ``<scenario>.chunks.jsonl`` file: every TCP read (``"dir": "in"``) and write
(``"dir": "out"``) of one AMI session with its time, the bytes as latin-1 text, and an ``eof``
record when Asterisk closed the socket. ``<scenario>.jsonl`` holds the same session parsed, one
message per record. The fake PBX replays captures; the tests check the codec and the model on
them.

Captures are looked up in ``$CALLBRIDGE_CAPTURES``, then in the lab's fixture folder beside the
checkout (``../shared/fixtures/asterisk/ami``), then in the few that ship with the package for the
demo.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

PACKAGE_CAPTURES = Path(__file__).parent / "captures"
CHECKOUT_ROOT = Path(__file__).resolve().parent.parent
LAB_FIXTURES = CHECKOUT_ROOT.parent / "shared" / "fixtures" / "asterisk"

DEMO_SCENARIOS = (
    "queue_answered",
    "ivr_queue_answered",
    "queue_ring_noanswer_then_answer",
    "queue_abandon",
    "hold_moh",
    "direct_dial",
    "blind_transfer_action",
    "originate_answered",
    "originate_busy",
)


class CaptureNotFound(FileNotFoundError):
    pass


@dataclass(frozen=True, slots=True)
class Chunk:
    """One socket read or write; ``data`` is None for the end-of-stream record."""

    t: float
    direction: Literal["in", "out"]
    data: bytes | None

    @property
    def eof(self) -> bool:
        return self.data is None


@dataclass(frozen=True, slots=True)
class Capture:
    name: str
    chunks: tuple[Chunk, ...]

    def incoming(self) -> list[Chunk]:
        return [c for c in self.chunks if c.direction == "in"]

    def stream_in(self) -> bytes:
        """Everything Asterisk sent, byte for byte (the ``.ami`` file)."""
        return b"".join(c.data for c in self.chunks if c.direction == "in" and c.data is not None)

    def stream_out(self) -> bytes:
        """Everything the capture client sent (the ``.sent.ami`` file)."""
        return b"".join(c.data for c in self.chunks if c.direction == "out" and c.data is not None)


def capture_dirs() -> list[Path]:
    dirs = []
    env = os.environ.get("CALLBRIDGE_CAPTURES")
    if env:
        dirs.append(Path(env))
    dirs += [LAB_FIXTURES / "ami", PACKAGE_CAPTURES]
    return dirs


def find_capture(name: str, suffix: str = ".chunks.jsonl") -> Path:
    """Path of ``<name><suffix>``; ``name`` may also be a path to the file itself."""
    candidate = Path(name)
    if candidate.suffix == ".jsonl" and candidate.exists():
        return candidate
    for folder in capture_dirs():
        path = folder / f"{name}{suffix}"
        if path.exists():
            return path
    searched = ", ".join(str(d) for d in capture_dirs())
    raise CaptureNotFound(f"no capture {name!r} ({name}{suffix}) in {searched}")


def available_captures() -> list[str]:
    names: set[str] = set()
    for folder in capture_dirs():
        names.update(p.name.removesuffix(".chunks.jsonl") for p in folder.glob("*.chunks.jsonl"))
    return sorted(names)


def load_capture(name: str | Path) -> Capture:
    path = find_capture(str(name))
    chunks = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            data = record.get("data")
            chunks.append(
                Chunk(
                    float(record["t"]),
                    record["dir"],
                    data.encode("latin-1") if data is not None else None,
                )
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{path}:{number}: not a capture record: {exc}") from exc
    return Capture(path.name.removesuffix(".chunks.jsonl"), tuple(chunks))


def load_messages(name: str) -> list[dict[str, Any]]:
    """The parsed ``<name>.jsonl`` records (``t``, ``dir`` and ``msg`` or ``banner``)."""
    path = find_capture(name, ".jsonl")
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
