"""The service as ``callbridge serve`` runs it, fed over real TCP by the fake PBX replaying captures."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from pathlib import Path
from typing import Any

import pytest

from callbridge.cli import main
from callbridge.fakepbx import FakePBX
from callbridge.service import Service
from callbridge.settings import Settings, load_settings
from cti.asterisk import PBXDisconnected, PBXResynced
from cti.model import GONE_AFTER_RESYNC, CallChanged, CallState
from tests.support import until

ROOT = Path(__file__).resolve().parents[2]
SECRET = "s3cr3t-never-logged"


def settings_for(pbx: FakePBX, **ami: Any) -> Settings:
    base = load_settings(ROOT / "config" / "callbridge.yaml", environ={})
    config = dataclasses.replace(
        base.ami, host="127.0.0.1", port=pbx.port, username="lab", secret=SECRET,
        backoff_initial=0.05, backoff_max=0.2, **ami,
    )  # fmt: skip
    return dataclasses.replace(base, ami=config)


def states_of(events: list[Any], call_id: str) -> list[str]:
    """The distinct successive states a call went through, as published."""
    states: list[str] = []
    for event in events:
        if isinstance(event, CallChanged) and event.call.id == call_id:
            state = event.call.state.value
            if not states or states[-1] != state:
                states.append(state)
    return states


async def test_a_replayed_queue_call_goes_through_the_service_to_the_bus() -> None:
    async with FakePBX(["queue_answered"], speed=None, secret=SECRET) as pbx:
        service = Service(settings_for(pbx), web=False)
        sub = service.bus.subscribe(name="test")
        async with service:
            taken = await until(sub, lambda e: isinstance(e, CallChanged) and e.call.state is CallState.ENDED)
    ended = taken[-1].call
    assert (ended.caller_num, ended.caller_name, ended.queue, ended.agent) == (
        "+14155550123", "Jane Doe", "support", "agent1",
    )  # fmt: skip
    assert ended.hangup_cause == 16 and ended.wait_time == 2
    assert states_of(taken, ended.id)[-4:] == ["queued", "ringing", "connected", "ended"]
    assert service.model.live_calls() == []


async def test_pbx_restart_mid_call_reconnects_resyncs_and_ends_the_ghost_call() -> None:
    async with FakePBX(["queue_answered"], speed=20.0, secret=SECRET) as pbx:
        pbx.pause_replay(at=3.0)  # Jane Doe is talking to Alice from 2.0 s to 5.5 s
        service = Service(settings_for(pbx), web=False)
        sub = service.bus.subscribe(name="test")
        async with service:
            assert await asyncio.wait_for(pbx.wait_paused(), 10)
            await until(sub, lambda e: isinstance(e, CallChanged) and e.call.state is CallState.CONNECTED)
            (live,) = service.model.live_calls()
            assert live.agent == "agent1"
            await pbx.restart()
            taken = await until(sub, lambda e: isinstance(e, PBXResynced) and e.session == 2)
            assert service.model.live_calls() == []
    disconnected = [e for e in taken if isinstance(e, PBXDisconnected)]
    assert len(disconnected) == 1
    ghost = [e.call for e in taken if isinstance(e, CallChanged) and e.call.id == live.id]
    assert ghost[-1].state is CallState.ENDED and ghost[-1].end_reason == GONE_AFTER_RESYNC
    assert taken[-1].ended_calls == 1 and taken[-1].calls == 0
    agent = service.model.agent("agent1")
    assert agent is not None and agent.status.value == "ready"


async def test_the_secret_never_reaches_the_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    async with FakePBX(["queue_abandon"], speed=None, secret=SECRET) as pbx:
        for auth in ("plain", "md5"):
            service = Service(settings_for(pbx, auth=auth), web=False)
            sub = service.bus.subscribe(PBXResynced, name="test")
            async with service:
                await until(sub, lambda e: True)
    assert "Secret: ********" in caplog.text  # the wire log was on and saw the plain login
    assert SECRET not in caplog.text
    assert SECRET not in repr(settings_for(pbx))


def test_demo_command_shows_calls_moving_through_queues_to_agents(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code = main(["demo", "--fast", "--once", "--scenario", "queue_ring_noanswer_then_answer",
                 "--scenario", "queue_abandon", "--port", "0", "--database", str(tmp_path / "demo.db"),
                 "--customers", "100"])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0
    lines = out.splitlines()
    john = [line for line in lines if "4155550123 John Smith" in line]
    assert any("queued" in line and "queue=sales" in line for line in john)
    assert any("ringing" in line and "agent=noanswer" in line for line in john)
    assert any("connected" in line and "agent=agent2" in line for line in john)
    assert any("ended" in line and "cause=16 (Normal Clearing)" in line for line in john)
    maria = [line for line in lines if "Maria Garcia" in line]
    assert any("[abandoned]" in line and "queue=billing" in line for line in maria)
    assert any("agent agent5 (Eve)  paused (Lunch break)" in line for line in lines)
    assert lines[-1].endswith("demo over: 0 live calls left")


async def test_garbage_and_a_1mb_line_mid_call_leave_the_model_right(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Bad bytes between two real events: logged with what and where, dropped, the call still
    ends as it did on the real PBX."""
    caplog.set_level(logging.WARNING)
    async with FakePBX(["queue_answered"], speed=20.0, secret=SECRET) as pbx:
        pbx.pause_replay(at=3.0)
        service = Service(settings_for(pbx), web=False)
        sub = service.bus.subscribe(CallChanged, name="test")
        async with service:
            assert await asyncio.wait_for(pbx.wait_paused(), 10)
            await pbx.send_raw(b"\x00\x01garbage\xff\r\n\r\n")
            await pbx.send_raw(b"Event: Huge\r\nData: " + b"A" * (1024 * 1024) + b"\r\n\r\n")
            pbx.resume_replay()
            taken = await until(sub, lambda e: e.call.state is CallState.ENDED)
            assert service.client.session == 1  # the link was never dropped
    ended = taken[-1].call
    assert (ended.agent, ended.queue, ended.hangup_cause) == ("agent1", "support", 16)
    assert "not an AMI message: the first line is not Event/Response/Action" in caplog.text
    assert "without a message end (limit 262144); discarding up to the next blank line" in caplog.text


