"""The asyncio AMI client against loopback peers that misbehave at the byte level.

The peer here is a small TCP server driven by each test (the seam is the byte stream): it logs the
client in like Asterisk does, then cuts the link mid-message, sends garbage or a 1 MB line,
ignores pings, or refuses the login. The replaying fake PBX and the real Asterisk are used in
``tests/callbridge`` and ``tests/lab``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable

import pytest

from cti.ami import Message
from cti.ami.client import (
    AMIClient,
    AMIConfig,
    AuthenticationFailed,
    Connected,
    ConnectionLost,
    Disconnected,
    LoginFailed,
    NotConnected,
)
from tests.ami_peer import SECRET, Peer, peer_server


def config(port: int, **kw: object) -> AMIConfig:
    base = AMIConfig(
        host="127.0.0.1",
        port=port,
        username="cb",
        secret=SECRET,
        auth="md5",
        backoff_initial=0.01,
        backoff_max=0.05,
        ping_interval=0,
        action_timeout=2.0,
    )
    return dataclasses.replace(base, **kw)  # type: ignore[arg-type]


def recorder(client: AMIClient) -> list[object]:
    items: list[object] = []
    client.add_listener(items.append)
    return items


async def wait_for(predicate: Callable[[], bool], timeout: float = 3.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.01)


async def serve_until_closed(peer: Peer) -> None:
    while True:
        action = await peer.action()
        if action.name == "Ping":
            peer.reply(action, "Ping: Pong")


async def test_md5_login_and_events_in_order() -> None:
    async def handler(peer: Peer) -> None:
        assert await peer.login()
        # two events in one write: the client must deliver both, in order
        peer.send(
            b"Event: Newchannel\r\nUniqueid: 1.0\r\n\r\nEvent: Hangup\r\nUniqueid: 1.0\r\nCause: 16\r\n\r\n"
        )
        await serve_until_closed(peer)

    async with peer_server(handler) as (port, peers), AMIClient(config(port)) as client:
        items = recorder(client)
        async with asyncio.timeout(3):
            await client.wait_connected()
        await wait_for(lambda: len([i for i in items if isinstance(i, Message)]) >= 3)
        names = [i.name if isinstance(i, Message) else type(i).__name__ for i in items]
        # Connected first: events that came with the login response are delivered after it
        assert names == ["Connected", "FullyBooted", "Newchannel", "Hangup"]
        result = await client.send_action("Ping")
        assert result.ok and result.response["Ping"] == "Pong"
        assert [a.name for a in peers[0].seen] == ["Challenge", "Login", "Ping"]


async def test_plain_login_refused_stops_with_a_clear_error(caplog: pytest.LogCaptureFixture) -> None:
    async def handler(peer: Peer) -> None:
        assert not await peer.login(secret="another")

    caplog.set_level(logging.DEBUG)
    async with peer_server(handler) as (port, _):
        client = AMIClient(config(port, auth="plain", stop_on_auth_failure=True))
        items = recorder(client)
        async with client:
            with pytest.raises(AuthenticationFailed, match="Authentication failed"):
                async with asyncio.timeout(3):
                    await client.wait_connected()
    assert [type(i) for i in items] == [LoginFailed]
    assert "login to 127.0.0.1" in caplog.text and "refused" in caplog.text
    assert SECRET not in caplog.text  # the wire log at DEBUG redacts it
    assert "Secret: ********" in caplog.text


async def test_refused_login_is_retried_when_the_service_keeps_going() -> None:
    attempts = 0

    async def handler(peer: Peer) -> None:
        nonlocal attempts
        attempts += 1
        if attempts < 3:
            await peer.login(secret="wrong-for-now")
            return
        assert await peer.login()
        await serve_until_closed(peer)

    async with peer_server(handler) as (port, _), AMIClient(config(port)) as client:
        items = recorder(client)
        async with asyncio.timeout(5):
            await client.wait_connected()
        assert attempts == 3
        assert [type(i) for i in items if not isinstance(i, Message)] == [LoginFailed, LoginFailed, Connected]


async def test_link_cut_mid_message_fails_in_flight_action_and_never_resends_it() -> None:
    sessions: list[list[str]] = []

    async def handler(peer: Peer) -> None:
        assert await peer.login()
        seen: list[str] = []
        sessions.append(seen)
        while True:
            action = await peer.action()
            seen.append(action.name)
            if action.name == "Originate" and len(sessions) == 1:
                # half an event, then the PBX goes away without answering the Originate
                peer.send(b"Event: Newchannel\r\nChannel: Local/pstn@cal")
                await peer.writer.drain()
                peer.writer.transport.abort()
                return
            peer.reply(action, "Message: ok")

    async with peer_server(handler) as (port, _), AMIClient(config(port)) as client:
        items = recorder(client)
        async with asyncio.timeout(3):
            await client.wait_connected()
        with pytest.raises(ConnectionLost, match="not re-sent"):
            await client.send_action("Originate", {"Channel": "Local/+14155550142@customers", "Exten": "s"})
        await wait_for(lambda: client.session == 2 and client.connected)
        assert (await client.send_action("Ping")).ok
        disconnected = [i for i in items if isinstance(i, Disconnected)]
        assert len(disconnected) == 1 and disconnected[0].failed_actions
        # the half message was dropped with the old connection, not glued to the new stream
        assert not any(isinstance(i, Message) and "Local/pstn@cal" in i.text for i in items)
    assert sessions[0] == ["Originate"]
    assert "Originate" not in sessions[1]


async def test_garbage_and_a_1mb_line_are_skipped_and_the_stream_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def handler(peer: Peer) -> None:
        assert await peer.login()
        peer.send(b"\x00\xff\xfegarbage without structure\r\n\r\n")
        peer.send(b"Event: Big\r\nData: " + b"x" * (1024 * 1024))
        peer.send(b"\r\n\r\nEvent: AfterBig\r\nUniqueid: 2.0\r\n\r\n")
        await serve_until_closed(peer)

    caplog.set_level(logging.WARNING)
    async with peer_server(handler) as (port, _), AMIClient(config(port)) as client:
        items = recorder(client)
        async with asyncio.timeout(3):
            await client.wait_connected()
        await wait_for(lambda: any(isinstance(i, Message) and i.name == "AfterBig" for i in items))
        assert (await client.send_action("Ping")).ok
        assert client.session == 1  # the same link survived
        names = [i.name for i in items if isinstance(i, Message)]
        assert "Big" not in names
    assert "not an AMI message" in caplog.text
    assert "without a message end" in caplog.text


async def test_keepalive_drops_a_link_that_stops_answering() -> None:
    async def handler(peer: Peer) -> None:
        assert await peer.login()
        while True:
            await peer.action()  # swallow pings without answering

    async with peer_server(handler) as (port, _):
        client = AMIClient(config(port, ping_interval=0.05, ping_timeout=0.1))
        items = recorder(client)
        async with client:
            await wait_for(lambda: any(isinstance(i, Disconnected) for i in items))
            reason = next(i for i in items if isinstance(i, Disconnected)).reason
            assert "no Pong within 0.1s" in reason
            await wait_for(lambda: client.session >= 2)


async def test_slow_listener_does_not_lose_events() -> None:
    """A listener is called on the reader task; a slow one delays reads but loses nothing."""
    count = 2000

    async def handler(peer: Peer) -> None:
        assert await peer.login()
        peer.send(b"".join(f"Event: Tick\r\nN: {n}\r\n\r\n".encode() for n in range(count)))
        await serve_until_closed(peer)

    async with peer_server(handler) as (port, _), AMIClient(config(port)) as client:
        seen: list[int] = []

        def slow(item: object) -> None:
            if isinstance(item, Message) and item.name == "Tick":
                seen.append(int(item["N"]))
                sum(range(2000))

        client.add_listener(slow)
        await wait_for(lambda: len(seen) == count, timeout=10)
        assert seen == list(range(count))


async def test_send_without_a_link_fails_at_once() -> None:
    client = AMIClient(config(1))
    with pytest.raises(NotConnected):
        await client.send_action("Originate", {"Channel": "Local/1@x"})
