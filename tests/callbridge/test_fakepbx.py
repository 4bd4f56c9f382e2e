"""The fake PBX over real TCP on 127.0.0.1, driven by a plain asyncio client built on MessageReader.

What Asterisk would have sent is known from the captures (``load_messages``), so most checks
compare what the fake PBX sends with what the real Asterisk sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import json
import logging
import socket
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest

from callbridge.captures import Capture, Chunk, load_capture, load_messages
from callbridge.fakepbx import FakePBX, parse_queues_conf
from callbridge.fakepbx.script import Analysis, Rewrite
from cti.ami.codec import Banner, MessageReader, ProtocolViolation, format_action
from cti.ami.message import Message, MessageKind

# --- a minimal AMI client -------------------------------------------------------------------------


class Client:
    """Just enough AMI to drive the server: send actions, read every message in order."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, unit: float) -> None:
        self.reader = reader
        self.writer = writer
        self.parser = MessageReader(expect_banner=True)
        self.unit = unit
        self.pending: list[Message | Banner | ProtocolViolation] = []
        self.events: list[Message] = []  # events seen while waiting for responses
        self.ids = itertools.count(1)

    @classmethod
    async def connect(cls, pbx: FakePBX, unit: float, **socket_options: int) -> Client:
        if socket_options:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            for option, value in socket_options.items():
                sock.setsockopt(socket.SOL_SOCKET, getattr(socket, option), value)
            sock.setblocking(False)
            await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", pbx.port))
            reader, writer = await asyncio.open_connection(sock=sock)
        else:
            reader, writer = await asyncio.open_connection("127.0.0.1", pbx.port)
        client = cls(reader, writer, unit)
        banner = await client.next()
        assert isinstance(banner, Banner) and banner.text == "Asterisk Call Manager/11.0.0"
        return client

    async def next(self, timeout: float = 5.0) -> Message | Banner | ProtocolViolation:
        while not self.pending:
            data = await asyncio.wait_for(self.reader.read(65536), timeout * self.unit)
            if not data:
                raise EOFError("the PBX closed the connection")
            self.pending.extend(self.parser.feed(data))
        return self.pending.pop(0)

    async def message(self, timeout: float = 5.0) -> Message:
        item = await self.next(timeout)
        assert isinstance(item, Message), item
        return item

    def send(self, name: str, action_id: str | None = "auto", **fields: str) -> str | None:
        if action_id == "auto":
            action_id = f"t-{next(self.ids)}"
        self.writer.write(format_action(name, fields, action_id))
        return action_id

    async def response(self, action_id: str | None) -> Message:
        """The next response; events before it are kept in ``self.events``."""
        while True:
            message = await self.message()
            if message.kind is MessageKind.RESPONSE:
                assert message.action_id == action_id, (message.action_id, action_id)
                return message
            self.events.append(message)

    async def action(self, name: str, **fields: str) -> Message:
        return await self.response(self.send(name, **fields))

    async def list_action(self, name: str, **fields: str) -> tuple[Message, list[Message], Message]:
        """A list action: (response, items, the ...Complete event)."""
        action_id = self.send(name, **fields)
        response = await self.response(action_id)
        assert response["Response"] == "Success" and response["EventList"] == "start", response.text
        items = []
        while True:
            message = await self.message()
            if message.action_id != action_id:
                self.events.append(message)
            elif message.get("EventList") == "Complete":
                assert message["ListItems"] == str(len(items))
                return response, items, message
            else:
                items.append(message)

    async def login(self, username: str = "lab", secret: str = "lab", **fields: str) -> Message:
        return await self.action("Login", Username=username, Secret=secret, **fields)

    async def eof(self, timeout: float = 5.0) -> list[Message]:
        """Read until the PBX closes; return what came before."""
        seen = []
        with pytest.raises(EOFError):
            while True:
                item = await self.next(timeout)
                if isinstance(item, Message):
                    seen.append(item)
        return seen

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self.writer.wait_closed()


@pytest.fixture
async def connect(unit: float) -> AsyncIterator[Any]:
    clients: list[Client] = []

    async def _connect(pbx: FakePBX, **socket_options: int) -> Client:
        client = await Client.connect(pbx, unit, **socket_options)
        clients.append(client)
        return client

    yield _connect
    for client in clients:
        await client.close()


