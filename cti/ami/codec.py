"""Sans-IO AMI framing: bytes in, messages out; pairs in, bytes out.

Rules (what the reader promises, whatever the peer sends):

Rule 1. Frames are cut on the bytes ``\\r\\n\\r\\n`` before anything is decoded, so a UTF-8
        character split across two TCP reads is decoded whole.
Rule 2. The first line of a client-side stream may be the banner
        (``Asterisk Call Manager/11.0.0``), a line with no blank line after it.
Rule 3. A frame whose first line is not ``Event:``, ``Response:`` or ``Action:`` is reported as a
        ``ProtocolViolation`` and dropped; the next frame is read normally.
Rule 4. A frame longer than ``max_message`` bytes, or holding a line longer than ``max_line``,
        is reported and dropped. When the buffer holds more than ``max_message`` bytes without a
        frame end, the reader discards up to the next blank line (resynchronisation) and keeps
        only a few bytes in memory: a peer cannot make it buffer more than ``max_message``.
Rule 5. The reader never raises on bad input; errors are values in the output. Only our own
        misuse (a header value with CR/LF) raises ``LocalProtocolError``.
Rule 6. ``Response: Follows`` (the command output form of Asterisk before 14) ends with
        ``--END COMMAND--``; its free text lines are kept as ``Output`` values.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from cti.ami.message import Message, MessageKind, _as_pairs

TERMINATOR = b"\r\n\r\n"
BANNER_PREFIX = b"Asterisk Call Manager/"
DEFAULT_MAX_MESSAGE = 256 * 1024
DEFAULT_MAX_LINE = 64 * 1024

_KINDS = {"Event": MessageKind.EVENT, "Response": MessageKind.RESPONSE, "Action": MessageKind.ACTION}


class AMIError(Exception):
    """Base of every error raised by ``cti.ami``."""


class LocalProtocolError(AMIError):
    """We were about to send something that is not valid AMI."""


@dataclass(frozen=True, slots=True)
class Banner:
    """The greeting line, e.g. ``Asterisk Call Manager/11.0.0``; ``version`` is ``11.0.0``."""

    text: str

    @property
    def version(self) -> str:
        return self.text.partition("/")[2]


@dataclass(frozen=True, slots=True)
class ProtocolViolation:
    """The peer sent something that is not AMI; what and where (byte offset in the stream)."""

    reason: str
    offset: int
    excerpt: str


def classify(text: str) -> tuple[MessageKind, str]:
    """Kind and name from the first line; an ``Event`` header anywhere makes it an event.

    ``OriginateResponse`` starts with ``Event:`` and also has ``Response:``; other messages put
    ``Event`` first too, but "an event whenever it has Event" is Asterisk's own rule.
    """
    end = text.find("\r\n")
    first = text if end < 0 else text[:end]
    key, sep, value = first.partition(":")
    kind = _KINDS.get(key)
    if kind is None or not sep:
        if "\r\nEvent:" in text:
            value = text[text.index("\r\nEvent:") + 8 :].split("\r\n", 1)[0]
            return MessageKind.EVENT, value.strip()
        raise ValueError(first)
    if kind is MessageKind.RESPONSE and "\r\nEvent:" in text:
        value = text[text.index("\r\nEvent:") + 8 :].split("\r\n", 1)[0]
        return MessageKind.EVENT, value.strip()
    return kind, value[1:] if value[:1] == " " else value


def format_pairs(pairs: Iterable[tuple[str, str]]) -> bytes:
    """Serialize header pairs to one message (terminator included)."""
    lines = []
    for key, value in pairs:
        if not key or ":" in key or "\r" in key or "\n" in key:
            raise LocalProtocolError(f"invalid AMI header name {key!r}")
        if "\r" in value or "\n" in value:
            raise LocalProtocolError(f"header {key!r}: a value must not contain CR or LF")
        lines.append(f"{key}: {value}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8")


def format_action(
    name: str,
    fields: Mapping[str, str | Sequence[str]] | Sequence[tuple[str, str]] = (),
    action_id: str | None = None,
) -> bytes:
    """``Action: name``, then ``ActionID`` if given, then the fields (lists repeat the key)."""
    pairs = [("Action", name)]
    if action_id is not None:
        pairs.append(("ActionID", action_id))
    pairs.extend(_as_pairs(fields))
    return format_pairs(pairs)


class MessageReader:
    """Frames and decodes one direction of an AMI stream."""

    def __init__(
        self,
        *,
        expect_banner: bool = True,
        max_message: int = DEFAULT_MAX_MESSAGE,
        max_line: int = DEFAULT_MAX_LINE,
    ) -> None:
        self._buffer = bytearray()
        self._offset = 0
        self._expect_banner = expect_banner
        self._discarding = False
        self._discard_start = 0
        self.max_message = max_message
        self.max_line = max_line

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def feed(self, data: bytes) -> list[Message | Banner | ProtocolViolation]:
        """Take one TCP read, return every complete item it finished."""
        out: list[Message | Banner | ProtocolViolation] = []
        buffer = self._buffer
        scan_from = max(len(buffer) - 3, 0)
        buffer += data
        if self._expect_banner:
            if len(buffer) < len(BANNER_PREFIX) and BANNER_PREFIX.startswith(buffer):
                return out
            self._expect_banner = False
            if buffer.startswith(BANNER_PREFIX):
                end = buffer.find(b"\r\n")
                if end < 0:
                    if len(buffer) <= self.max_line:
                        self._expect_banner = True
                        return out
                    out.append(self._violation("banner line too long", bytes(buffer[:80])))
                    self._start_discard(out)
                    return out
                out.append(Banner(buffer[:end].decode("utf-8", "replace")))
                del buffer[: end + 2]
                self._offset += end + 2
                scan_from = 0

        if self._discarding:
            end = buffer.find(TERMINATOR, scan_from)
            if end < 0:
                self._trim_discard()
                return out
            out.append(
                ProtocolViolation(
                    f"dropped {self._offset + end - self._discard_start} bytes without a message"
                    f" end (limit {self.max_message}); resynchronised at the next blank line",
                    self._discard_start,
                    "",
                )
            )
            self._discarding = False
            del buffer[: end + 4]
            self._offset += end + 4
            scan_from = 0

        if buffer.find(TERMINATOR, scan_from) < 0:
            if len(buffer) > self.max_message:
                self._start_discard(out)
            return out
        buf = bytes(buffer)
        buffer.clear()
        frames = buf.split(TERMINATOR)
        rest = frames.pop()
        max_message = self.max_message
        max_line = self.max_line
        kinds = _KINDS
        event = MessageKind.EVENT
        append = out.append
        offset = self._offset
        for frame in frames:
            size = len(frame)
            if size > max_line or not frame:
                self._offset = offset
                if not frame:
                    pass
                elif size > max_message:
                    append(self._violation(f"message of {size} bytes exceeds {max_message}", frame))
                else:
                    append(self._decode(frame))
                offset += size + 4
                continue
            # The common case, inlined: a well-formed frame whose first line names its kind.
            try:
                text = frame.decode("utf-8")
            except UnicodeDecodeError:
                text = ""
            if text[:7] == "Event: ":
                # Nine messages in ten: the name is the rest of the first line.
                end = text.find("\r\n", 7)
                append(Message(text, event, text[7:] if end < 0 else text[7:end]))
                offset += size + 4
                continue
            key, _, rest_of_text = text.partition(": ")
            kind = kinds.get(key)
            if kind is None or (
                kind is MessageKind.RESPONSE and ("\r\nEvent:" in text or rest_of_text.startswith("Follows"))
            ):
                self._offset = offset
                append(self._decode(frame))
            else:
                end = rest_of_text.find("\r\n")
                append(Message(text, kind, rest_of_text if end < 0 else rest_of_text[:end]))
            offset += size + 4
        self._offset = offset
        buffer += rest
        if len(rest) > max_message:
            self._start_discard(out)
        return out

    def _start_discard(self, out: list[Message | Banner | ProtocolViolation]) -> None:
        out.append(
            self._violation(
                f"{len(self._buffer)} bytes without a message end (limit {self.max_message});"
                " discarding up to the next blank line",
                bytes(self._buffer[:80]),
            )
        )
        self._discarding = True
        self._discard_start = self._offset
        self._trim_discard()

    def _trim_discard(self) -> None:
        drop = max(len(self._buffer) - 3, 0)
        del self._buffer[:drop]
        self._offset += drop

    def _violation(self, reason: str, frame: bytes) -> ProtocolViolation:
        return ProtocolViolation(reason, self._offset, frame[:80].decode("utf-8", "replace"))

    def _decode(self, frame: bytes) -> Message | ProtocolViolation:
        try:
            text = frame.decode("utf-8")
        except UnicodeDecodeError:
            # Asterisk passes caller names through as the trunk sent them; keep the message.
            text = frame.decode("utf-8", "replace")
        text = text.lstrip("\r\n")
        if len(frame) > self.max_line and max(map(len, text.split("\n"))) > self.max_line:
            return self._violation(f"a line exceeds {self.max_line} bytes", frame)
        try:
            kind, name = classify(text)
        except ValueError:
            return self._violation("not an AMI message: the first line is not Event/Response/Action", frame)
        if kind is MessageKind.RESPONSE and name == "Follows":
            text = _fold_follows(text)
        return Message(text, kind, name)


def _fold_follows(text: str) -> str:
    """Turn a ``Response: Follows`` body into ``Output:`` headers (Rule 6)."""
    head: list[str] = []
    output: list[str] = []
    for line in text.split("\r\n"):
        key, sep, _ = line.partition(": ")
        if not output and sep and key in ("Response", "Privilege", "ActionID", "Message"):
            head.append(line)
        elif line.rstrip() != "--END COMMAND--":
            # Asterisk writes the CLI text (lines end in "\n"), then "--END COMMAND--\r\n": the
            # marker usually shares a CRLF-line with the last output line.
            output.extend(part for part in line.split("\n") if part.rstrip() != "--END COMMAND--")
    head.extend(f"Output: {line.rstrip(chr(13))}" for line in output)
    return "\r\n".join(head)
