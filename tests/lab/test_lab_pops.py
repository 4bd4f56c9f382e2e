"""Screen-pops against the real Asterisk 22: a call originated into a queue pops at the agent whose
device rings, and only there; it is retracted when another agent answers or the caller hangs up;
a caller who came through the IVR (a FastAGI script served here) pops with what they keyed in."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from callbridge.service import Service
from callbridge.settings import load_settings
from cti.asterisk import PBXResynced
from customers.sqlite_store import SQLiteStore
from screenpop import hash_password
from tests.cti.model.record_ivr_queue import COMMANDS

ROOT = Path(__file__).resolve().parents[2]
PASSWORDS = {
    "agent1": "alice-pw-0001",
    "agent2": "bob-pw-0002",
    "noanswer": "nora-pw-0003",
    "agent5": "eve-pw-0005",
}

pytestmark = pytest.mark.lab


@pytest.fixture
async def pages(
    lab: Any, tmp_path: Path
) -> AsyncIterator[tuple[Service, dict[str, aiohttp.ClientWebSocketResponse]]]:
    """The service on the lab Asterisk, and one logged-in agent page (WebSocket) per agent."""
    lab.wait_idle()
    db = tmp_path / "customers.db"
    async with SQLiteStore(db) as store:
        await store.create_customer("Jane Doe", identities=[("phone", "+1 415 555 0123")])
    base = load_settings(ROOT / "config" / "callbridge.yaml", environ={})
    agents = tuple(
        dataclasses.replace(a, password_hash=hash_password(PASSWORDS[a.id])) if a.id in PASSWORDS else a
        for a in base.agents
    )
    settings = dataclasses.replace(
        base,
        agents=agents,
        ami=lab.ami_config(),
        customers=dataclasses.replace(base.customers, database=str(db)),
        http=dataclasses.replace(base.http, port=0),
    )
    service = Service(settings)
    ready = service.bus.subscribe(PBXResynced)
    async with service:
        async with asyncio.timeout(15):
            await ready.get()
        origin = f"http://127.0.0.1:{service.http_port}"
        sessions, sockets = [], {}
        try:
            for agent_id, password in PASSWORDS.items():
                http = aiohttp.ClientSession(origin, cookie_jar=aiohttp.CookieJar(unsafe=True))
                sessions.append(http)
                async with http.post("/agent/login", json={"agent_id": agent_id, "password": password}) as r:
                    assert r.status == 200
                ws = await http.ws_connect("/agent/ws", headers={"Origin": origin})
                await ws.send_json({"type": "hello", "last_seq": None, "epoch": None})
                assert (await ws.receive_json(timeout=5))["type"] == "welcome"
                sockets[agent_id] = ws
            yield service, sockets
        finally:
            for ws in sockets.values():
                await ws.close()
            for http in sessions:
                await http.close()
    lab.wait_idle()


async def receive(ws: aiohttp.ClientWebSocketResponse, kind: str, timeout: float = 20) -> dict[str, Any]:
    async with asyncio.timeout(timeout):
        while True:
            message: dict[str, Any] = await ws.receive_json()
            if message["type"] == kind:
                return message


async def originate(service: Service, exten: str, caller: str, hold: int) -> None:
    result = await service.client.send_action(
        "Originate",
        {
            "Channel": "Local/pstn@callers",
            "Context": "from-pstn",
            "Exten": exten,
            "Priority": "1",
            "CallerID": caller,
            "Variable": f"CALLER_HOLD={hold}",
            "Async": "true",
        },
    )
    assert result.ok, result.message


async def test_a_support_call_pops_at_the_ringing_agent_only(
    pages: tuple[Service, dict[str, aiohttp.ClientWebSocketResponse]],
) -> None:
    service, sockets = pages
    await originate(service, "8005550100", '"Jane Doe" <+14155550123>', hold=5)
    first = await asyncio.wait(
        [asyncio.ensure_future(receive(sockets[a], "pop")) for a in ("agent1", "agent2")],
        return_when=asyncio.FIRST_COMPLETED,
    )
    done, pending = first
    pop = done.pop().result()
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    rung = pop["payload"]["agent_id"]
    other = "agent2" if rung == "agent1" else "agent1"
    assert pop["payload"]["customer"]["display_name"] == "Jane Doe"
    assert pop["facts"]["queue"] == "support"
    assert (await receive(sockets[rung], "update"))["reason"] == "answered"
    assert (await receive(sockets[rung], "retract"))["reason"] == "call_ended"
    with pytest.raises(TimeoutError):
        await sockets[other].receive(timeout=0.5)
    with pytest.raises(TimeoutError):
        await sockets["noanswer"].receive(timeout=0.1)


async def test_the_pop_is_retracted_when_the_caller_hangs_up_while_it_rings(
    pages: tuple[Service, dict[str, aiohttp.ClientWebSocketResponse]],
) -> None:
    """sales rings Nora first (linear, she never answers); the caller gives up after 3 s."""
    service, sockets = pages
    await originate(service, "8005550101", '"Maria Garcia" <+12125550147>', hold=3)
    pop = await receive(sockets["noanswer"], "pop")
    assert pop["payload"]["match"] == "unknown"  # Maria's number is not in the store
    assert [a["action"] for a in pop["payload"]["actions"]] == ["create_customer", "link_number"]
    retract = await receive(sockets["noanswer"], "retract")
    assert retract["pop_id"] == pop["pop_id"] and retract["reason"] == "caller_hung_up"
    with pytest.raises(TimeoutError):
        await sockets["agent2"].receive(timeout=0.3)


async def test_a_ringall_pop_is_retracted_at_the_agent_who_did_not_answer(
    pages: tuple[Service, dict[str, aiohttp.ClientWebSocketResponse]],
) -> None:
    """billing rings all its members: Eve (agent5) and, added for this test, Alice. Both pop;
    the one who answers first gets ``answered``, the other's pop goes with ``answered_elsewhere``."""
    service, sockets = pages
    member = {"Queue": "billing", "Interface": "Local/agent1@agents/n"}
    added = await service.client.send_action(
        "QueueAdd", member | {"MemberName": "Alice Agent", "StateInterface": "Local/agent1@agents"}
    )
    assert added.ok, added.message
    try:
        await originate(service, "8005550102", '"Jane Doe" <+14155550123>', hold=6)
        alice, eve = await asyncio.gather(
            receive(sockets["agent1"], "pop"), receive(sockets["agent5"], "pop")
        )
        assert alice["call_id"] == eve["call_id"] and alice["facts"]["queue"] == "billing"
        assert alice["payload"]["customer"]["display_name"] == "Jane Doe"

        async def outcome(agent: str) -> dict[str, Any]:
            async with asyncio.timeout(20):
                while True:
                    message: dict[str, Any] = await sockets[agent].receive_json()
                    if message["type"] in ("retract", "update"):
                        return message

        outcomes = await asyncio.gather(outcome("agent1"), outcome("agent5"))
        results = dict(zip(("agent1", "agent5"), outcomes, strict=True))
        kinds = sorted((m["type"], m.get("reason")) for m in results.values())
        assert kinds == [("retract", "answered_elsewhere"), ("update", "answered")], results
        loser = next(a for a, m in results.items() if m["type"] == "retract")
        assert results[loser]["pop_id"] == (alice if loser == "agent1" else eve)["pop_id"]
    finally:
        removed = await service.client.send_action("QueueRemove", member)
        assert removed.ok, removed.message