# --- what the capture says Asterisk sent -----------------------------------------------------------


def expected_events(name: str) -> list[dict[str, Any]]:
    """The capture's events minus responses, list events and the capture client's own login events."""
    records = [r for r in load_messages(name) if "msg" in r]
    list_ids = {
        r["msg"]["ActionID"]
        for r in records
        if r["dir"] == "in" and "Response" in r["msg"] and r["msg"].get("EventList") == "start"
    }
    out: list[dict[str, Any]] = []
    own_auth_dropped = False
    for record in records:
        msg = record["msg"]
        if record["dir"] != "in" or "Event" not in msg:
            continue
        if msg["Event"] == "FullyBooted" or msg.get("ActionID") in list_ids:
            continue
        if msg["Event"] == "SuccessfulAuth" and not own_auth_dropped:
            own_auth_dropped = True
            continue
        out.append(msg)
    return out


def capture_time_of(name: str, action_id: str) -> float:
    for record in load_messages(name):
        if record["dir"] == "out" and record.get("msg", {}).get("ActionID") == action_id:
            return float(record["t"])
    raise LookupError(action_id)


def captured_list(name: str, action_id: str) -> list[dict[str, Any]]:
    return [
        r["msg"]
        for r in load_messages(name)
        if r["dir"] == "in" and r.get("msg", {}).get("ActionID") == action_id and "Event" in r["msg"]
    ][:-1]


def without(items: Sequence[dict[str, Any]], *keys: str) -> list[dict[str, Any]]:
    return [{k: v for k, v in item.items() if k not in keys} for item in items]


def canonical(items: Sequence[dict[str, Any]]) -> list[str]:
    return sorted(json.dumps(item, sort_keys=True) for item in items)


async def read_until_done(client: Client, pbx: FakePBX, count: int | None = None) -> list[Message]:
    """Every message the client gets until the PBX has played ``count`` scenarios; then the
    replay is paused (a looping one would go on) and what was already sent is read too."""
    done = asyncio.ensure_future(pbx.replay_done(count))
    seen: list[Message] = []
    try:
        while True:
            if done.done():
                pbx.pause_replay()
            try:
                seen.append(await client.message(timeout=0.2))
            except TimeoutError:
                if done.done():
                    return seen
    finally:
        done.cancel()


# --- login -----------------------------------------------------------------------------------------


async def test_plain_login_then_fully_booted(connect: Any) -> None:
    async with FakePBX([], auth_fail_delay=0) as pbx:
        client = await connect(pbx)
        response = await client.login()
        assert response.pairs == [
            ("Response", "Success"),
            ("ActionID", "t-1"),
            ("Message", "Authentication accepted"),
        ]
        booted = await client.message()
        assert booted.name == "FullyBooted" and booted["Status"] == "Fully Booted"
        assert [k for k, _ in booted.pairs] == ["Event", "Privilege", "Uptime", "LastReload", "Status"]
        auth = await client.message()
        assert auth.name == "SuccessfulAuth" and auth["AccountID"] == "lab"
        assert [m.name for m in pbx.received_actions] == ["Login"]


async def test_md5_login_events_off(connect: Any) -> None:
    async with FakePBX(["queue_answered"], speed=None, username="demo", secret="s3cret") as pbx:
        client = await connect(pbx)
        challenge = await client.action("Challenge", AuthType="MD5")
        assert challenge["Response"] == "Success" and challenge["Challenge"].isdigit()
        key = hashlib.md5((challenge["Challenge"] + "s3cret").encode()).hexdigest()
        response = await client.action("Login", AuthType="MD5", Username="demo", Key=key, Events="off")
        assert response["Message"] == "Authentication accepted"
        await pbx.replay_done()
        ping = await client.action("Ping")
        assert client.events == []  # Events: off: not even FullyBooted, nor the replay
        goodbye = await client.action("Logoff")
        assert goodbye.pairs == [
            ("Response", "Goodbye"),
            ("ActionID", "t-4"),
            ("Message", "Thanks for all the fish."),
        ]
        assert await client.eof() == []
        assert ping["Ping"] == "Pong"


