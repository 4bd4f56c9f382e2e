"""The sans-IO AMI reader against real Asterisk 22 captures, and against what a hostile peer sends.

Every capture in ``../shared/fixtures/asterisk/ami`` is read in its real TCP chunking, in seeded
random re-chunkings and one byte at a time; ``Message.to_dict()`` must equal the ``.jsonl``
reference written by the capture tool. The rest builds the cases the captures do not hold
(non-ASCII caller names cut between reads, old ``Response: Follows`` output, garbage, floods).
"""

from __future__ import annotations

import functools
import random
from typing import Any

import pytest

from callbridge.captures import CaptureNotFound, available_captures, load_capture, load_messages
from cti.ami import (
    Banner,
    LocalProtocolError,
    Message,
    MessageKind,
    MessageReader,
    ProtocolViolation,
    format_action,
    format_pairs,
)

BANNER = b"Asterisk Call Manager/11.0.0\r\n"
CAPTURES = available_captures()
Item = Message | Banner | ProtocolViolation


@functools.cache
def incoming_chunks(name: str) -> tuple[bytes, ...]:
    return tuple(c.data for c in load_capture(name).incoming() if c.data is not None)


@functools.cache
def reference(name: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(incoming, outgoing) records of ``<name>.jsonl``: ``{"banner": ...}`` or ``{"msg": ...}``."""
    try:
        records = load_messages(name)
    except CaptureNotFound:
        pytest.skip(f"no {name}.jsonl reference beside the capture")
    incoming = [
        {"banner": r["banner"]} if "banner" in r else {"msg": r["msg"]} for r in records if r["dir"] == "in"
    ]
    outgoing = [{"msg": r["msg"]} for r in records if r["dir"] == "out"]
    return incoming, outgoing


def as_records(items: list[Item]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for item in items:
        if isinstance(item, Banner):
            out.append({"banner": item.text})
        elif isinstance(item, Message):
            out.append({"msg": item.to_dict()})
        else:
            out.append({"violation": item})
    return out


def feed_all(reader: MessageReader, pieces: list[bytes] | tuple[bytes, ...]) -> list[Item]:
    items: list[Item] = []
    for piece in pieces:
        items += reader.feed(piece)
    return items


def rechunk(data: bytes, seed: int, max_size: int) -> list[bytes]:
    rng = random.Random(seed)
    pieces = []
    pos = 0
    while pos < len(data):
        size = rng.randint(1, max_size)
        pieces.append(data[pos : pos + size])
        pos += size
    return pieces


def event(*pairs: tuple[str, str]) -> bytes:
    return format_pairs(pairs)


# --- the captures ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", CAPTURES)
def test_capture_in_its_tcp_chunking_equals_reference(name: str) -> None:
    expected, _ = reference(name)
    reader = MessageReader()
    got = as_records(feed_all(reader, incoming_chunks(name)))
    assert got == expected
    assert got[0] == {"banner": "Asterisk Call Manager/11.0.0"}
    assert reader.buffered == 0


@pytest.mark.parametrize(("seed", "max_size"), [(1, 64), (2, 1500), (3, 20000)])
@pytest.mark.parametrize("name", CAPTURES)
def test_capture_rechunked_equals_reference(name: str, seed: int, max_size: int) -> None:
    expected, _ = reference(name)
    data = b"".join(incoming_chunks(name))
    reader = MessageReader()
    assert as_records(feed_all(reader, rechunk(data, seed, max_size))) == expected
    assert reader.buffered == 0


@pytest.mark.parametrize("name", [n for n in CAPTURES if n != "load_50"])
def test_capture_one_byte_at_a_time_equals_reference(name: str) -> None:
    expected, _ = reference(name)
    data = b"".join(incoming_chunks(name))
    reader = MessageReader()
    assert as_records(feed_all(reader, [data[i : i + 1] for i in range(len(data))])) == expected


def test_load_50_with_a_window_fed_one_byte_at_a_time() -> None:
    """load_50 is 3.6 MB: 150 kB from the middle (starting mid-message) go byte by byte."""
    if "load_50" not in CAPTURES:
        pytest.skip("load_50 capture not available")
    expected, _ = reference("load_50")
    data = b"".join(incoming_chunks("load_50"))
    start = len(data) // 2 + 17
    end = start + 150_000
    assert data[start - 4 : start] != b"\r\n\r\n"
    pieces = [data[:start], *(data[i : i + 1] for i in range(start, end)), data[end:]]
    assert as_records(feed_all(MessageReader(), pieces)) == expected


@pytest.mark.parametrize("name", CAPTURES)
def test_sent_actions_with_repeated_keys_equal_reference(name: str) -> None:
    """The ``.sent.ami`` side has no banner; ``Variable`` repeats on Originate."""
    _, expected = reference(name)
    reader = MessageReader(expect_banner=False)
    items = feed_all(reader, [load_capture(name).stream_out()])
    assert as_records(items) == expected
    assert all(isinstance(m, Message) and m.kind is MessageKind.ACTION for m in items)


@pytest.mark.parametrize("name", CAPTURES)
def test_format_action_rebuilds_the_sent_bytes(name: str) -> None:
    """Our serializer writes exactly what the capture client wrote, repeated keys included."""
    sent = load_capture(name).stream_out()
    actions = MessageReader(expect_banner=False).feed(sent)
    rebuilt = b""
    for action in actions:
        assert isinstance(action, Message)
        fields = [(k, v) for k, v in action.pairs if k not in ("Action", "ActionID")]
        rebuilt += format_action(action.name, fields, action.get("ActionID"))
    assert rebuilt == sent


def test_repeated_keys_are_lists_in_order() -> None:
    if "originate_answered" not in CAPTURES:
        pytest.skip("originate_answered capture not available")
    sent = MessageReader(expect_banner=False).feed(load_capture("originate_answered").stream_out())
    originate = sent[1]
    assert isinstance(originate, Message)
    assert originate.name == "Originate"
    assert originate.get_all("Variable") == [
        "__CUSTOMER_ID=C-100042",
        "__CAMPAIGN_ID=renewals-q3",
        "__LAB_SCENARIO=originate_answered",
        "CUSTOMER_RING=3",
        "CUSTOMER_HOLD=8",
    ]
    assert originate["Variable"] == "__CUSTOMER_ID=C-100042"

    received = [
        m for m in feed_all(MessageReader(), incoming_chunks("originate_answered")) if isinstance(m, Message)
    ]
    response = next(m for m in received if m.name == "OriginateResponse")
    # Both Event and Response headers: an event, by Asterisk's own rule.
    assert response.kind is MessageKind.EVENT
    assert response["Response"] == "Success"
    key = "ChanVariable(Local/+14155550142@customers-00000000;1)"
    assert response.to_dict()[key] == [
        "CUSTOMER_ID=C-100042",
        "CAMPAIGN_ID=renewals-q3",
        "LAB_SCENARIO=originate_answered",
    ]
    assert response.channel_variables() == {
        "CUSTOMER_ID": "C-100042",
        "CAMPAIGN_ID": "renewals-q3",
        "LAB_SCENARIO": "originate_answered",
    }
    newexten = next(m for m in received if m.name == "Newexten" and m.get("Context") == "dialer-connect")
    assert newexten.get_all("chanvariable") == [
        "CUSTOMER_ID=C-100042",
        "CAMPAIGN_ID=renewals-q3",
        "LAB_SCENARIO=originate_answered",
    ]
    bridge = next(m for m in received if m.name == "LocalBridge")
    assert bridge.channel_variables("LocalOneChanVariable")["CUSTOMER_ID"] == "C-100042"


def test_command_output_lines_are_a_list() -> None:
    if "actions" not in CAPTURES:
        pytest.skip("actions capture not available")
    received = feed_all(MessageReader(), incoming_chunks("actions"))
    by_id = {
        m.get("ActionID"): m for m in received if isinstance(m, Message) and m.kind is MessageKind.RESPONSE
    }
    queue_show = by_id["actions-0016"]
    output = queue_show.get_all("Output")
    assert output[0].startswith("support has 0 calls (max unlimited) in 'rrmemory' strategy")
    assert output[1] == "   Members: "  # indentation and trailing blanks are kept
    assert len(output) == len(queue_show.to_dict()["Output"]) > 3
    no_such = by_id["actions-0017"]
    assert no_such.name == "Error"
    assert no_such.get_all("Output")[0].startswith("No such command")


def test_values_empty_and_case_insensitive_lookup() -> None:
    reader = MessageReader(expect_banner=False)
    [msg] = reader.feed(
        b"Event: Newchannel\r\nAccountCode: \r\nCallerIDName: <unknown>\r\nUniqueid: 1.0\r\n\r\n"
    )
    assert isinstance(msg, Message)
    assert msg["AccountCode"] == ""
    assert msg["accountcode"] == ""
    assert msg.get("CALLERIDNAME") == "<unknown>"
    assert msg.get("Missing") is None
    assert "uniqueid" in msg
    with pytest.raises(KeyError):
        msg["Missing"]
    assert msg.defects == ()


# --- splits across reads ---------------------------------------------------------------------------

NAMES = ["Zoë Müller", "张伟", "Ölçü 🎧 Ünal"]


@pytest.mark.parametrize("caller_name", NAMES)
def test_utf8_character_cut_between_reads(caller_name: str) -> None:
    frame = event(
        ("Event", "NewCallerid"),
        ("Channel", "IAX2/127.0.0.1:4569-1234"),
        ("CallerIDNum", "+14155550123"),
        ("CallerIDName", caller_name),
        ("Uniqueid", "1795580642.7"),
    )
    data = BANNER + frame
    multibyte = [i for i, b in enumerate(data) if b & 0xC0 == 0x80]  # continuation bytes
    assert multibyte, "the name must contain multi-byte characters"
    for cut in range(1, len(data)):
        items = feed_all(MessageReader(), [data[:cut], data[cut:]])
        assert len(items) == 2, cut
        msg = items[1]
        assert isinstance(msg, Message)
        assert msg["CallerIDName"] == caller_name, cut
        assert msg.defects == ()
    # and three-way: each cut inside a character, followed by the next byte on its own
    for cut in multibyte:
        [_, msg] = feed_all(MessageReader(), [data[:cut], data[cut : cut + 1], data[cut + 1 :]])
        assert isinstance(msg, Message)
        assert msg["CallerIDName"] == caller_name


def test_invalid_utf8_keeps_the_message_with_replacement_characters() -> None:
    """A trunk may send Latin-1 (``Zo\\xeb``): the message is kept, the bad byte becomes U+FFFD."""
    data = b"Event: NewCallerid\r\nCallerIDName: Zo\xeb M\xfcller\r\nUniqueid: 1.1\r\n\r\n"
    [msg] = MessageReader(expect_banner=False).feed(data)
    assert isinstance(msg, Message)
    assert msg["CallerIDName"] == "Zo\ufffd M\ufffdller"
    assert msg["Uniqueid"] == "1.1"


def test_banner_split_at_every_position() -> None:
    frame = event(("Event", "FullyBooted"), ("Privilege", "system,all"), ("Status", "Fully Booted"))
    data = BANNER + frame
    for cut in range(len(data) + 1):
        items = feed_all(MessageReader(), [data[:cut], data[cut:]])
        assert [type(i) for i in items] == [Banner, Message], cut
        banner, msg = items
        assert isinstance(banner, Banner)
        assert banner.text == "Asterisk Call Manager/11.0.0"
        assert banner.version == "11.0.0"
        assert isinstance(msg, Message)
        assert msg.to_dict() == {"Event": "FullyBooted", "Privilege": "system,all", "Status": "Fully Booted"}
    items = feed_all(MessageReader(), [data[i : i + 1] for i in range(len(data))])
    assert [type(i) for i in items] == [Banner, Message]


def test_stream_without_banner_is_read_when_one_was_expected() -> None:
    frame = event(("Event", "FullyBooted"), ("Status", "Fully Booted"))
    items = feed_all(MessageReader(), [frame[:3], frame[3:]])
    assert [type(i) for i in items] == [Message]


def test_messages_in_one_read_come_out_in_order() -> None:
    frames = [event(("Event", "VarSet"), ("Variable", f"V{i}"), ("Value", str(i))) for i in range(50)]
    items = MessageReader().feed(BANNER + b"".join(frames))
    assert [m.get("Value") for m in items if isinstance(m, Message)] == [str(i) for i in range(50)]


# --- Response: Follows (Asterisk before 14) -------------------------------------------------------

FOLLOWS = (
    b"Response: Follows\r\n"
    b"Privilege: Command\r\n"
    b"ActionID: old-1\r\n"
    b"Name/username              Host            Dyn Port  Status\n"
    b"1001/1001                  10.0.0.5         D  5060  OK (12 ms)\n"
    b"1 sip peers [Monitored: 1 online]\n"
    b"--END COMMAND--\r\n\r\n"
)


def test_response_follows_output_becomes_output_values() -> None:
    after = event(("Event", "PeerStatus"), ("Peer", "SIP/1001"), ("PeerStatus", "Reachable"))
    data = BANNER + FOLLOWS + after
    for pieces in ([data], [data[i : i + 1] for i in range(len(data))], rechunk(data, 7, 11)):
        items = feed_all(MessageReader(), pieces)
        assert [type(i) for i in items] == [Banner, Message, Message]
        follows, peer = items[1], items[2]
        assert isinstance(follows, Message)
        assert follows.kind is MessageKind.RESPONSE
        assert follows.name == "Follows"
        assert follows["ActionID"] == "old-1"
        assert follows.get_all("Output") == [
            "Name/username              Host            Dyn Port  Status",
            "1001/1001                  10.0.0.5         D  5060  OK (12 ms)",
            "1 sip peers [Monitored: 1 online]",
        ]
        assert "--END COMMAND--" not in follows.text
        assert isinstance(peer, Message)
        assert peer.to_dict() == {"Event": "PeerStatus", "Peer": "SIP/1001", "PeerStatus": "Reachable"}


def test_response_follows_with_end_marker_glued_to_the_last_line() -> None:
    data = b"Response: Follows\r\nActionID: v\r\nAsterisk 1.8.32.3 built by root\n--END COMMAND--\r\n\r\n"
    [msg] = MessageReader(expect_banner=False).feed(data)
    assert isinstance(msg, Message)
    assert msg.to_dict() == {
        "Response": "Follows",
        "ActionID": "v",
        "Output": "Asterisk 1.8.32.3 built by root",
    }


# --- bad input and caps ----------------------------------------------------------------------------

VALID = event(("Event", "FullyBooted"), ("Privilege", "system,all"), ("Status", "Fully Booted"))


def test_garbage_frame_is_reported_with_its_offset_and_skipped() -> None:
    first = event(("Event", "SuccessfulAuth"), ("AccountID", "lab"))
    garbage = b"\x00\xff\xfeGET / HTTP/1.1\r\nHost: x\r\n\r\n"
    data = BANNER + first + garbage + VALID + VALID
    for pieces in ([data], [data[i : i + 1] for i in range(len(data))]):
        items = feed_all(MessageReader(), pieces)
        assert [type(i) for i in items] == [Banner, Message, ProtocolViolation, Message, Message]
        violation = items[2]
        assert isinstance(violation, ProtocolViolation)
        assert violation.offset == len(BANNER) + len(first)
        assert "first line is not Event/Response/Action" in violation.reason
        assert "GET / HTTP/1.1" in violation.excerpt
        assert all(isinstance(m, Message) and m.name == "FullyBooted" for m in items[3:])


def test_junk_line_before_the_event_line_is_a_defect_of_that_event() -> None:
    [msg] = MessageReader(expect_banner=False).feed(b"\x01junk\r\nEvent: Hangup\r\nCause: 16\r\n\r\n")
    assert isinstance(msg, Message)
    assert msg.kind is MessageKind.EVENT
    assert msg.name == "Hangup"
    assert msg["Cause"] == "16"
    assert msg.defects == ("line 1: no 'Key: Value' in '\\x01junk'",)


def test_a_line_with_no_colon_is_a_defect_not_a_header() -> None:
    [msg] = MessageReader(expect_banner=False).feed(
        b"Event: Hangup\r\nthis is not a header\r\nCause: 16\r\n\r\n"
    )
    assert isinstance(msg, Message)
    assert msg.to_dict() == {"Event": "Hangup", "Cause": "16"}
    assert msg.defects == ("line 2: no 'Key: Value' in 'this is not a header'",)


def test_one_megabyte_line_without_terminator_keeps_memory_bounded() -> None:
    reader = MessageReader()
    items = reader.feed(BANNER + VALID)
    assert [type(i) for i in items] == [Banner, Message]
    flood_offset = len(BANNER) + len(VALID)
    piece = b"X" * 65536
    high_water = 0
    violations: list[ProtocolViolation] = []
    for _ in range(16):  # 1 MiB, no CR/LF at all
        for item in reader.feed(piece):
            assert isinstance(item, ProtocolViolation)
            violations.append(item)
        high_water = max(high_water, reader.buffered)
    assert high_water <= reader.max_message
    assert reader.buffered <= 3  # only a possible partial terminator is kept while discarding
    assert len(violations) == 1
    assert violations[0].offset == flood_offset
    assert "discarding up to the next blank line" in violations[0].reason

    tail = reader.feed(b"\r\n\r\n" + VALID)
    assert [type(i) for i in tail] == [ProtocolViolation, Message]
    resync = tail[0]
    assert isinstance(resync, ProtocolViolation)
    assert resync.offset == flood_offset
    assert resync.reason.startswith(f"dropped {16 * 65536} bytes")
    assert isinstance(tail[1], Message)
    assert tail[1].name == "FullyBooted"
    assert reader.buffered == 0


def test_flood_terminator_split_across_reads_still_resynchronises() -> None:
    reader = MessageReader(expect_banner=False, max_message=1024)
    reader.feed(b"Y" * 5000)
    out = reader.feed(b"\r\n") + reader.feed(b"\r") + reader.feed(b"\n" + VALID)
    assert [type(i) for i in out] == [ProtocolViolation, Message]


def test_frame_over_max_message_in_one_read_is_dropped() -> None:
    big = format_pairs([("Event", "VarSet"), *[(f"K{i}", "v" * 100) for i in range(3000)]])
    assert len(big) > 256 * 1024
    reader = MessageReader()
    items = reader.feed(BANNER + big + VALID)
    assert [type(i) for i in items] == [Banner, ProtocolViolation, Message]
    violation = items[1]
    assert isinstance(violation, ProtocolViolation)
    assert violation.offset == len(BANNER)
    assert violation.reason == f"message of {len(big) - 4} bytes exceeds {256 * 1024}"
    assert violation.excerpt.startswith("Event: VarSet\r\nK0: vvv")


def test_frame_over_max_message_in_pieces_is_discarded_and_the_next_one_read() -> None:
    big = format_pairs([("Event", "VarSet"), *[(f"K{i}", "v" * 100) for i in range(4000)]])
    assert len(big) > 5 * 65536
    reader = MessageReader()
    pieces = [BANNER, *(big[i : i + 65536] for i in range(0, len(big), 65536)), VALID]
    items: list[Item] = []
    for piece in pieces:
        items += reader.feed(piece)
        assert reader.buffered <= reader.max_message
    assert [type(i) for i in items] == [Banner, ProtocolViolation, ProtocolViolation, Message]
    started, resynced = items[1], items[2]
    assert isinstance(started, ProtocolViolation)
    assert isinstance(resynced, ProtocolViolation)
    assert started.offset == resynced.offset == len(BANNER)
    assert started.reason == f"{5 * 65536} bytes without a message end (limit {256 * 1024}); " + (
        "discarding up to the next blank line"
    )
    assert resynced.reason.startswith(f"dropped {len(big) - 4} bytes without a message end")


def test_frame_of_exactly_max_message_buffered_then_completed_is_reported_whole() -> None:
    """The buffer may reach the cap; the frame that ends in the next read is reported as too big."""
    big = format_pairs([("Event", "VarSet"), *[(f"K{i}", "v" * 100) for i in range(3000)]])
    reader = MessageReader()
    pieces = [BANNER, *(big[i : i + 65536] for i in range(0, len(big), 65536)), VALID]
    items: list[Item] = []
    for piece in pieces:
        items += reader.feed(piece)
        assert reader.buffered <= reader.max_message
    assert [type(i) for i in items] == [Banner, ProtocolViolation, Message]
    violation = items[1]
    assert isinstance(violation, ProtocolViolation)
    assert violation.reason == f"message of {len(big) - 4} bytes exceeds {256 * 1024}"


def test_line_over_max_line_inside_a_small_frame_is_dropped() -> None:
    long_line = event(("Event", "UserEvent"), ("Data", "z" * 70_000))
    items = MessageReader(expect_banner=False).feed(long_line + VALID)
    assert [type(i) for i in items] == [ProtocolViolation, Message]
    violation = items[0]
    assert isinstance(violation, ProtocolViolation)
    assert violation.reason == "a line exceeds 65536 bytes"
    assert violation.offset == 0


def test_overlong_banner_is_reported() -> None:
    reader = MessageReader(max_line=100)
    items = reader.feed(b"Asterisk Call Manager/" + b"9" * 200)
    assert [type(i) for i in items] == [ProtocolViolation, ProtocolViolation]
    too_long, discarding = items
    assert isinstance(too_long, ProtocolViolation)
    assert isinstance(discarding, ProtocolViolation)
    assert too_long.reason == "banner line too long"
    assert discarding.reason.endswith("discarding up to the next blank line")
    assert reader.buffered <= 3
    assert [type(i) for i in reader.feed(b"\r\n\r\n" + VALID)] == [ProtocolViolation, Message]


def test_reader_never_raises_on_random_bytes() -> None:
    """Seeded noise spliced with pieces of real frames: only items come out, never an exception."""
    rng = random.Random(20261125)
    pieces = [
        VALID,
        BANNER,
        b"\r\n",
        b"\r\n\r\n",
        b"Response: Follows\r\n",
        b"Event:",
        b": ",
        b"\xc3",
        b"\xff",
    ]
    for _ in range(300):
        reader = MessageReader(expect_banner=rng.random() < 0.5, max_message=2048, max_line=512)
        for _ in range(rng.randint(1, 40)):
            if rng.random() < 0.5:
                chunk = rng.choice(pieces)
            else:
                chunk = bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 300)))
            for item in reader.feed(chunk):
                assert isinstance(item, Message | Banner | ProtocolViolation)
                if isinstance(item, Message):
                    item.to_dict()
                    _ = item.defects
            assert reader.buffered <= reader.max_message


# --- what we send ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fields",
    [
        {"Channel": "Local/1@x\r\nAction: Originate"},
        {"Channel": "Local/1@x\nAction: Originate"},
        {"CallerID": '"Eve" <1>\r'},
        {"Variable": ["A=1", "B=2\r\n\r\nAction: Hangup"]},
        [("Bad\r\nKey", "v")],
        [("Colon:Key", "v")],
        [("", "v")],
    ],
)
def test_format_action_rejects_header_injection(fields: Any) -> None:
    with pytest.raises(LocalProtocolError):
        format_action("Originate", fields, "cb-1")


def test_format_action_rejects_injection_in_name_and_action_id() -> None:
    with pytest.raises(LocalProtocolError):
        format_action("Ping\r\nAction: Hangup")
    with pytest.raises(LocalProtocolError):
        format_action("Ping", (), "cb-1\r\nChannel: x")


def test_format_action_repeats_list_values_and_keeps_utf8() -> None:
    data = format_action("Originate", {"Variable": ["A=1", "B=2"], "CallerID": '"Zoë" <100>'}, "cb-9")
    assert data == (
        b"Action: Originate\r\nActionID: cb-9\r\nVariable: A=1\r\nVariable: B=2\r\n"
        b'CallerID: "Zo\xc3\xab" <100>\r\n\r\n'
    )
    [parsed] = MessageReader(expect_banner=False).feed(data)
    assert isinstance(parsed, Message)
    assert parsed.to_dict() == {
        "Action": "Originate",
        "ActionID": "cb-9",
        "Variable": ["A=1", "B=2"],
        "CallerID": '"Zoë" <100>',
    }
