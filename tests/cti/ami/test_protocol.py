"""The sans-IO AMI client connection, driven by the real ``actions`` session and by built cases.

The ``actions`` capture is replayed in its recorded order: every write of the capture client is
sent again through ``send_action`` with the same ActionID (the bytes must match the capture), and
every read is fed to ``receive_data``.
"""

from __future__ import annotations

import functools

import pytest

from callbridge.captures import Chunk, available_captures, load_capture
from cti.ami import (
    ActionResult,
    AMIClientProtocol,
    AMIEvent,
    Banner,
    Message,
    MessageKind,
    MessageReader,
    ProtocolViolation,
    UnmatchedResponse,
    format_pairs,
)

BANNER = b"Asterisk Call Manager/11.0.0\r\n"

pytestmark = pytest.mark.skipif("actions" not in available_captures(), reason="actions capture not available")


def frame(*pairs: tuple[str, str]) -> bytes:
    return format_pairs(pairs)


@functools.cache
def actions_chunks() -> tuple[Chunk, ...]:
    return load_capture("actions").chunks


def replay_actions(*, byte_at_a_time: bool = False) -> tuple[AMIClientProtocol, list[AMIEvent], list[bytes]]:
    """Replay the ``actions`` session; return the protocol, what it emitted, and unsent writes."""
    proto = AMIClientProtocol(id_prefix="test")
    emitted: list[AMIEvent] = []
    raw_only: list[bytes] = []  # actions we cannot send through send_action (no ActionID)
    for chunk in actions_chunks():
        if chunk.data is None:
            continue
        if chunk.direction == "out":
            sent = b""
            for action in MessageReader(expect_banner=False).feed(chunk.data):
                assert isinstance(action, Message)
                action_id = action.get("ActionID")
                if action_id is None:  # sent raw by the capture client
                    raw_only.append(format_pairs(action.pairs))
                    sent += raw_only[-1]
                    continue
                fields = [(k, v) for k, v in action.pairs if k not in ("Action", "ActionID")]
                assert proto.send_action(action.name, fields, action_id=action_id) == action_id
                sent += proto.data_to_send()
            assert sent == chunk.data
            continue
        pieces = [chunk.data[i : i + 1] for i in range(len(chunk.data))] if byte_at_a_time else [chunk.data]
        for piece in pieces:
            proto.receive_data(piece)
            emitted += proto.events_received()
    return proto, emitted, raw_only


@functools.cache
def replayed() -> tuple[AMIClientProtocol, tuple[AMIEvent, ...], tuple[bytes, ...]]:
    proto, emitted, raw_only = replay_actions()
    return proto, tuple(emitted), tuple(raw_only)


def results() -> dict[str, ActionResult]:
    _, emitted, _ = replayed()
    return {e.action_id: e for e in emitted if isinstance(e, ActionResult)}


def test_every_action_gets_one_result_and_the_idless_ping_is_unmatched() -> None:
    proto, emitted, raw_only = replayed()
    assert raw_only == (b"Action: Ping\r\n\r\n",)
    by_id = results()
    assert list(by_id) == [f"actions-{n:04d}" for n in range(1, 30)]
    assert proto.pending == []
    assert proto.banner == Banner("Asterisk Call Manager/11.0.0")
    unmatched = [e for e in emitted if isinstance(e, UnmatchedResponse)]
    assert len(unmatched) == 1
    pong = unmatched[0].response
    assert pong.get("ActionID") is None
    assert pong["Ping"] == "Pong"
    assert [e for e in emitted if isinstance(e, ProtocolViolation)] == []
    # the unmatched Pong came right after the result of the Ping that had an ActionID
    results_and_unmatched = [e for e in emitted if isinstance(e, ActionResult | UnmatchedResponse)]
    index = results_and_unmatched.index(unmatched[0])
    previous = results_and_unmatched[index - 1]
    assert isinstance(previous, ActionResult)
    assert previous.action_id == "actions-0005"
    assert previous.response["Ping"] == "Pong"