async def test_refused_login_as_in_the_capture(connect: Any) -> None:
    captured = {
        r["msg"]["ActionID"]: r["msg"]
        for r in load_messages("actions_login_failed")
        if "Response" in r.get("msg", {})
    }
    async with FakePBX([], auth_fail_delay=0) as pbx:
        client = await connect(pbx)
        denied = await client.action("CoreStatus", action_id="conn2-0001")
        assert denied.to_dict() == captured["conn2-0001"]
        client.send("Login", action_id="conn2-0002", Username="lab", Secret="wrong-secret", Events="on")
        failed = await client.response("conn2-0002")
        assert failed.to_dict() == captured["conn2-0002"]
        assert await client.eof() == []


async def test_md5_with_a_wrong_key_is_refused(connect: Any) -> None:
    async with FakePBX([], auth_fail_delay=0) as pbx:
        client = await connect(pbx)
        await client.action("Challenge", AuthType="MD5")
        response = await client.action("Login", AuthType="MD5", Username="lab", Key="0" * 32)
        assert response["Message"] == "Authentication failed"
        await client.eof()


# --- simple actions --------------------------------------------------------------------------------


async def test_ping_with_and_without_action_id(connect: Any) -> None:
    async with FakePBX([]) as pbx:
        client = await connect(pbx)
        await client.login()
        pong = await client.action("Ping")
        assert [k for k, _ in pong.pairs] == ["Response", "ActionID", "Ping", "Timestamp"]
        assert pong["Ping"] == "Pong" and float(pong["Timestamp"]) > 0
        anonymous = await client.response(client.send("Ping", action_id=None))
        assert "ActionID" not in anonymous and anonymous["Ping"] == "Pong"


async def test_unknown_action_is_answered_as_asterisk_does(connect: Any) -> None:
    captured = next(
        r["msg"]
        for r in load_messages("actions")
        if r.get("msg", {}).get("ActionID") == "actions-0022" and r["dir"] == "in"
    )
    async with FakePBX([]) as pbx:
        client = await connect(pbx)
        await client.login()
        unknown = await client.action("FooBar", action_id="actions-0022")
        assert unknown.to_dict() == captured
        anonymous = await client.response(client.send("FooBar", action_id=None))
        assert "ActionID" not in anonymous and anonymous["Message"] == captured["Message"]


async def test_captured_responses_for_unmodelled_actions(connect: Any) -> None:
    async with FakePBX([]) as pbx:
        client = await connect(pbx)
        await client.login()
        version = await client.action("Command", Command="core show version")
        assert version["Output"].startswith("Asterisk 22.10.1")
        nope = await client.action("Command", Command="frobnicate now")
        assert nope["Response"] == "Error" and nope["Output"].startswith("No such command 'frobnicate now'")
        state = await client.action("ExtensionState", Exten="agent7", Context="agents")
        assert (state["Exten"], state["Context"], state["Status"]) == ("agent7", "agents", "-1")
        assert (await client.action("Originate", Exten="2000", Context="direct"))[
            "Message"
        ] == "Channel not specified"
        assert (await client.action("Hangup", Channel="Local/nosuch@agents-00000099;1"))[
            "Message"
        ] == "No such channel"


# --- the replay --------------------------------------------------------------------------------------


@pytest.mark.parametrize("scenario", ["queue_answered", "actions", "ivr_async_agi"])
async def test_replayed_events_equal_the_capture(connect: Any, scenario: str) -> None:
    async with FakePBX([scenario], speed=None) as pbx:
        client = await connect(pbx)
        await client.login()
        seen = await read_until_done(client, pbx)
    assert [m.name for m in seen[:2]] == ["FullyBooted", "SuccessfulAuth"]  # made for this login
    replayed = [m.to_dict() for m in seen[2:]]
    expected = expected_events(scenario)
    assert [m["Event"] for m in replayed] == [m["Event"] for m in expected]
    assert replayed == expected


