"""The pop hub on a real aiohttp server on loopback, with real WebSocket clients."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from yarl import URL

from screenpop.hub import COOKIE_NAME, PopHub, _encode, _Encoded, hub_routes
from screenpop.sessions import AgentAccount, SessionStore, hash_password
from screenpop.tracker import RetractPop, RetractReason, ShowPop, UpdatePop, UpdateReason

ORIGIN = "http://agents.example"
PASSWORDS = {"1001": "alice-pw", "1002": "bob-pw", "1003": "carol-pw"}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Server:
    hub: PopHub
    sessions: SessionStore
    clock: Clock
    runner: web.AppRunner
    base: str
    clients: list[aiohttp.ClientSession] = field(default_factory=list)

    async def agent(self, agent_id: str) -> Agent:
        http = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
        self.clients.append(http)
        resp = await http.post(
            f"{self.base}/agent/login", json={"agent_id": agent_id, "password": PASSWORDS[agent_id]}
        )
        assert resp.status == 200, await resp.text()
        return Agent(self, agent_id, http)


@dataclass
class Agent:
    server: Server
    agent_id: str
    http: aiohttp.ClientSession

    async def connect(
        self, last_seq: int | None = None, epoch: str | None = None
    ) -> tuple[aiohttp.ClientWebSocketResponse, dict[str, Any]]:
        ws = await self.http.ws_connect(f"{self.server.base}/agent/ws", headers={"Origin": ORIGIN})
        await ws.send_json({"type": "hello", "last_seq": last_seq, "epoch": epoch})
        welcome = await receive(ws)
        assert welcome["type"] == "welcome"
        return ws, welcome


async def receive(ws: aiohttp.ClientWebSocketResponse, timeout: float = 5) -> dict[str, Any]:
    msg = await ws.receive(timeout=timeout)
    assert msg.type is aiohttp.WSMsgType.TEXT, msg
    data: dict[str, Any] = json.loads(msg.data)
    return data


async def receive_n(ws: aiohttp.ClientWebSocketResponse, n: int) -> list[dict[str, Any]]:
    return [await receive(ws) for _ in range(n)]


async def nothing_more(ws: aiohttp.ClientWebSocketResponse, wait: float = 0.2) -> None:
    with pytest.raises(asyncio.TimeoutError):
        msg = await ws.receive(timeout=wait)
        raise AssertionError(f"unexpected message {msg}")


async def start(hub: PopHub, sessions: SessionStore, clock: Clock) -> Server:
    app = web.Application()
    routes = hub_routes(hub, sessions, allowed_origins=[ORIGIN], hello_timeout=2, session_check=0.05)
    app.add_subapp("/agent/", routes)
    runner = web.AppRunner(app, shutdown_timeout=5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    return Server(hub, sessions, clock, runner, f"http://{host}:{port}")


def accounts() -> list[AgentAccount]:
    return [AgentAccount(a, f"Agent {a}", hash_password(pw, n=2**10)) for a, pw in PASSWORDS.items()]


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    clock = Clock()
    srv = await start(PopHub(), SessionStore(accounts(), ttl=3600, clock=clock), clock)
    yield srv
    for http in srv.clients:
        await http.close()
    await srv.runner.cleanup()


def show(agent: str, call: str, n: int = 1, **facts: Any) -> ShowPop:
    return ShowPop(f"{call}:{agent}:{n}", agent, call, {"caller_num": "+15551230000", **facts})


async def test_the_right_agent_gets_the_pop_and_no_one_else(server: Server) -> None:
    alice, bob = await server.agent("1001"), await server.agent("1002")
    ws_a, welcome = await alice.connect()
    ws_b, _ = await bob.connect()
    assert welcome == {"type": "welcome", "epoch": server.hub.epoch, "seq": 0, "live": []}
    await server.hub.publish(show("1001", "c1"), {"customer": {"name": "Ann"}})
    pop = await receive(ws_a)
    assert pop == {
        "type": "pop",
        "seq": 1,
        "pop_id": "c1:1001:1",
        "call_id": "c1",
        "facts": {"caller_num": "+15551230000"},
        "payload": {"customer": {"name": "Ann"}},
    }
    await nothing_more(ws_b)


async def test_two_tabs_of_one_agent_both_get_it(server: Server) -> None:
    alice = await server.agent("1001")
    tab1, _ = await alice.connect()
    tab2, _ = await alice.connect()
    assert server.hub.sockets("1001") == 2
    await server.hub.publish(show("1001", "c1"))
    await server.hub.publish(UpdatePop("c1:1001:1", "1001", {"state": "answered"}, UpdateReason.ANSWERED))
    for tab in (tab1, tab2):
        pop, update = await receive_n(tab, 2)
        assert (pop["type"], pop["seq"]) == ("pop", 1)
        assert update == {
            "type": "update",
            "seq": 2,
            "pop_id": "c1:1001:1",
            "reason": "answered",
            "facts": {"state": "answered"},
        }


async def test_an_update_carries_the_payload_only_when_it_changed(server: Server) -> None:
    hub = server.hub
    alice = await server.agent("1001")
    ws, _ = await alice.connect()
    await hub.publish(show("1001", "c1"), {"customer": None, "match": "unknown"})
    await hub.publish(UpdatePop("c1:1001:1", "1001", {"state": "answered"}, UpdateReason.ANSWERED))
    relinked = {"customer": {"id": "C1"}, "match": "unique"}
    await hub.publish(UpdatePop("c1:1001:1", "1001", {"state": "answered"}, UpdateReason.CUSTOMER), relinked)
    await hub.publish(UpdatePop("c1:1001:1", "1001", {"state": "held"}, UpdateReason.HELD))
    pop, answered, customer, held = await receive_n(ws, 4)
    assert pop["payload"] == {"customer": None, "match": "unknown"}
    assert "payload" not in answered and "payload" not in held
    assert customer["payload"] == relinked
    # A new tab gets the pop with the payload of its last assembly and the facts of its last update.
    tab, _ = await alice.connect()
    (replay,) = await receive_n(tab, 1)
    assert (replay["type"], replay["seq"], replay["replay"]) == ("pop", 4, True)
    assert replay["payload"] == relinked and replay["facts"] == {"state": "held"}


async def test_reconnect_replays_only_what_was_missed(server: Server) -> None:
    hub = server.hub
    alice = await server.agent("1001")
    ws, _ = await alice.connect()
    await hub.publish(show("1001", "c1"), {"customer": "Ann"})
    await hub.publish(show("1001", "c2"))
    seen = await receive_n(ws, 2)
    last_seq = seen[-1]["seq"]
    await ws.close()

    await hub.publish(show("1001", "c3"))  # 3: new while away
    await hub.publish(UpdatePop("c1:1001:1", "1001", {"held": True}, UpdateReason.HELD))  # 4
    await hub.publish(RetractPop("c2:1001:1", "1001", RetractReason.CALLER_HUNG_UP))  # 5
    await hub.publish(show("1002", "c9"))  # another agent's: not counted in 1001's seq

    ws, welcome = await alice.connect(last_seq=last_seq, epoch=welcome_epoch(hub))
    assert welcome["seq"] == 5
    assert welcome["live"] == ["c1:1001:1", "c3:1001:1"]
    replay = await receive_n(ws, 3)
    assert [(m["type"], m["seq"], m["pop_id"]) for m in replay] == [
        ("pop", 3, "c3:1001:1"),
        ("pop", 4, "c1:1001:1"),
        ("retract", 5, "c2:1001:1"),
    ]
    assert replay[1]["facts"] == {"held": True}
    assert replay[1]["payload"] == {"customer": "Ann"}
    assert replay[1]["replay"] is True
    await nothing_more(ws)

    # Then live again, numbering on.
    await hub.publish(show("1001", "c4"))
    assert (await receive(ws))["seq"] == 6

    # Up to date: nothing is replayed.
    ws2, welcome = await alice.connect(last_seq=6, epoch=hub.epoch)
    assert welcome["seq"] == 6
    await nothing_more(ws2)


def welcome_epoch(hub: PopHub) -> str:
    return hub.epoch


async def test_a_new_tab_gets_every_live_pop_and_not_retracted_ones(server: Server) -> None:
    hub = server.hub
    await hub.publish(show("1001", "c1"))
    await hub.publish(show("1001", "c2"))
    await hub.publish(show("1001", "c3"))
    await hub.publish(RetractPop("c2:1001:1", "1001", RetractReason.ANSWERED_ELSEWHERE))
    alice = await server.agent("1001")
    ws, welcome = await alice.connect()
    assert welcome["live"] == ["c1:1001:1", "c3:1001:1"]
    replay = await receive_n(ws, 2)
    assert [(m["type"], m["seq"], m["pop_id"]) for m in replay] == [
        ("pop", 1, "c1:1001:1"),
        ("pop", 3, "c3:1001:1"),
    ]
    await nothing_more(ws)

    # A last_seq from another hub instance (a restarted service) counts as a new tab.
    ws, _ = await alice.connect(last_seq=4, epoch="an-old-epoch")
    assert [m["pop_id"] for m in await receive_n(ws, 2)] == ["c1:1001:1", "c3:1001:1"]
    await nothing_more(ws)


async def test_forged_cookie_expired_session_and_wrong_origin_are_refused(server: Server) -> None:
    url = f"{server.base}/agent/ws"
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await http.ws_connect(url, headers={"Origin": ORIGIN})
        assert refused.value.status == 401
        http.cookie_jar.update_cookies({COOKIE_NAME: "forged-token"}, response_url=URL(url))
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await http.ws_connect(url, headers={"Origin": ORIGIN})
        assert refused.value.status == 401

    alice = await server.agent("1001")
    for headers in ({"Origin": "http://evil.example"}, {}):
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await alice.http.ws_connect(url, headers=headers)
        assert refused.value.status == 403

    server.clock.now += 3600
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await alice.http.ws_connect(url, headers={"Origin": ORIGIN})
    assert refused.value.status == 401


async def test_login_cookie_form_login_wrong_password_and_logout(server: Server) -> None:
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        login = f"{server.base}/agent/login"
        resp = await http.post(login, json={"agent_id": "1001", "password": "nope"})
        assert resp.status == 401
        resp = await http.post(login, json={"agent_id": "nobody", "password": "nope"})
        assert resp.status == 401
        resp = await http.post(login, json=["1001"])
        assert resp.status == 400
        resp = await http.post(login, data={"agent_id": "1002", "password": "bob-pw"})
        assert resp.status == 200
        cookie = resp.headers["Set-Cookie"]
        assert "HttpOnly" in cookie
        assert "SameSite=Strict" in cookie
        assert "Path=/agent/" in cookie
        resp = await http.post(
            login, json={"agent_id": "1002", "password": "bob-pw"}, headers={"Origin": "http://evil.example"}
        )
        assert resp.status == 403

        ws = await http.ws_connect(f"{server.base}/agent/ws", headers={"Origin": ORIGIN})
        await ws.close()
        resp = await http.post(f"{server.base}/agent/logout")
        assert resp.status == 200
        assert len(server.sessions) == 0


async def test_logged_out_session_is_refused(server: Server) -> None:
    alice = await server.agent("1001")
    token = next(c.value for c in alice.http.cookie_jar if c.key == COOKIE_NAME)
    assert server.sessions.agent_for(token) == "1001"
    await alice.http.post(f"{server.base}/agent/logout")
    assert server.sessions.agent_for(token) is None
    alice.http.cookie_jar.update_cookies({COOKIE_NAME: token}, response_url=URL(server.base + "/agent/"))
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await alice.http.ws_connect(f"{server.base}/agent/ws", headers={"Origin": ORIGIN})
    assert refused.value.status == 401


async def test_acks_give_latency_stats(server: Server) -> None:
    hub = server.hub
    alice = await server.agent("1001")
    ws, _ = await alice.connect()
    t0 = time.time() - 0.05
    await hub.publish(show("1001", "c1"), t0=t0)
    await hub.publish(show("1001", "c2"), t0=time.time())
    await hub.publish(show("1001", "c3"), t0=time.time())
    await hub.publish(RetractPop("c3:1001:1", "1001", RetractReason.RING_NO_ANSWER))
    assert hub.latency().unacked == 2
    pop = await receive(ws)
    await ws.send_json({"type": "ack", "pop_id": pop["pop_id"]})
    await ws.send_json({"type": "ack", "pop_id": pop["pop_id"]})  # a second ack counts once
    await ws.send_json({"type": "ack", "pop_id": "c9:1002:1"})  # not this agent's
    async with asyncio.timeout(5):
        while hub.latency().count < 1:
            await asyncio.sleep(0.01)
    stats = hub.latency()
    assert stats.count == 1
    assert stats.p50 is not None and stats.p99 is not None and stats.max is not None
    assert 0.05 <= stats.p50 == stats.p99 == stats.max < 5
    assert stats.unacked == 1
    assert stats.retracted_unacked == 1

    await ws.send_json({"type": "ack", "pop_id": "c2:1001:1"})
    async with asyncio.timeout(5):
        while hub.latency().count < 2:
            await asyncio.sleep(0.01)
    stats = hub.latency()
    assert stats.max is not None and stats.max >= 0.05
    assert stats.p50 is not None and stats.p50 < 0.05
    assert stats.unacked == 0


async def test_a_socket_that_never_reads_is_dropped_without_delaying_others(unit: float) -> None:
    clock = Clock()
    hub = PopHub(max_queue=16, close_timeout=2)
    server = await start(hub, SessionStore(accounts(), clock=clock), clock)
    try:
        slow_agent, fast_agent = await server.agent("1001"), await server.agent("1002")
        slow, _ = await slow_agent.connect()  # then never reads
        fast, _ = await fast_agent.connect()
        arrivals: list[tuple[int, float]] = []

        async def read_fast() -> None:
            async for msg in fast:
                data = json.loads(msg.data)
                arrivals.append((data["seq"], time.monotonic()))

        big = {"notes": "x" * 64 * 1024}
        sent: dict[int, float] = {}
        dropped_at = 0
        async with asyncio.TaskGroup() as tg:
            reader = tg.create_task(read_fast())
            for i in range(1, 401):
                await hub.publish(show("1001", f"big{i}"), big)
                if i % 10 == 0:
                    seq = i // 10
                    sent[seq] = time.monotonic()
                    await hub.publish(show("1002", f"c{seq}"))
                await asyncio.sleep(0)
                if hub.dropped and not dropped_at:
                    dropped_at = i
            async with asyncio.timeout(5 * unit):
                while len(arrivals) < len(sent):
                    await asyncio.sleep(0.01)
            reader.cancel()

        assert hub.dropped == 1
        # Dropped once its 16-message queue was full, behind the kernel's and aiohttp's buffers:
        # the fast agent got pops both while the slow socket was stuck and after it was dropped.
        assert 16 < dropped_at < 400
        assert hub.sockets("1001") == 0
        assert hub.sockets("1002") == 1
        delays = [t - sent[seq] for seq, t in arrivals]
        assert [seq for seq, _ in arrivals] == list(range(1, 41))
        # Each of the fast agent's pops went out while the slow socket's buffers were full.
        assert max(delays) < 0.5 * unit, delays

        # The slow client, reading at last, finds the reason it was dropped, then reconnects and
        # gets every live pop again.
        async with asyncio.timeout(5):
            while (msg := await slow.receive()).type is aiohttp.WSMsgType.TEXT:
                pass
        assert msg.type is aiohttp.WSMsgType.CLOSE
        assert slow.close_code == aiohttp.WSCloseCode.TRY_AGAIN_LATER
        assert msg.extra is not None and "reconnect" in msg.extra
        slow, welcome = await slow_agent.connect(last_seq=3, epoch=hub.epoch)
        assert welcome["seq"] == 400
        assert len(await receive_n(slow, 397)) == 397
    finally:
        for http in server.clients:
            await http.close()
        await server.runner.cleanup()


async def test_shutdown_closes_sockets_going_away(unit: float) -> None:
    clock = Clock()
    hub = PopHub()
    server = await start(hub, SessionStore(accounts(), clock=clock), clock)
    try:
        alice = await server.agent("1001")
        ws, _ = await alice.connect()
        pending = await alice.http.ws_connect(f"{server.base}/agent/ws", headers={"Origin": ORIGIN})
        started = time.monotonic()
        await server.runner.cleanup()
        assert time.monotonic() - started < 3 * unit
        for sock in (ws, pending):
            msg = await sock.receive(timeout=5)
            assert msg.type is aiohttp.WSMsgType.CLOSE
            assert (msg.data, msg.extra) == (aiohttp.WSCloseCode.GOING_AWAY, "server shutdown")
    finally:
        for http in server.clients:
            await http.close()


async def test_a_socket_must_say_hello_first(server: Server) -> None:
    alice = await server.agent("1001")
    ws = await alice.http.ws_connect(f"{server.base}/agent/ws", headers={"Origin": ORIGIN})
    await ws.send_json({"type": "ack", "pop_id": "x"})
    msg = await ws.receive(timeout=5)
    assert msg.type is aiohttp.WSMsgType.CLOSE
    assert ws.close_code == aiohttp.WSCloseCode.POLICY_VIOLATION


async def test_logout_and_expiry_close_that_sessions_sockets(server: Server) -> None:
    alice, alice_phone, bob = (
        await server.agent("1001"),
        await server.agent("1001"),
        await server.agent("1002"),
    )
    ws, _ = await alice.connect()
    other, _ = await alice_phone.connect()
    await alice.http.post(f"{server.base}/agent/logout")
    msg = await ws.receive(timeout=5)
    assert (msg.type, msg.data, msg.extra) == (
        aiohttp.WSMsgType.CLOSE,
        aiohttp.WSCloseCode.POLICY_VIOLATION,
        "session ended",
    )
    # The agent's other session stays.
    await server.hub.publish(show("1001", "c1"))
    assert (await receive(other))["pop_id"] == "c1:1001:1"

    ws_b, _ = await bob.connect()
    server.clock.now += 3600
    for sock in (other, ws_b):
        msg = await sock.receive(timeout=5)
        assert (msg.type, msg.extra) == (aiohttp.WSMsgType.CLOSE, "session ended")
    assert server.hub.sockets("1001") == server.hub.sockets("1002") == 0


async def test_a_forgotten_retract_still_leaves_the_live_list_right() -> None:
    clock = Clock()
    hub = PopHub(max_retracts=1)
    server = await start(hub, SessionStore(accounts(), clock=clock), clock)
    try:
        alice = await server.agent("1001")
        ws, _ = await alice.connect()
        for call in ("c1", "c2", "c3"):
            await hub.publish(show("1001", call))
        assert len(await receive_n(ws, 3)) == 3
        await ws.close()
        await hub.publish(RetractPop("c1:1001:1", "1001", RetractReason.CALLER_HUNG_UP))
        await hub.publish(RetractPop("c2:1001:1", "1001", RetractReason.CALLER_HUNG_UP))
        ws, welcome = await alice.connect(last_seq=3, epoch=hub.epoch)
        # Only the last retract is remembered, but ``live`` tells the page to drop c1 as well.
        assert welcome["live"] == ["c3:1001:1"]
        assert [(m["type"], m["pop_id"]) for m in await receive_n(ws, 1)] == [("retract", "c2:1001:1")]
        await nothing_more(ws)
    finally:
        for http in server.clients:
            await http.close()
        await server.runner.cleanup()


async def test_concurrent_logins_keep_the_store_consistent(server: Server) -> None:
    async def log_in(agent_id: str) -> None:
        async with aiohttp.ClientSession() as http:
            resp = await http.post(
                f"{server.base}/agent/login", json={"agent_id": agent_id, "password": PASSWORDS[agent_id]}
            )
            assert resp.status == 200

    async def look_up() -> None:
        for _ in range(200):
            server.sessions.agent_for("nothing")
            len(server.sessions)
            await asyncio.sleep(0)

    async with asyncio.TaskGroup() as tg:
        for i in range(30):
            tg.create_task(log_in(f"100{1 + i % 3}"))
        tg.create_task(look_up())
    assert len(server.sessions) == 30


def test_an_encoded_payload_is_spliced_into_the_message_as_json_would_write_it() -> None:
    """Rule 3: the hub keeps a live pop's payload encoded; what it sends parses to the message."""
    payloads: list[dict[str, Any]] = [
        {},
        {"customer": {"name": 'Müller "Jo" \\ <b>', "ids": [1, 2.5, None, True]}, "match": "unique"},
        {"nested": {"a": {"b": [{"c": "\u2022"}]}}, "empty": [], "text": "}{,:"},
    ]
    for payload in payloads:
        message = {"type": "pop", "seq": 3, "pop_id": "p", "facts": {"x": 1}, "payload": payload}
        encoded = message | {"payload": _Encoded(json.dumps(payload))}
        assert json.loads(_encode(encoded)) == message
        assert json.loads(_encode(encoded | {"replay": True})) == message | {"replay": True}
    assert _encode({"type": "retract", "seq": 4}) == json.dumps({"type": "retract", "seq": 4})