def test_core_show_channels_gathers_six_channels_into_one_result() -> None:
    result = results()["actions-0008"]
    assert result.action == "CoreShowChannels"
    assert result.ok
    assert result.message == "Channels will follow"
    assert result.response["EventList"] == "start"
    assert [e.name for e in result.events] == ["CoreShowChannel"] * 6
    assert {e["ActionID"] for e in result.events} == {"actions-0008"}
    assert result.complete is not None
    assert result.complete.name == "CoreShowChannelsComplete"
    assert result.complete["EventList"] == "Complete"
    assert result.complete["ListItems"] == "6"
    channels = sorted(e["Channel"] for e in result.events)
    assert "Local/pstn@callers-00000000;1" in channels
    assert "Local/pstn@callers-00000002;1" in channels


def test_status_lists_all_channels_and_one_channel() -> None:
    everything, one = results()["actions-0009"], results()["actions-0010"]
    assert [e.name for e in everything.events] == ["Status"] * 6
    assert everything.complete is not None
    assert everything.complete.name == "StatusComplete"
    assert [e["Channel"] for e in one.events] == ["Local/pstn@callers-00000000;1"]


def test_queue_status_results_hold_params_members_and_entries() -> None:
    every_queue = results()["actions-0011"]
    assert every_queue.ok
    assert every_queue.message == "Queue status will follow"
    names = [e.name for e in every_queue.events]
    assert names.count("QueueParams") == 4
    assert names.count("QueueMember") == 10
    assert names.count("QueueEntry") == 1
    assert every_queue.complete is not None
    assert every_queue.complete.name == "QueueStatusComplete"
    assert {e["Queue"] for e in every_queue.events if e.name == "QueueParams"} == {
        "support",
        "sales",
        "billing",
        "callcenter",
    }

    billing = results()["actions-0012"]
    assert [e.name for e in billing.events] == ["QueueParams", "QueueMember", "QueueEntry"]
    params, member, entry = billing.events
    assert params["Queue"] == "billing"
    assert member["Name"] == "Eve Agent"
    assert member["Paused"] == "1"
    assert member["PausedReason"] == "Training"
    assert entry["CallerIDNum"] == "3125550166"
    assert entry["CallerIDName"] == "DAVIS ROBERT"


def test_queue_summary_and_single_responses() -> None:
    by_id = results()
    assert [e["Queue"] for e in by_id["actions-0014"].events] == ["support"]
    assert len(by_id["actions-0013"].events) == 4
    version = by_id["actions-0015"]
    assert version.ok
    assert version.events == ()
    assert version.response.get_all("Output")[0].startswith("Asterisk 22.10.1")
    assert by_id["actions-0018"].response["Value"] == "+14155550123"
    assert by_id["actions-0019"].response["Value"] == "support"
    assert by_id["actions-0021"].response["Status"] == "-1"
    assert by_id["actions-0029"].response.name == "Goodbye"
    assert by_id["actions-0029"].ok


@pytest.mark.parametrize(
    ("action_id", "action", "message"),
    [
        ("actions-0017", "Command", "Command output follows"),
        (
            "actions-0022",
            "FooBar",
            "Invalid/unknown command: FooBar. Use Action: ListCommands to show available commands.",
        ),
        ("actions-0023", "Originate", "Channel not specified"),
        ("actions-0024", "Hangup", "No such channel"),
        ("actions-0025", "Status", "No such channel"),
    ],
)
def test_failed_actions_are_not_ok_and_keep_their_message(action_id: str, action: str, message: str) -> None:
    result = results()[action_id]
    assert result.action == action
    assert result.ok is False
    assert result.response.name == "Error"
    assert result.message == message
    assert result.events == ()


def test_events_outside_lists_pass_through_in_order_including_originate_response() -> None:
    _, emitted, _ = replayed()
    events = [e for e in emitted if isinstance(e, Message)]
    gathered = sum(len(r.events) + (r.complete is not None) for r in results().values())
    assert len(events) + gathered + len(results()) + 1 == 323  # +1: the unmatched Pong
    assert all(e.kind is MessageKind.EVENT for e in events)
    originate = [e for e in events if e.name == "OriginateResponse"]
    # Rule 3: an event with the ActionID of an answered Originate is still just an event.
    assert [e["ActionID"] for e in originate] == ["actions-0003", "actions-0004"]
    assert {e["Response"] for e in originate} == {"Success"}
    assert not any(e.name == "CoreShowChannel" for e in events)