async def test_captured_timing_scaled_by_speed(connect: Any, unit: float) -> None:
    speed = 20.0
    last = Analysis(load_capture("queue_abandon")).script().steps[-1].t  # about 11 s of capture
    expected = expected_events("queue_abandon")
    async with FakePBX(["queue_abandon"], speed=speed) as pbx:
        client = await connect(pbx)
        loop = asyncio.get_running_loop()
        await client.login()
        started = loop.time()
        seen = [await client.message() for _ in range(len(expected) + 2)]  # FullyBooted, SuccessfulAuth
        elapsed = loop.time() - started
    assert [m.to_dict() for m in seen[2:]] == expected
    assert last / speed * 0.95 <= elapsed <= last / speed + 0.5 * unit


async def test_one_info_line_per_connection_change_and_no_secret(
    connect: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="callbridge.fakepbx")
    async with FakePBX([], secret="s3cr3t-value") as pbx:
        client = await connect(pbx)
        await client.login(secret="s3cr3t-value")
        await client.action("Ping")
        await client.action("Logoff")
        await client.eof()
        assert pbx.actions_by_connection == {1: pbx.received_actions}
    lines = [r.getMessage() for r in caplog.records if "AMI connection" in r.getMessage()]
    assert len(lines) == 3
    assert (
        "from 127.0.0.1" in lines[0]
        and "logged in as lab" in lines[1]
        and lines[2].endswith("closed: logoff")
    )
    assert not any("s3cr3t" in r.getMessage() for r in caplog.records)


def test_script_keeps_the_captured_chunking() -> None:
    capture = load_capture("queue_answered")
    script = Analysis(capture).script()
    chunks = [c.data for c in capture.chunks if c.direction == "in" and c.data]
    # Every step is one captured read, minus what is not replayed (here: the responses).
    for step in script.steps:
        assert any(step.data in chunk for chunk in chunks)
    assert sum(len(step.messages) for step in script.steps) == len(expected_events("queue_answered"))
    assert script.steps[0].t < 0.01 and script.steps[-1].t == pytest.approx(5.53, abs=0.01)


def test_script_merges_a_read_that_ends_inside_a_message() -> None:
    event = (
        b"Event: Newchannel\r\nPrivilege: call,all\r\nChannel: Local/a@b-00000000;1\r\n"
        b"Uniqueid: 1795581569.0\r\n\r\n"
    )
    chunks = (
        Chunk(0.001, "in", b"Asterisk Call Manager/11.0.0\r\n"),
        Chunk(0.002, "out", b"Action: Login\r\nActionID: x-1\r\nUsername: lab\r\nSecret: lab\r\n\r\n"),
        Chunk(0.003, "in", b"Response: Success\r\nActionID: x-1\r\nMessage: Authentication accepted\r\n\r\n"),
        Chunk(0.5, "in", event[:30]),
        Chunk(0.7, "in", event[30:] + event),
        Chunk(0.9, "in", None),
    )
    script = Analysis(Capture("synthetic", chunks)).script()
    assert [(round(s.t, 3), s.data, len(s.messages)) for s in script.steps] == [(0.697, event + event, 2)]


def test_rewrite_keeps_lengths_and_moves_every_id() -> None:
    analysis = Analysis(load_capture("blind_transfer_action"))
    plain = analysis.script()
    moved = analysis.script(rewrite=Rewrite(epoch_offset=1000, channel_offset=5, bridge_offset=1))
    assert [len(s.data) for s in plain.steps] == [len(s.data) for s in moved.steps]
    before = {
        m.get(k)
        for s in plain.steps
        for m in s.messages
        for k in ("Uniqueid", "Linkedid", "Channel", "BridgeUniqueid")
    }
    after = {
        m.get(k)
        for s in moved.steps
        for m in s.messages
        for k in ("Uniqueid", "Linkedid", "Channel", "BridgeUniqueid")
    }
    before.discard(None)
    after.discard(None)
    assert before and not (before & after)
    assert "Local/pstn@callers-00000005;1" in after


