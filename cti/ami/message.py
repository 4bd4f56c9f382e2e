"""One AMI message: an event, a response or an action.

Asterisk writes ``Key: Value\\r\\n`` lines and ends a message with an empty line. Keys repeat
(``ChanVariable``, ``Output``, ``Variable``) and their case is not stable across messages
(the ``AGI`` action takes ``CommandID``, its events say ``CommandId``), so a message keeps its
ordered pairs and offers a case-insensitive accessor.

Headers are not parsed when the message is framed. A busy PBX sends ~10k messages a second and
most of them (``VarSet``, ``Newexten``, ``DeviceStateChange``) are never read past their name;
parsing every header of every message would cost more than framing, decoding and routing
together (see ``bench/ami_ingest.py``). The kind and the name, which routing needs, are found
when the message is built.

Rules of header access:

Rule 1. A header is a line ``Key:Value`` or ``Key: Value`` (one space dropped); lines end at CR or
        LF; a line without a colon, or starting with one, is no header (a line ``:a:b`` holds the
        header ``a``, as the pattern ``_PAIR`` reads it). The first value of a key answers ``get``.
Rule 2. A lookup tries the exact key first, then any case (the first key, in the order the keys
        appear, equal to it ignoring case).
Rule 3. ``get``, ``get_all`` and ``in`` search the text for ``Key:`` instead of parsing every
        header: the model reads 4-5 headers of the messages it reads at all, and a search costs
        ~1/40 of parsing all ~20 lines. An occurrence is the start of a header (as ``_PAIR``
        finds them) when it starts the text or follows a CR or an LF; one that follows any
        other character is inside another header (``DestUniqueid:``, a value). The value ends
        at the next CRLF. Anything the search cannot settle that way, rare by far (an
        occurrence after a colon, which may end a run of colons that starts its line; a CR or
        an LF inside the value; a lookup in any case in a non-ASCII text), is answered by
        parsing all headers once (``_parse``), as every other accessor does.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from enum import Enum

_PAIR = re.compile(r"([^:\r\n]+):[ ]?([^\r\n]*)")


class MessageKind(Enum):
    EVENT = "event"
    RESPONSE = "response"
    ACTION = "action"


class Message:
    """An AMI message, immutable once built.

    ``message["Channel"]`` returns the first value of a key (``KeyError`` if absent),
    ``message.get(key)`` returns it or a default, ``message.get_all(key)`` every value in order.
    Lookups try the exact key first and then any case.
    """

    __slots__ = ("_defects", "_fields", "_folded", "_repeated", "kind", "name", "text")

    text: str
    kind: MessageKind
    name: str
    _repeated: list[tuple[str, str]] | None
    _folded: dict[str, str] | None
    _defects: tuple[str, ...]

    def __init__(self, text: str, kind: MessageKind, name: str) -> None:
        self.text = text
        self.kind = kind
        self.name = name
        # ``_repeated``, ``_folded`` and ``_defects`` are set by ``_parse``; nothing reads them
        # before it ran.
        self._fields: dict[str, str] | None = None

    @classmethod
    def from_pairs(cls, pairs: Sequence[tuple[str, str]] | Mapping[str, str | Sequence[str]]) -> Message:
        """Build a message from ordered pairs (or a mapping whose list values repeat the key)."""
        from cti.ami.codec import classify, format_pairs

        items = _as_pairs(pairs)
        text = format_pairs(items).decode("utf-8")[:-4]
        kind, name = classify(text)
        return cls(text, kind, name)

    # --- header access -------------------------------------------------------------------------

    def _parse(self) -> dict[str, str]:
        pairs = _PAIR.findall(self.text)
        fields = dict(pairs)
        self._repeated = None
        self._folded = None
        self._defects = ()
        if len(fields) != len(pairs):
            # Repeated keys (ChanVariable on every channel event): the first value answers
            # ``get`` (an update keeps the keys' order: first appearance), ``get_all`` reads
            # the pairs kept here.
            fields.update(reversed(pairs))
            self._repeated = pairs
        if self.text.count("\n") + 1 != len(pairs):
            self._defects = tuple(
                f"line {number}: no 'Key: Value' in {line[:60]!r}"
                for number, line in enumerate(self.text.split("\r\n"), 1)
                if not _PAIR.match(line)
            )
        self._fields = fields
        return fields

    def _key(self, key: str) -> str | None:
        fields = self._fields if self._fields is not None else self._parse()
        if key in fields:
            return key
        folded = self._folded
        if folded is None:
            folded = self._folded = {k.lower(): k for k in reversed(fields)}
        return folded.get(key.lower())

    def _find(self, key: str) -> tuple[str, int]:
        """Rule 3: ``(spelling, start)``, the key as the text spells it (``key`` itself, else the
        first key equal to it in any case) and where its first header starts; ``("", -1)`` if
        no header has that key; ``("", -2)`` if the search cannot settle it."""
        head = _HEADS.get(key)
        if head is None:
            head = _head(key)
        if not head:
            return "", -2
        found = _header_start(self.text, head, 0)
        if found != -1:
            return key, found
        # Rule 2: any case. Lowering keeps every position of an ASCII text, and a key found in
        # it is as long as ``key`` (only ASCII lowers to ASCII, one character for one).
        if not self.text.isascii():
            return "", -2
        found = _header_start(self.text.lower(), head.lower(), 0)
        if found < 0:
            return "", found
        return self.text[found : found + len(key)], found

    def _value(self, start: int, key: str) -> str | None:
        """The value of the header of ``key`` (as spelt in the text) at ``start``; None when a CR
        or an LF in it makes the search unsure (Rule 3)."""
        text = self.text
        start += len(key) + 1
        if text[start : start + 1] == " ":
            start += 1
        end = text.find("\r\n", start)
        value = text[start:] if end < 0 else text[start:end]
        if "\r" in value or "\n" in value:
            return None
        return value

    def __getitem__(self, key: str) -> str:
        value = self.get(key)
        if value is None:  # a value is never None: the key is absent
            raise KeyError(key)
        return value

    def get(self, key: str, default: str | None = None) -> str | None:
        # The hot path (the model reads ~185 headers a call): Rule 3 for the key as written,
        # inlined; any case, and what the search cannot settle, below.
        head = _HEADS.get(key)
        if head is None:
            head = _head(key)
        if head:
            text = self.text
            found = text.find(head)
            while found > 0:
                before = text[found - 1]
                if before in "\r\n":  # one character: CR or LF
                    break
                if before == ":":
                    found = -2
                    break
                found = text.find(head, found + 1)
            if found >= 0:
                start = found + len(head)
                if text[start : start + 1] == " ":
                    start += 1
                end = text.find("\r\n", start)
                value = text[start:] if end < 0 else text[start:end]
                if "\r" not in value and "\n" not in value:
                    return value
        spelling, found = self._find(key)
        if found >= 0:
            checked = self._value(found, spelling)
            if checked is not None:
                return checked
        elif found == -1:
            return default
        real = self._key(key)
        if real is None:
            return default
        assert self._fields is not None
        return self._fields[real]

    def get_all(self, key: str) -> list[str]:
        """Every value of ``key`` in the order Asterisk sent them (empty if absent)."""
        # The hot path (ChanVariable on every channel event): Rule 3 for the key as written,
        # inlined; any case, and what the search cannot settle, below.
        head = _HEADS.get(key)
        if head is None:
            head = _head(key)
        if head:
            text = self.text
            found = text.find(head)
            values: list[str] | None = []
            while found >= 0 and values is not None:
                if found:
                    before = text[found - 1]
                    if before not in "\r\n":  # one character: not a header's start
                        if before == ":":
                            values = None
                        found = text.find(head, found + 1)
                        continue
                start = found + len(head)
                if text[start : start + 1] == " ":
                    start += 1
                end = text.find("\r\n", start)
                value = text[start:] if end < 0 else text[start:end]
                if "\r" in value or "\n" in value:
                    values = None
                else:
                    values.append(value)
                    found = text.find(head, end) if end >= 0 else -1
            if values:
                return values
        spelling, found = self._find(key)
        if found == -1:
            return []
        if found >= 0:
            # Each header with exactly the spelling found, in order.
            head = spelling + ":"
            spelt: list[str] = []
            while found >= 0:
                checked = self._value(found, spelling)
                if checked is None:
                    break
                spelt.append(checked)
                found = _header_start(self.text, head, found + 1)
            if found == -1:
                return spelt
        real = self._key(key)
        if real is None:
            return []
        assert self._fields is not None
        if self._repeated is not None:
            return [value for key, value in self._repeated if key == real]
        return [self._fields[real]]

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, str):
            return False
        return self.get(key) is not None

    @property
    def pairs(self) -> list[tuple[str, str]]:
        """All headers, ordered, repeated keys repeated."""
        return _PAIR.findall(self.text)

    def keys(self) -> list[str]:
        fields = self._fields if self._fields is not None else self._parse()
        return list(fields)

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    @property
    def defects(self) -> tuple[str, ...]:
        """Lines that were not ``Key: Value`` (they are skipped by every accessor)."""
        if self._fields is None:
            self._parse()
        return self._defects

    @property
    def action_id(self) -> str | None:
        return self.get("ActionID")

    def to_dict(self) -> dict[str, str | list[str]]:
        """Keys in order; a repeated key gives a list (the fixtures' ``.jsonl`` form)."""
        fields = self._fields if self._fields is not None else self._parse()
        out: dict[str, str | list[str]] = dict(fields)
        if self._repeated is not None:
            values: dict[str, list[str]] = {}
            for key, value in self._repeated:
                values.setdefault(key, []).append(value)
            for key, found in values.items():
                if len(found) > 1:
                    out[key] = found
        return out

    def channel_variables(self, prefix: str = "ChanVariable") -> dict[str, str]:
        """``ChanVariable: NAME=value`` headers as a dict (``DestChanVariable`` with that prefix).

        ``OriginateResponse`` writes them as ``ChanVariable(<channel>): NAME=value``.
        """
        out: dict[str, str] = {}
        fields = self._fields if self._fields is not None else self._parse()
        for key, value in self._repeated if self._repeated is not None else fields.items():
            if key == prefix or (key.startswith(prefix + "(") and key.endswith(")")):
                name, _, val = value.partition("=")
                out[name] = val
        return out

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Message):
            return NotImplemented
        return self.text == other.text

    def __hash__(self) -> int:
        return hash(self.text)

    def __repr__(self) -> str:
        return f"<Message {self.kind.value} {self.name!r} {len(self.text)} chars>"


# Rule 3: ``"Key:"`` for each key looked up so far (``""`` for a key no header can have).
_HEADS: dict[str, str] = {}
_MAX_HEADS = 4096


def _head(key: str) -> str:
    head = "" if not key or ":" in key or "\r" in key or "\n" in key else f"{key}:"
    if len(_HEADS) < _MAX_HEADS:
        _HEADS[key] = head
    return head


def _header_start(text: str, head: str, start: int) -> int:
    """Rule 3: the first header of ``head`` (``"Key:"``) at or after ``start``, -1 if none, -2 if
    an occurrence follows a colon (the search cannot tell whether a header starts there)."""
    found = text.find(head, start)
    while found > 0:
        before = text[found - 1]
        if before in "\r\n":  # one character: CR or LF
            return found
        if before == ":":
            return -2
        found = text.find(head, found + 1)
    return found


def _as_pairs(
    pairs: Sequence[tuple[str, str]] | Mapping[str, str | Sequence[str]],
) -> list[tuple[str, str]]:
    if isinstance(pairs, Mapping):
        items: list[tuple[str, str]] = []
        for key, value in pairs.items():
            if isinstance(value, str):
                items.append((key, value))
            else:
                items.extend((key, v) for v in value)
        return items
    return list(pairs)
