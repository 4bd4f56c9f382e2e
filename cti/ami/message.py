"""One AMI message: an event, a response or an action.

Asterisk writes ``Key: Value\\r\\n`` lines and ends a message with an empty line. Keys repeat
(``ChanVariable``, ``Output``, ``Variable``) and their case is not stable across messages
(the ``AGI`` action takes ``CommandID``, its events say ``CommandId``), so a message keeps its
ordered pairs and offers a case-insensitive accessor.

Headers are parsed on first access, not when the message is framed. A busy PBX sends ~10k
messages a second and most of them (``VarSet``, ``Newexten``, ``DeviceStateChange``) are never
read past their name; parsing every header of every message would cost more than framing,
decoding and routing together (see ``bench/ami_ingest.py``). The kind, the name and the
ActionID, which routing needs, are found when the message is built.
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

    def __init__(self, text: str, kind: MessageKind, name: str) -> None:
        self.text = text
        self.kind = kind
        self.name = name
        self._fields: dict[str, str] | None = None
        self._repeated: list[tuple[str, str]] | None = None
        self._folded: dict[str, str] | None = None
        self._defects: tuple[str, ...] = ()

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
        if len(fields) != len(pairs):
            # Repeated keys (ChanVariable on every channel event): the first value answers
            # ``get``, in the order keys first appear; ``get_all`` reads the pairs kept here.
            first = dict(reversed(pairs))
            fields = {key: first[key] for key in fields}
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

    def __getitem__(self, key: str) -> str:
        real = self._key(key)
        if real is None:
            raise KeyError(key)
        assert self._fields is not None
        return self._fields[real]

    def get(self, key: str, default: str | None = None) -> str | None:
        real = self._key(key)
        if real is None:
            return default
        assert self._fields is not None
        return self._fields[real]

    def get_all(self, key: str) -> list[str]:
        """Every value of ``key`` in the order Asterisk sent them (empty if absent)."""
        real = self._key(key)
        if real is None:
            return []
        assert self._fields is not None
        if self._repeated is not None:
            return [value for key, value in self._repeated if key == real]
        return [self._fields[real]]

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self._key(key) is not None

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