async def test_core_show_channels_mid_replay_matches_the_capture(connect: Any) -> None:
    at = capture_time_of("actions", "actions-0008")  # the capture's CoreShowChannels
    async with FakePBX(["actions"], speed=None) as pbx:
        pbx.pause_replay(at=at)
        client = await connect(pbx)
        await client.login()
        assert await pbx.wait_paused()
        _, items, complete = await client.list_action("CoreShowChannels")
        captured = captured_list("actions", "actions-0008")
        assert len(items) == len(captured) == 6
        assert canonical(without([m.to_dict() for m in items], "ActionID")) == canonical(
            without(captured, "ActionID")
        )
        assert [k for k, _ in items[0].pairs][:2] == ["Event", "ActionID"]
        assert [k for k, _ in complete.pairs] == ["Event", "ActionID", "EventList", "ListItems"]

        _, status, status_complete = await client.list_action("Status")
        captured_status = captured_list("actions", "actions-0009")
        # Media formats come from no event: the MOH caller's gsm write path cannot be known.
        media = ("ActionID", "Writeformat", "Writetrans")
        assert canonical(without([m.to_dict() for m in status], *media)) == canonical(
            without(captured_status, *media)
        )
        assert status_complete["Items"] == "6"


async def test_queue_status_mid_replay_matches_the_capture(connect: Any) -> None:
    at = capture_time_of("actions", "actions-0011")
    async with FakePBX(["actions"], speed=None) as pbx:
        pbx.pause_replay(at=at)
        client = await connect(pbx)
        await client.login()
        assert await pbx.wait_paused()
        _, items, _ = await client.list_action("QueueStatus")
        _, summary, _ = await client.list_action("QueueSummary")
    # LoginTime is when the fake PBX started, not the capture's; Wait and LongestHoldTime count
    # whole seconds of Asterisk's wall clock, which the capture's timing cannot reproduce.
    ignore = ("ActionID", "LoginTime", "Wait")
    assert canonical(without([m.to_dict() for m in items], *ignore)) == canonical(
        without(captured_list("actions", "actions-0011"), *ignore)
    )
    assert canonical(without([m.to_dict() for m in summary], "ActionID", "LongestHoldTime")) == canonical(
        without(captured_list("actions", "actions-0013"), "ActionID", "LongestHoldTime")
    )


async def test_restart_forgets_every_channel(connect: Any) -> None:
    async with FakePBX(["actions"], speed=None) as pbx:
        pbx.pause_replay(at=3.0)
        client = await connect(pbx)
        await client.login()
        await pbx.wait_paused()
        _, before, _ = await client.list_action("CoreShowChannels")
        assert len(before) == 6
        port = pbx.port
        await pbx.restart()
        await client.eof()
        assert pbx.port == port
        again = await connect(pbx)
        await again.login()
        _, after, _ = await again.list_action("CoreShowChannels")
        assert after == []
        _, queues, _ = await again.list_action("QueueStatus", Queue="billing")
        eve = next(m for m in queues if m.name == "QueueMember")
        assert eve["Paused"] == "0"  # the pause was part of the state that the restart forgot
        await pbx.replay_done()
        assert pbx.played == ["actions"]


async def test_restart_cuts_the_scenario_short_and_the_next_one_plays(connect: Any) -> None:
    async with FakePBX(["queue_answered", "originate_busy"], speed=None) as pbx:
        pbx.pause_replay(at=1.0)
        client = await connect(pbx)
        await client.login()
        assert await pbx.wait_paused()
        await pbx.restart()
        assert pbx.played == ["queue_answered"]
        pbx.resume_replay()
        again = await connect(pbx)
        await again.login()
        seen = await read_until_done(again, pbx)
    assert pbx.played == ["queue_answered", "originate_busy"]
    assert [m["Reason"] for m in seen if m.name == "OriginateResponse"] == ["5"]
    # The restarted PBX numbers its calls after those of the cut scenario: no id comes back.
    assert {m["Channel"] for m in seen if m.name == "Newchannel"} == {
        "Local/+14155550144@customers-00000002;1",
        "Local/+14155550144@customers-00000002;2",
    }


async def test_restart_with_a_delay_refuses_connections_meanwhile(connect: Any, unit: float) -> None:
    async with FakePBX([]) as pbx:
        port = pbx.port
        restart = asyncio.ensure_future(pbx.restart(delay=0.3 * unit))
        await asyncio.sleep(0.1 * unit)
        with pytest.raises(OSError):
            await asyncio.open_connection("127.0.0.1", port)
        await restart
        client = await connect(pbx)
        assert (await client.login())["Message"] == "Authentication accepted"