def test_byte_at_a_time_gives_the_same_results() -> None:
    _, emitted, _ = replay_actions(byte_at_a_time=True)
    _, reference, _ = replayed()
    assert emitted == list(reference)


# --- built cases ------------------------------------------------------------------------------------


def open_connection() -> AMIClientProtocol:
    proto = AMIClientProtocol()
    proto.receive_data(BANNER)
    assert proto.events_received() == [Banner("Asterisk Call Manager/11.0.0")]
    return proto


def test_action_ids_are_generated_and_the_bytes_are_ready() -> None:
    proto = AMIClientProtocol(id_prefix="cb")
    assert proto.send_action("Ping") == "cb-1"
    assert proto.send_action("Status", {"Channel": "Local/1@x-0;1"}) == "cb-2"
    assert proto.data_to_send() == (
        b"Action: Ping\r\nActionID: cb-1\r\n\r\n"
        b"Action: Status\r\nActionID: cb-2\r\nChannel: Local/1@x-0;1\r\n\r\n"
    )
    assert proto.data_to_send() == b""
    assert proto.pending == ["cb-1", "cb-2"]
    with pytest.raises(ValueError, match="already in flight"):
        proto.send_action("Ping", action_id="cb-1")


def test_interleaved_lists_and_unrelated_events_in_one_read() -> None:
    proto = open_connection()
    a = proto.send_action("CoreShowChannels")
    b = proto.send_action("QueueStatus")
    ping = proto.send_action("Ping")
    data = b"".join(
        [
            frame(
                ("Response", "Success"), ("ActionID", b), ("EventList", "start"), ("Message", "Queue status")
            ),
            frame(("Event", "Newexten"), ("Channel", "Local/1@x-0;1"), ("Priority", "1")),
            frame(("Response", "Success"), ("ActionID", a), ("EventList", "start"), ("Message", "Channels")),
            frame(("Event", "QueueParams"), ("ActionID", b), ("Queue", "support")),
            frame(("Event", "CoreShowChannel"), ("ActionID", a), ("Channel", "Local/1@x-0;1")),
            frame(("Response", "Success"), ("ActionID", ping), ("Ping", "Pong")),
            frame(("Event", "Newexten"), ("Channel", "Local/1@x-0;1"), ("Priority", "2")),
            frame(("Event", "CoreShowChannel"), ("ActionID", a), ("Channel", "Local/2@x-0;1")),
            frame(("Event", "CoreShowChannelsComplete"), ("ActionID", a), ("EventList", "Complete")),
            frame(("Event", "QueueMember"), ("ActionID", b), ("Name", "Alice")),
            frame(("Event", "QueueStatusComplete"), ("ActionID", b), ("EventList", "Complete")),
            frame(("Event", "Hangup"), ("Channel", "Local/1@x-0;1")),
        ]
    )
    proto.receive_data(data)
    out = proto.events_received()
    summary = [
        (type(e).__name__, e.action_id if isinstance(e, ActionResult) else getattr(e, "name", None))
        for e in out
    ]
    assert summary == [
        ("Message", "Newexten"),
        ("ActionResult", ping),
        ("Message", "Newexten"),
        ("ActionResult", a),
        ("ActionResult", b),
        ("Message", "Hangup"),
    ]
    first_newexten, pong, second_newexten, channels, queues, _ = out
    assert isinstance(first_newexten, Message)
    assert first_newexten["Priority"] == "1"
    assert isinstance(second_newexten, Message)
    assert second_newexten["Priority"] == "2"
    assert isinstance(pong, ActionResult)
    assert pong.response["Ping"] == "Pong"
    assert isinstance(channels, ActionResult)
    assert [e["Channel"] for e in channels.events] == ["Local/1@x-0;1", "Local/2@x-0;1"]
    assert isinstance(queues, ActionResult)
    assert [e.name for e in queues.events] == ["QueueParams", "QueueMember"]
    assert proto.pending == []


