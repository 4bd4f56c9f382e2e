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
Rule 3. ``get``, ``get_all`` and ``in`` search the text for the line (``"\r\nKey:"``) instead of
        parsing every header: the model reads 4-5 headers of the messages it reads at all, and a
        search is ~30x cheaper than parsing all ~20 lines. The search is used only on a *plain*
        text (every CR is part of a CRLF and every LF of one, no line starts with a colon, and
        ASCII for a lookup in any case), where it finds exactly what Rule 1 and 2 give; any other
        text, and every other accessor, parses all headers once (``_parse``) and keeps them.
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

    __slots__ = ("_defects", "_fields", "_folded", "_plain", "_repeated", "kind", "name", "text")

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
        self._fields: dict[str, str] | None = None
        # Rule 3: None until a lookup asks whether the text is plain. ``_repeated``, ``_folded``
        # and ``_defects`` are set by ``_parse``; nothing reads them before it ran.
        self._plain: bool | None = None

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

    def _find(self, key: str) -> int:
        """Rule 3: where the line of the first value of ``key`` starts in the text (its key's first
        character); -1 if no header has that key, -2 if the search cannot answer (the text is
        not plain, or no header can have that key)."""
        plain = self._plain
        if plain is None:
            plain = self._plain = _is_plain(self.text)
        needles = _NEEDLES.get(key)
        if needles is None:
            needles = _needles(key)
        if not plain or not needles:
            return -2
        needle, head = needles
        text = self.text
        if text.startswith(head):
            return 0
        found = text.find(needle)
        if found >= 0:
            return found + 2
        # Rule 2: any case. Lowering keeps every position of an ASCII text, and a key found in
        # it was as long as the needle (only ASCII lowers to ASCII, one character for one).
        if not text.isascii():
            return -2
        needle = needle.lower()
        text = text.lower()
        if text.startswith(needle[2:]):
            return 0
        found = text.find(needle)
        return found + 2 if found >= 0 else -1

    def _value(self, line: int, key: str) -> str:
        """The value of the header line starting at ``line`` whose key is as long as ``key``."""
        text = self.text
        start = line + len(key) + 1
        if text[start : start + 1] == " ":
            start += 1
        end = text.find("\r\n", start)
        return text[start:] if end < 0 else text[start:end]

    def __getitem__(self, key: str) -> str:
        value = self.get(key)
        if value is None:  # a value is never None: the key is absent
            raise KeyError(key)
        return value

    def get(self, key: str, default: str | None = None) -> str | None:
        # The hot path (the model reads ~185 headers a call): ``_find`` and ``_value`` inlined
        # for a key found as written; a miss goes through ``_find`` (any case) or the parser.
        plain = self._plain
        if plain is None:
            plain = self._plain = _is_plain(self.text)
        needles = _NEEDLES.get(key)
        if needles is None:
            needles = _needles(key)
        if plain and needles:
            needle, head = needles
            text = self.text
            if text.startswith(head):
                start = len(head)
            else:
                start = text.find(needle)
                start = start + len(needle) if start >= 0 else -1
            if start >= 0:
                if text[start : start + 1] == " ":
                    start += 1
                end = text.find("\r\n", start)
                return text[start:] if end < 0 else text[start:end]
        line = self._find(key)
        if line >= 0:
            return self._value(line, key)
        if line == -1:
            return default
        real = self._key(key)
        if real is None:
            return default
        assert self._fields is not None
        return self._fields[real]

    def get_all(self, key: str) -> list[str]:
        """Every value of ``key`` in the order Asterisk sent them (empty if absent)."""
        line = self._find(key)
        if line == -1:
            return []
        if line >= 0:
            # The spelling found (``key`` itself, or the first one equal to it in any case),
            # then each later line with exactly that spelling.
            text = self.text
            needle = "\r\n" + text[line : line + len(key) + 1]
            values = [self._value(line, key)]
            found = text.find(needle, line)
            while found >= 0:
                values.append(self._value(found + 2, key))
                found = text.find(needle, found + len(needle))
            return values
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
        line = self._find(key)
        if line != -2:
            return line >= 0
        return self._key(key) is not None

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


# Rule 3: ``("\r\nKey:", "Key:")`` for each key looked up so far (``()`` for a key no header can have).
_NEEDLES: dict[str, tuple[str, str] | tuple[()]] = {}
_MAX_NEEDLES = 4096


def _needles(key: str) -> tuple[str, str] | tuple[()]:
    needles: tuple[str, str] | tuple[()] = (
        () if not key or ":" in key or "\r" in key or "\n" in key else (f"\r\n{key}:", f"{key}:")
    )
    if len(_NEEDLES) < _MAX_NEEDLES:
        _NEEDLES[key] = needles
    return needles


def _is_plain(text: str) -> bool:
    """Rule 3: every CR and LF is part of a CRLF, and no line starts with a colon."""
    crlf = text.count("\r\n")
    return (
        text.count("\r") == crlf
        and text.count("\n") == crlf
        and not text.startswith(":")
        and "\r\n:" not in text
    )


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