async def test_looping_gives_new_ids_each_time(connect: Any) -> None:
    per_play = len(expected_events("queue_answered"))
    async with FakePBX(["queue_answered"], speed=None, loop_scenarios=True) as pbx:
        client = await connect(pbx)
        await client.login()
        seen = await read_until_done(client, pbx, count=2)
    first, second = seen[2 : 2 + per_play], seen[2 + per_play : 2 + 2 * per_play]
    assert [m.to_dict() for m in first] == expected_events("queue_answered")
    assert [m.name for m in second] == [m.name for m in first]
    for key in ("Linkedid", "Uniqueid", "Channel", "DestChannel", "BridgeUniqueid"):
        ids_1 = {m.get(key) for m in first} - {None}
        ids_2 = {m.get(key) for m in second} - {None}
        assert ids_1 and ids_2 and not (ids_1 & ids_2), key
    # Consistent: the second play is the first with its ids moved, nothing else.
    linkedid_1 = {m["Linkedid"] for m in first if "Linkedid" in m}
    linkedid_2 = {m["Linkedid"] for m in second if "Linkedid" in m}
    assert len(linkedid_1) == len(linkedid_2) == 1
    assert {m["Channel"] for m in second if m.name == "Newchannel"} == {
        "Local/pstn@callers-00000002;1",
        "Local/pstn@callers-00000002;2",
        "Local/agent1@agents-00000003;1",
        "Local/agent1@agents-00000003;2",
    }


async def test_two_scenarios_back_to_back_with_the_gap(connect: Any) -> None:
    async with FakePBX(["originate_busy", "originate_congestion"], speed=None) as pbx:
        client = await connect(pbx)
        await client.login()
        seen = await read_until_done(client, pbx)
        assert pbx.played == ["originate_busy", "originate_congestion"]
    responses = [m for m in seen if m.name == "OriginateResponse"]
    assert [m["Reason"] for m in responses] == ["5", "8"]
    channels = [m["Channel"] for m in seen if m.name == "Newchannel"]
    assert len(channels) == len(set(channels)) == 4


async def test_pause_and_resume(connect: Any) -> None:
    async with FakePBX(["queue_answered"], speed=None) as pbx:
        pbx.pause_replay()
        client = await connect(pbx)
        await client.login()
        await client.message()  # FullyBooted
        await client.message()  # SuccessfulAuth
        assert await pbx.wait_paused()
        with pytest.raises(TimeoutError):
            await client.message(timeout=0.2)
        pbx.resume_replay()
        assert (await client.message()).name == "Newchannel"


# --- actions on the replayed state ------------------------------------------------------------------


async def test_queue_pause_changes_state_and_emits_the_event(connect: Any) -> None:
    async with FakePBX([]) as pbx:
        client = await connect(pbx)
        await client.login()
        response = await client.action(
            "QueuePause", Queue="support", Interface="Local/agent2@agents/n", Paused="true", Reason="Lunch"
        )
        assert response["Message"] == "Interface paused successfully"
        device = await client.message()
        assert (device.name, device["Device"], device["State"]) == (
            "DeviceStateChange",
            "Queue:support_pause_Local/agent2@agents/n",
            "INUSE",
        )
        pause = await client.message()
        assert (pause.name, pause["Paused"], pause["PausedReason"], pause["MemberName"]) == (
            "QueueMemberPause",
            "1",
            "Lunch",
            "Bob Agent",
        )
        captured_layout = [
            k
            for k, _ in next(
                Message.from_pairs(list(r["msg"].items()))
                for r in load_messages("queue_member_admin")
                if r.get("msg", {}).get("Event") == "QueueMemberPause"
            ).pairs
        ]
        assert [k for k, _ in pause.pairs] == captured_layout
        _, items, _ = await client.list_action("QueueStatus", Queue="support", Member="Bob Agent")
        bob = [m for m in items if m.name == "QueueMember"]
        assert len(bob) == 1 and (bob[0]["Paused"], bob[0]["PausedReason"]) == ("1", "Lunch")
        missing = await client.action("QueuePause", Interface="Local/nobody@agents/n", Paused="true")
        assert missing["Message"] == "Interface not found"


