"""A replayed call pops at the agent it rings, with the caller's profile, over the service's real
HTTP server and WebSockets; the other agent gets nothing."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from callbridge.fakepbx import FakePBX
from callbridge.service import Service
from callbridge.settings import load_settings
from customers.sqlite_store import SQLiteStore
from screenpop import hash_password

ROOT = Path(__file__).resolve().parents[2]
PASSWORDS = {"agent1": "alice-pw-0001", "agent2": "bob-pw-0002"}


async def next_message(ws: aiohttp.ClientWebSocketResponse, kind: str, timeout: float = 10) -> dict[str, Any]:
    async with asyncio.timeout(timeout):
        while True:
            message: dict[str, Any] = await ws.receive_json()
            if message["type"] == kind:
                return message


async def test_queue_call_pops_at_alice_only_with_jane_does_profile(tmp_path: Path) -> None:
    db = tmp_path / "customers.db"
    async with SQLiteStore(db) as store:
        jane = await store.create_customer("Jane Doe", identities=[("phone", "(415) 555-0123")])
        await store.add_note(jane.id, "bob", "prefers email follow-ups")

    base = load_settings(ROOT / "config" / "callbridge.yaml", environ={})
    agents = tuple(
        dataclasses.replace(a, password_hash=hash_password(PASSWORDS[a.id])) if a.id in PASSWORDS else a
        for a in base.agents
    )
    async with FakePBX(["queue_answered"], speed=5.0) as pbx:
        pbx.pause_replay(at=0.001)  # hold the call until both agents' pages are connected
        settings = dataclasses.replace(
            base,
            agents=agents,
            ami=dataclasses.replace(base.ami, port=pbx.port, backoff_initial=0.05),
            customers=dataclasses.replace(base.customers, database=str(db)),
            http=dataclasses.replace(base.http, port=0),
        )
        async with Service(settings) as service:
            assert await asyncio.wait_for(pbx.wait_paused(), 10)
            origin = f"http://127.0.0.1:{service.http_port}"
            sockets = {}
            sessions = []
            for agent_id, password in PASSWORDS.items():
                http = aiohttp.ClientSession(origin, cookie_jar=aiohttp.CookieJar(unsafe=True))
                sessions.append(http)
                async with http.post(
                    "/agent/login", json={"agent_id": agent_id, "password": password}
                ) as response:
                    assert response.status == 200, await response.text()
                ws = await http.ws_connect("/agent/ws", headers={"Origin": origin})
                await ws.send_json({"type": "hello", "last_seq": None, "epoch": None})
                await next_message(ws, "welcome")
                sockets[agent_id] = ws
            try:
                pbx.resume_replay()
                pop = await next_message(sockets["agent1"], "pop")
                assert pop["call_id"] == "1795581569.0"
                payload = pop["payload"]
                assert payload["match"] == "unique"
                assert payload["customer"]["display_name"] == "Jane Doe"
                assert payload["customer"]["notes"][0]["text"] == "prefers email follow-ups"
                assert pop["facts"]["queue"] == "support"
                await sockets["agent1"].send_json({"type": "ack", "pop_id": pop["pop_id"]})
                answered = await next_message(sockets["agent1"], "update")
                assert answered["reason"] == "answered"
                retract = await next_message(sockets["agent1"], "retract")
                assert retract["reason"] == "call_ended"
                with pytest.raises(TimeoutError):  # Bob's page got nothing at all
                    await sockets["agent2"].receive(timeout=0.3)
                assert service.hub.live("agent2") == [] and service.hub.live("agent1") == []
                assert service.hub.latency().count == 1
                async with sessions[0].get("/healthz") as response:
                    pops = (await response.json())["pops"]
                assert pops["acked"] == 1 and pops["unacked"] == 0 and 0 < pops["p50_ms"] < 5000
            finally:
                for ws in sockets.values():
                    await ws.close()
                for http in sessions:
                    await http.close()


async def test_fifty_calls_at_full_speed_each_pop_arrives_whole_and_in_order(tmp_path: Path) -> None:
    """load_50 replayed as fast as the fake PBX writes: pops are assembled concurrently, yet each
    pop's show comes before its updates and its retract, on its agent's socket only."""
    base = load_settings(ROOT / "config" / "callbridge.yaml", environ={})
    agent_ids = [f"agent{n}" for n in range(1, 6)]
    agents = tuple(
        dataclasses.replace(a, password_hash=hash_password(f"{a.id}-pw", n=2**10)) if a.id in agent_ids else a
        for a in base.agents
    )
    async with FakePBX(["load_50"], speed=None) as pbx:
        pbx.pause_replay(at=0.001)
        settings = dataclasses.replace(
            base,
            agents=agents,
            ami=dataclasses.replace(base.ami, port=pbx.port, backoff_initial=0.05),
            customers=dataclasses.replace(base.customers, database=str(tmp_path / "customers.db")),
            http=dataclasses.replace(base.http, port=0),
        )
        async with Service(settings) as service:
            assert await asyncio.wait_for(pbx.wait_paused(), 10)
            origin = f"http://127.0.0.1:{service.http_port}"
            received: dict[str, list[dict[str, Any]]] = {a: [] for a in agent_ids}
            sessions, sockets = [], []
            for agent_id in agent_ids:
                http = aiohttp.ClientSession(origin, cookie_jar=aiohttp.CookieJar(unsafe=True))
                sessions.append(http)
                async with http.post(
                    "/agent/login", json={"agent_id": agent_id, "password": f"{agent_id}-pw"}
                ) as r:
                    assert r.status == 200
                ws = await http.ws_connect("/agent/ws", headers={"Origin": origin})
                await ws.send_json({"type": "hello", "last_seq": None, "epoch": None})
                await next_message(ws, "welcome")
                sockets.append(ws)

            async def read(agent_id: str, ws: aiohttp.ClientWebSocketResponse) -> None:
                while True:
                    message = await ws.receive_json()
                    received[agent_id].append(message)
                    if message["type"] == "pop":
                        await ws.send_json({"type": "ack", "pop_id": message["pop_id"]})

            readers = [asyncio.create_task(read(a, ws)) for a, ws in zip(agent_ids, sockets, strict=True)]
            try:
                pbx.resume_replay()
                await asyncio.wait_for(pbx.replay_done(), 30)
                async with asyncio.timeout(10):
                    while service.hub.latency().count + service.hub.latency().retracted_unacked < 38 or any(
                        service.hub.live(a) for a in agent_ids
                    ):
                        await asyncio.sleep(0.05)
            finally:
                for task in readers:
                    task.cancel()
                for ws in sockets:
                    await ws.close()
                for http in sessions:
                    await http.close()
    pops = 0
    for agent_id, messages in received.items():
        seqs = [m["seq"] for m in messages]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs), agent_id
        by_pop: dict[str, list[str]] = {}
        for message in messages:
            by_pop.setdefault(message["pop_id"], []).append(message["type"])
            if message["type"] == "pop":
                assert message["payload"]["agent_id"] == agent_id
        for pop_id, kinds in by_pop.items():
            assert kinds[0] == "pop" and kinds[-1] == "retract", (agent_id, pop_id, kinds)
            assert set(kinds[1:-1]) <= {"update"}, (agent_id, pop_id, kinds)
        pops += len(by_pop)
    assert pops == 38
