"""Header lookups by search (Rule 3 of ``cti.ami.message``) against a reference that parses every line.

The reference is the definition of Rules 1 and 2 written out on the ``_PAIR`` pattern's pairs:
the first value of the exact key, else of the first key equal to it in any case. Every message of
every capture is checked with each of its keys in several cases and with absent and impossible
keys; then seeded random texts made of the characters that matter (CR, LF, colons, spaces,
letters whose case folds, non-ASCII) check the texts the search must leave to the parser.
"""

from __future__ import annotations

import functools
import random

import pytest

from callbridge.captures import available_captures, load_capture
from cti.ami import Message, MessageKind, MessageReader
from cti.ami.message import _PAIR


@functools.lru_cache(maxsize=64)
def pairs_of(text: str) -> list[tuple[str, str]]:
    return _PAIR.findall(text)


def reference_values(text: str, key: str) -> list[str]:
    pairs = pairs_of(text)
    spelling = next((k for k, _ in pairs if k == key), None)
    if spelling is None:
        spelling = next((k for k, _ in pairs if k.lower() == key.lower()), None)
    return [v for k, v in pairs if k == spelling] if spelling is not None else []


def check(message: Message, key: str) -> None:
    expected = reference_values(message.text, key)
    context = f"{key!r} in {message.text!r}"
    assert message.get(key) == (expected[0] if expected else None), context
    assert message.get(key, "absent") == (expected[0] if expected else "absent"), context
    assert message.get_all(key) == expected, context
    assert (key in message) == bool(expected), context
    if expected:
        assert message[key] == expected[0], context
    else:
        with pytest.raises(KeyError):
            message[key]


@functools.cache
def capture_messages() -> tuple[Message, ...]:
    out: list[Message] = []
    for name in available_captures():
        reader = MessageReader()
        found: list[Message] = []
        for chunk in load_capture(name).incoming():
            if chunk.data is not None:
                found += [item for item in reader.feed(chunk.data) if isinstance(item, Message)]
        # load_50 is 7,471 messages of the same few kinds: every 25th is enough.
        out += found[::25] if name == "load_50" else found
    return tuple(out)


def test_lookups_on_every_captured_message() -> None:
    messages = capture_messages()
    assert len(messages) > 2000
    absent = ("Nope", "", "A:B", "Uniqueid\r\n", "Event\n", "chanvariable", "CHANNEL", "\u212aey")
    for message in messages:
        keys = {k for k, _ in _PAIR.findall(message.text)}
        for key in (*keys, *(k.lower() for k in keys), *(k.upper() for k in keys), *absent):
            check(message, key)
        # Each accessor on a fresh message too: the first lookup decides whether the text is plain.
        for key in ("Uniqueid", "ChanVariable", "event"):
            check(Message(message.text, message.kind, message.name), key)


def test_lookup_spellings_and_edges() -> None:
    text = (
        "Event: Test\r\nCommandId: 1\r\nCOMMANDID: 2\r\ncommandid: 3\r\nCommandId: 4\r\n"
        "NoSpace:x\r\nTwoSpaces:  y\r\nEmpty:\r\nUrl: http://a:b\r\nnot a header\r\nLast: z"
    )
    message = Message(text, MessageKind.EVENT, "Test")
    assert message.get("CommandID") == "1"
    assert message.get_all("COMMANDID") == ["2"]
    assert message.get_all("commandID") == ["1", "4"]
    assert message["NoSpace"] == "x"
    assert message["TwoSpaces"] == " y"
    assert message["Empty"] == ""
    assert message["Url"] == "http://a:b"
    assert message["last"] == "z"
    assert message.get("Event") == "Test"
    twice = Message("Event: A\r\nEvent: B\r\nevent: C", MessageKind.EVENT, "A")
    assert (twice["Event"], twice.get_all("Event"), twice.get_all("EVENT")) == ("A", ["A", "B"], ["A", "B"])
    empty = Message("Event: A\r\nV:\r\nV:\r\nV:\r\nv: 3\r\nV:", MessageKind.EVENT, "A")
    assert empty.get_all("V") == ["", "", "", ""]
    assert empty.get_all("v") == ["3"]
    for key in ("CommandID", "commandid", "Event", "EVENT", "Last", "not a header", "http", "Url: http"):
        check(message, key)


def test_texts_the_search_leaves_to_the_parser() -> None:
    # A bare LF or CR ends a line for the pattern; a line starting with a colon holds the header
    # after it; a non-ASCII text may change length when lowered.
    cases = [
        "Event: A\nUniqueid: 1\r\nUniqueid: 2",
        "Event: A\rUniqueid: 1\r\nUniqueid: 2",
        "Event: A\r\n:Uniqueid: 1\r\nUniqueid: 2",
        ":Event: A\r\nUniqueid: 2",
        "Event: \u0130\r\nuniqueid: 1\r\nUNIQUEID: 2",
        "Event: A\r\nCaller: J\u00e9r\u00f4me\r\nuniqueid: 3",
        "Event: A\r\nDestUniqueid: 1\r\nUniqueid: 2",
        "Event: A\r\nData: x Uniqueid: 3\r\nUniqueid: 4",
        "Event: A\r\nFoo:Uniqueid: 5\r\nUniqueid: 6",
        "Event: A\r\n::Uniqueid: 7\r\nUniqueid: 8",
        "Event: A\r\nUniqueid: 9\nX: 1\r\nUniqueid: 10",
        "Event: A\r\nUniqueid: 11\rX: 1",
        "Uniqueid: 12\r\nuniqueid: 13",
    ]
    for text in cases:
        for key in ("Uniqueid", "uniqueid", "Event", "event", "Caller", "CALLER", "\u212aey"):
            check(Message(text, MessageKind.EVENT, "A"), key)


@pytest.mark.parametrize("seed", range(20))
def test_random_texts(seed: int) -> None:
    rng = random.Random(seed)
    alphabet = ["\r\n"] * 8 + ["\r", "\n", ":", ": ", " ", "a", "A", "b", "K", "k"]
    alphabet += ["\u212a", "\u00e9", "\u0130"]
    keys = ["a", "A", "ab", "Ab", "AB", "b", "k", "K", "\u212a", "\u00e9", "\u00c9", "ak", "a b", ""]
    for _ in range(300):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
        message = Message(text, MessageKind.EVENT, "X")
        for key in rng.sample(keys, 5):
            check(message, key)