async def test_queue_add_and_remove(connect: Any) -> None:
    async with FakePBX([]) as pbx:
        client = await connect(pbx)
        await client.login()
        added = await client.action(
            "QueueAdd", Queue="support", Interface="Local/agent3@agents/n", MemberName="Carol Agent"
        )
        assert added["Message"] == "Added interface to queue"
        while (event := await client.message()).name != "QueueMemberAdded":
            pass
        assert (event["Membership"], event["MemberName"]) == ("dynamic", "Carol Agent")
        _, summary, _ = await client.list_action("QueueSummary", Queue="support")
        assert summary[0]["LoggedIn"] == "3"
        assert (await client.action("QueueAdd", Queue="nosuchqueue", Interface="x"))["Message"] == (
            "Unable to add interface to queue: No such queue"
        )
        removed = await client.action("QueueRemove", Queue="support", Interface="Local/agent3@agents/n")
        assert removed["Message"] == "Removed interface from queue"
        again = await client.action("QueueRemove", Queue="support", Interface="Local/agent3@agents/n")
        assert again["Message"] == "Unable to remove interface: Not there"
        static = await client.action("QueueRemove", Queue="support", Interface="Local/agent1@agents/n")
        assert static["Message"] == "Member not dynamic"


async def test_originate_plays_the_matching_capture(connect: Any) -> None:
    async with FakePBX([], speed=None, originate_scenarios=["originate_busy", "originate_answered"]) as pbx:
        client = await connect(pbx)
        await client.login()
        queued = await client.action(
            "Originate",
            Channel="Local/+14155550144@customers",
            Context="dialer-connect",
            Exten="support",
            Priority="1",
            Async="true",
        )
        assert queued["Message"] == "Originate successfully queued"
        while (event := await client.message()).name != "OriginateResponse":
            pass
        assert (event.action_id, event["Response"], event["Reason"]) == ("t-2", "Failure", "5")
        nothing = await client.action("Originate", Channel="Local/+15555550000@customers", Async="true")
        assert nothing["Message"] == "Originate successfully queued"
        with pytest.raises(TimeoutError):
            await client.message(timeout=0.3)  # no capture matches: no call is invented
        assert [m["Channel"] for m in pbx.actions_named("originate")] == [
            "Local/+14155550144@customers",
            "Local/+15555550000@customers",
        ]


async def test_getvar_reads_the_replayed_channel(connect: Any) -> None:
    at = capture_time_of("actions", "actions-0018")
    async with FakePBX(["actions"], speed=None) as pbx:
        pbx.pause_replay(at=at)
        client = await connect(pbx)
        await client.login()
        await pbx.wait_paused()
        number = await client.action(
            "Getvar", Channel="Local/pstn@callers-00000000;1", Variable="CALLERID(num)"
        )
        queue = await client.action("Getvar", Channel="Local/pstn@callers-00000000;1", Variable="QUEUENAME")
        missing = await client.action("Getvar", Channel="Local/nosuch@x-00000099;1", Variable="X")
    assert (number["Value"], queue["Value"]) == ("+14155550123", "support")
    assert missing["Message"] == "No such channel"


# --- faults ---------------------------------------------------------------------------------------------


async def test_cut_connections_keeps_the_pbx_running(connect: Any) -> None:
    async with FakePBX([]) as pbx:
        client = await connect(pbx)
        await client.login()
        await pbx.cut_connections()
        await client.eof()
        again = await connect(pbx)
        assert (await again.login())["Message"] == "Authentication accepted"


async def test_send_raw_reaches_every_client(connect: Any) -> None:
    async with FakePBX([]) as pbx:
        first, second = await connect(pbx), await connect(pbx)
        await pbx.send_raw(b"Event: Garbage\r\nFoo: bar\r\n\r\nnot ami at all\r\n\r\n")
        for client in (first, second):
            assert (await client.message()).name == "Garbage"
            assert isinstance(await client.next(), ProtocolViolation)


async def test_actions_before_login_and_frames_without_action(connect: Any) -> None:
    async with FakePBX([]) as pbx:
        client = await connect(pbx)
        client.writer.write(b"Foo: bar\r\n\r\n")
        assert (await client.message())["Message"] == "Missing action in request"
        assert (await client.action("Ping"))["Message"] == "Permission denied"
        assert (await client.action("Challenge", AuthType="plain"))["Message"] == "Must specify AuthType"
        assert [m.name for m in pbx.received_actions] == ["Ping", "Challenge"]