class IvrScript:
    """The lab's FastAGI IVR (``[ivr]`` runs ``AGI(agi://127.0.0.1:4573/ivr?lang=en)``): asks for a
    menu choice and an account number, sets the account, then queues the caller on ``support``."""

    def __init__(self) -> None:
        self.replies: list[str] = []
        self.done = asyncio.Event()

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while (await reader.readline()).strip():
                pass  # the agi_ environment block
            for command in COMMANDS:
                writer.write(f"{command}\n".encode())
                await writer.drain()
                reply = (await reader.readline()).decode().strip()
                self.replies.append(reply)
                if not reply.startswith("200"):
                    break
        finally:
            self.done.set()
            writer.close()


async def test_an_ivr_caller_pops_with_what_they_keyed_in(
    pages: tuple[Service, dict[str, aiohttp.ClientWebSocketResponse]],
) -> None:
    """The lab's IVR handset keys ``2``, then ``4155`` (and ``#`` later, once queued): the pop
    at the agent shows ``24155`` and the IVR's steps, and the queue and customer as usual."""
    service, sockets = pages
    script = IvrScript()
    server = await asyncio.start_server(script.serve, "127.0.0.1", 4573)
    try:
        result = await service.client.send_action(
            "Originate",
            {
                "Channel": "Local/pstn@callers-ivr",
                "Context": "ivr",
                "Exten": "s",
                "Priority": "1",
                "CallerID": '"Jane Doe" <+14155550123>',
                "Async": "true",
            },
        )
        assert result.ok, result.message
        first = [asyncio.ensure_future(receive(sockets[a], "pop", timeout=30)) for a in ("agent1", "agent2")]
        done, pending = await asyncio.wait(first, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        pop = done.pop().result()
        ivr = pop["facts"]["ivr"]
        assert script.replies[2:4] == ["200 result=2", "200 result=4155"], script.replies
        assert ivr["digits"] == "24155", ivr
        assert ivr["steps"] == [
            "GET DATA beep 6000 1",
            "GET DATA beep 4000 4",
            "SET VARIABLE IVR_ACCOUNT 4155",
            "EXEC Queue support,,,,60",
        ]
        assert ivr["script"] == "agi://127.0.0.1:4573/ivr?lang=en" and ivr["left_at"] is not None
        assert pop["facts"]["queue"] == "support"
        assert pop["payload"]["customer"]["display_name"] == "Jane Doe"
        # The handset would stay 15 s more: hang it up, and the AGI session ends with the call.
        hangup = await service.client.send_action("Hangup", {"Channel": "/^Local/pstn@callers-ivr-/"})
        assert hangup.ok, hangup.message
        async with asyncio.timeout(15):
            await script.done.wait()
    finally:
        server.close()
        await server.wait_closed()