def test_responses_matched_by_action_id_not_by_order() -> None:
    proto = open_connection()
    first = proto.send_action("Getvar", {"Variable": "A"})
    second = proto.send_action("Getvar", {"Variable": "B"})
    proto.receive_data(
        frame(("Response", "Success"), ("ActionID", second), ("Variable", "B"), ("Value", "2"))
        + frame(("Response", "Success"), ("ActionID", first), ("Variable", "A"), ("Value", "1"))
    )
    out = proto.events_received()
    assert [(r.action_id, r.response["Value"]) for r in out if isinstance(r, ActionResult)] == [
        (second, "2"),
        (first, "1"),
    ]


def test_unknown_duplicate_and_missing_action_ids_are_unmatched() -> None:
    proto = open_connection()
    ping = proto.send_action("Ping")
    pong = frame(("Response", "Success"), ("ActionID", ping), ("Ping", "Pong"))
    proto.receive_data(pong + pong + frame(("Response", "Success"), ("ActionID", "someone-else")))
    proto.receive_data(frame(("Response", "Success"), ("Ping", "Pong")))
    out = proto.events_received()
    assert [type(e) for e in out] == [ActionResult, UnmatchedResponse, UnmatchedResponse, UnmatchedResponse]
    duplicate, stranger, idless = out[1:]
    assert isinstance(duplicate, UnmatchedResponse)
    assert duplicate.response["ActionID"] == ping
    assert isinstance(stranger, UnmatchedResponse)
    assert stranger.response["ActionID"] == "someone-else"
    assert isinstance(idless, UnmatchedResponse)
    assert idless.response.get("ActionID") is None


def test_list_event_of_an_unknown_action_is_an_ordinary_event() -> None:
    proto = open_connection()
    proto.send_action("CoreShowChannels", action_id="mine")
    proto.receive_data(frame(("Response", "Success"), ("ActionID", "mine"), ("EventList", "start")))
    proto.receive_data(frame(("Event", "CoreShowChannel"), ("ActionID", "other"), ("Channel", "X")))
    out = proto.events_received()
    assert len(out) == 1
    assert isinstance(out[0], Message)
    assert out[0]["ActionID"] == "other"
    assert proto.pending == ["mine"]


def test_an_action_from_the_pbx_is_a_violation() -> None:
    proto = open_connection()
    proto.receive_data(frame(("Action", "Hangup"), ("Channel", "Local/1@x-0;1")))
    [violation] = proto.events_received()
    assert isinstance(violation, ProtocolViolation)
    assert violation.reason == "the PBX sent an Action"
    assert violation.excerpt.startswith("Action: Hangup")


def test_connection_lost_returns_pending_ids_including_open_lists() -> None:
    proto = open_connection()
    done = proto.send_action("Ping")
    listing = proto.send_action("CoreShowChannels")
    waiting = proto.send_action("Originate", {"Channel": "Local/1@x", "Async": "true"})
    unsent = proto.send_action("Ping")
    proto.receive_data(
        frame(("Response", "Success"), ("ActionID", done), ("Ping", "Pong"))
        + frame(("Response", "Success"), ("ActionID", listing), ("EventList", "start"))
        + frame(("Event", "CoreShowChannel"), ("ActionID", listing), ("Channel", "X"))
        + b"Response: Succ"  # a partial message, cut by the disconnect
    )
    assert [type(e) for e in proto.events_received()] == [ActionResult]
    assert proto.connection_lost() == [listing, waiting, unsent]
    assert proto.pending == []
    assert proto.data_to_send() == b""
    assert proto.banner is None
    # a new connection starts from a new banner; nothing of the old partial message survives
    proto.receive_data(BANNER + frame(("Response", "Success"), ("ActionID", listing)))
    out = proto.events_received()
    assert [type(e) for e in out] == [Banner, UnmatchedResponse]
    assert proto.connection_lost() == []


def test_ids_continue_after_a_reconnect() -> None:
    proto = AMIClientProtocol(id_prefix="x")
    assert proto.send_action("Ping") == "x-1"
    proto.connection_lost()
    assert proto.send_action("Ping") == "x-2"