async def test_events_action_switches_the_stream(connect: Any) -> None:
    async with FakePBX([]) as pbx:
        client = await connect(pbx)
        await client.login(Events="off")
        assert (await client.action("Events", EventMask="call,agent"))["Events"] == "On"
        await client.action("QueuePause", Interface="Local/agent5@agents/n", Paused="1")
        # No Queue: Eve is paused in both her queues, one event pair each.
        events = [await client.message() for _ in range(4)]
        assert [(m.name, m.get("Queue")) for m in events] == [
            ("DeviceStateChange", None),
            ("QueueMemberPause", "billing"),
            ("DeviceStateChange", None),
            ("QueueMemberPause", "callcenter"),
        ]
        assert (await client.action("Events", EventMask="off"))["Events"] == "Off"
        await client.action("QueuePause", Interface="Local/agent5@agents/n", Paused="0")
        assert (await client.action("Ping"))["Ping"] == "Pong"
        assert client.events == []


async def test_slow_client_is_dropped_and_the_replay_goes_on(connect: Any) -> None:
    async with FakePBX(["load_50"], speed=None, write_timeout=0.3, autoplay=False) as pbx:
        slow = await connect(pbx, SO_RCVBUF=4096)
        await slow.login()  # and then never reads again
        fast = await connect(pbx)
        await fast.login()
        pbx.start_replay()
        seen = await read_until_done(fast, pbx)
        assert sum(m.name == "Newchannel" for m in seen) == 176
        assert pbx.connections == 1
    with pytest.raises((EOFError, ConnectionError)):
        while True:
            await slow.next(timeout=5.0)


def test_queues_conf_templates_and_members() -> None:
    queues = {
        q.name: q
        for q in parse_queues_conf(
            "[general]\nautofill=yes\n[tpl](!)\nservicelevel = 30\nringinuse = no\n"
            "[q1](tpl)\nstrategy = linear\nmember => Local/a@x/n,2,Ann,Local/a@x\nmember => Local/b@x/n\n"
        )
    }
    assert set(queues) == {"q1"}
    q1 = queues["q1"]
    assert (q1.strategy, q1.servicelevel, q1.ringinuse) == ("linear", 30, False)
    assert [(m.interface, m.penalty, m.name, m.state_interface) for m in q1.members] == [
        ("Local/a@x/n", 2, "Ann", "Local/a@x"),
        ("Local/b@x/n", 0, "Local/b@x/n", "Local/b@x/n"),
    ]


async def test_event_filters_from_the_client_keep_varset_off_the_wire() -> None:
    """``AMIConfig.event_filters`` become AMI ``Filter`` actions after login; the fake PBX applies
    them as manager.c does (an include must match, no exclude may), so VarSet never arrives."""
    from cti.ami.client import AMIClient, AMIConfig

    async def received(filters: tuple[str, ...]) -> list[str]:
        async with FakePBX(["queue_answered"], speed=None, loop_scenarios=False) as pbx:
            pbx.pause_replay(at=0.001)
            names: list[str] = []
            config = AMIConfig(port=pbx.port, username="lab", secret="lab", event_filters=filters)
            client = AMIClient(config)
            client.add_listener(lambda m: names.append(m.name) if isinstance(m, Message) else None)
            await client.start()
            try:
                await asyncio.wait_for(client.wait_connected(), 5)
                assert await asyncio.wait_for(pbx.wait_paused(), 5)
                pbx.resume_replay()
                await asyncio.wait_for(pbx.replay_done(), 10)
                await client.send_action("Ping")
            finally:
                await client.stop()
            assert [a.get("Filter") for a in pbx.actions_named("Filter")] == list(filters)
            return names

    everything = await received(())
    assert everything.count("VarSet") > 50
    without = await received(("!Event: VarSet",))
    assert "VarSet" not in without
    assert [n for n in everything if n != "VarSet"] == without
    # A regex search over the event text, as in Asterisk: "Hangup" finds HangupRequest too. The
    # events of the login itself come before the filter exists.
    only = await received(("Event: (AgentCalled|Hangup)",))
    assert set(only) - {"SuccessfulAuth", "FullyBooted"} == {"AgentCalled", "Hangup", "HangupRequest"}