async def test_a_start_that_fails_stops_what_it_started(tmp_path: Path) -> None:
    """The HTTP port is taken: start raises, and the customer store it had opened is closed again
    (its worker thread would keep the process from exiting)."""
    import socket
    import threading

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        base = load_settings(ROOT / "config" / "callbridge.yaml", environ={})
        settings = dataclasses.replace(
            base,
            customers=dataclasses.replace(base.customers, database=str(tmp_path / "customers.db")),
            http=dataclasses.replace(base.http, port=taken.getsockname()[1]),
        )
        before = set(threading.enumerate())
        service = Service(settings)
        with pytest.raises(OSError):
            await service.start()
        assert service.store is None and service.pops is None and service.wrapup is None
        await asyncio.sleep(0.1)
        assert not [t for t in set(threading.enumerate()) - before if t.is_alive() and not t.daemon]
    finally:
        taken.close()


async def test_behind_a_proxy_the_public_origin_is_accepted_and_the_cookie_is_secure(tmp_path: Path) -> None:
    """``http.public_origins`` and ``http.secure_cookie``: what agents reach through a TLS proxy."""
    import aiohttp

    from screenpop import hash_password

    base = load_settings(
        ROOT / "config" / "callbridge.yaml",
        environ={
            "CALLBRIDGE_HTTP_PUBLIC_ORIGINS": "https://cti.example.com",
            "CALLBRIDGE_HTTP_SECURE_COOKIE": "true",
        },
    )
    assert base.http.public_origins == ("https://cti.example.com",) and base.http.secure_cookie
    agents = tuple(
        dataclasses.replace(a, password_hash=hash_password("pw-alice-1", n=2**10)) for a in base.agents[:1]
    )
    settings = dataclasses.replace(
        base,
        agents=agents,
        agents_file="",
        ami=dataclasses.replace(base.ami, port=1, backoff_initial=30),
        customers=dataclasses.replace(base.customers, database=str(tmp_path / "customers.db")),
        http=dataclasses.replace(base.http, port=0),
    )
    async with Service(settings) as service:
        origin = f"http://127.0.0.1:{service.http_port}"
        async with aiohttp.ClientSession(origin, cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
            async with http.post(
                "/agent/login",
                json={"agent_id": "agent1", "password": "pw-alice-1"},
                headers={"Origin": "https://cti.example.com"},
            ) as r:
                assert r.status == 200
                assert "Secure" in r.headers["Set-Cookie"] and "HttpOnly" in r.headers["Set-Cookie"]
                token = r.cookies["callbridge_agent"].value
            cookie = {"Cookie": f"callbridge_agent={token}"}
            async with http.ws_connect(
                "/agent/ws", headers={"Origin": "https://cti.example.com", **cookie}
            ) as ws:
                await ws.send_json({"type": "hello", "last_seq": None, "epoch": None})
                assert (await ws.receive_json())["type"] == "welcome"
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await http.ws_connect("/agent/ws", headers={"Origin": "https://evil.example", **cookie})
            assert refused.value.status == 403
