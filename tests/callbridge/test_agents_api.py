"""``/api/agents`` on a real aiohttp server: supervisors map agents to devices at run time, the
change routes the next calls and logins at once and survives a restart through the agents file."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from callbridge.agents import AgentDirectory, AgentsFileError
from callbridge.agents_api import AgentAdmin, add_agent_routes
from callbridge.fakepbx import FakePBX
from callbridge.service import Service
from callbridge.settings import AgentSettings, ApiToken, load_settings
from cti.asterisk import PBXResynced
from cti.model import AgentChanged, AgentConfig, CallModel
from customers.api import customer_api
from customers.sqlite_store import SQLiteStore
from screenpop.sessions import AgentAccount, SessionStore, hash_password

ROOT = Path(__file__).resolve().parents[2]
OPS = ApiToken("ops", "ops-0123456789abcdef0123456789", role="admin")
SHOP = ApiToken("shop", "shop-0123456789abcdef012345678")
FAST = {"n": 2**10}
ALICE = AgentSettings(
    "agent1", "Alice", ("PJSIP/1001", "Local/agent1@agents/n"), hash_password("alice-pw-1", **FAST)
)
BOB = AgentSettings("agent2", "Bob", ("PJSIP/1002",))


@dataclass
class Desk:
    http: aiohttp.ClientSession
    model: CallModel
    sessions: SessionStore
    published: list[object]
    path: Path


@pytest.fixture
async def desk(tmp_path: Path) -> AsyncIterator[Desk]:
    path = tmp_path / "agents.json"
    directory = AgentDirectory.load([ALICE, BOB], path)
    model = CallModel(agents=[AgentConfig(a.id, a.name, a.interfaces) for a in directory.all()])
    sessions = SessionStore([AgentAccount(ALICE.id, ALICE.name, ALICE.password_hash)])
    published: list[object] = []
    store = SQLiteStore(tmp_path / "customers.db")
    api = customer_api(store, [OPS, SHOP])
    add_agent_routes(api, AgentAdmin(directory, model, sessions, published.append))
    app = web.Application()
    app.add_subapp("/api/", api)
    server = TestServer(app, host="127.0.0.1", port=0)
    async with store, server, aiohttp.ClientSession(f"http://127.0.0.1:{server.port}") as http:
        yield Desk(http, model, sessions, published, path)


async def call(desk: Desk, method: str, url: str, status: int, token: ApiToken = OPS, **kw: Any) -> Any:
    async with desk.http.request(method, url, headers={"Authorization": f"Bearer {token.token}"}, **kw) as r:
        text = await r.text()
        assert r.status == status, text
        return await r.json() if r.content_type == "application/json" else None


async def test_agents_are_listed_with_their_devices_status_and_origin(desk: Desk) -> None:
    agents = (await call(desk, "GET", "/api/agents", 200, token=SHOP))["agents"]
    assert [(a["id"], a["interfaces"], a["origin"], a["can_log_in"]) for a in agents] == [
        ("agent1", ["PJSIP/1001", "Local/agent1@agents/n"], "settings", True),
        ("agent2", ["PJSIP/1002"], "settings", False),
    ]
    assert agents[0]["status"] == "logged_out" and agents[0]["dial_device"] == "PJSIP/1001"
    await call(desk, "GET", "/api/agents/nobody", 404)


async def test_a_new_agent_and_a_moved_device_apply_at_once_and_survive_a_restart(desk: Desk) -> None:
    body = {"name": "Carol", "interfaces": ["PJSIP/1003", "Local/agent3@agents/n"], "password": "carol-pw-3"}
    carol = await call(desk, "PUT", "/api/agents/agent3", 201, json=body)
    assert (carol["origin"], carol["can_log_in"]) == ("api", True)
    assert desk.model.agent_for_device("PJSIP/1003-00000012") == "agent3"
    assert desk.sessions.login("agent3", "carol-pw-3") is not None
    assert any(isinstance(c, AgentChanged) and c.agent.id == "agent3" for c in desk.published)
    # Bob moves to Alice's old desk phone: first it must leave Alice.
    error = await call(desk, "PUT", "/api/agents/agent2", 409, json={"interfaces": ["PJSIP/1001"]})
    assert error["error"]["field"] == "interfaces[0]" and "'agent1'" in error["error"]["message"]
    await call(desk, "PUT", "/api/agents/agent1", 200, json={"interfaces": ["PJSIP/2001"]})
    bob = await call(desk, "PUT", "/api/agents/agent2", 200, json={"interfaces": ["PJSIP/1001"]})
    assert bob["name"] == "Bob" and bob["interfaces"] == ["PJSIP/1001"]
    assert desk.model.agent_for_device("PJSIP/1001-0000001f") == "agent2"
    # Alice kept her password through the change.
    token = desk.sessions.login("agent1", "alice-pw-1")
    assert token is not None
    await call(desk, "DELETE", "/api/agents/agent1", 204)
    assert desk.sessions.agent_for(token) is None and desk.sessions.login("agent1", "alice-pw-1") is None
    assert desk.model.agent_for_device("PJSIP/2001-00000001") is None
    await call(desk, "DELETE", "/api/agents/agent1", 404)

    restarted = AgentDirectory.load([ALICE, BOB], desk.path)
    assert [(a.id, a.interfaces) for a in restarted.all()] == [
        ("agent2", ("PJSIP/1001",)),
        ("agent3", ("PJSIP/1003", "Local/agent3@agents/n")),
    ]
    assert restarted.get("agent3") is not None and restarted.get("agent3").password_hash.startswith("scrypt$")  # type: ignore[union-attr]


async def test_changing_agents_needs_the_admin_role_and_a_valid_body(desk: Desk) -> None:
    body = {"interfaces": ["PJSIP/1009"]}
    error = await call(desk, "PUT", "/api/agents/agent9", 403, token=SHOP, json=body)
    assert error["error"]["message"].endswith("needs admin")
    await call(desk, "DELETE", "/api/agents/agent2", 403, token=SHOP)
    error = await call(desk, "PUT", "/api/agents/agent9", 422, json={"interfaces": []})
    assert error["error"]["field"] == "interfaces"
    error = await call(
        desk, "PUT", "/api/agents/agent9", 422, json={"interfaces": ["PJSIP/1"], "colour": "red"}
    )
    assert error["error"]["code"] == "unknown-field"
    error = await call(desk, "PUT", "/api/agents/agent9", 422, json={"interfaces": ["PJSIP/1 2"]})
    assert error["error"]["field"] == "interfaces[0]"
    assert desk.model.agent("agent9") is None and not desk.path.exists()


def test_an_unreadable_agents_file_names_itself(tmp_path: Path) -> None:
    path = tmp_path / "agents.json"
    path.write_text('{"version": 1, "agents": [{"id": "a1"}]}')
    with pytest.raises(AgentsFileError, match=r"agents.json: agents\[0\]: missing or malformed 'interfaces'"):
        AgentDirectory.load([], path)
    path.write_text("{not json")
    with pytest.raises(AgentsFileError, match=r"agents\.json: not readable as JSON"):
        AgentDirectory.load([], path)


async def test_through_the_service_a_desk_handed_to_a_new_agent_pops_the_next_call_there(
    tmp_path: Path,
) -> None:
    """agent1's device is given to a newcomer through the API; the replayed call rings it and pops
    at the newcomer's page, who logs in with the password the API set."""
    base = load_settings(ROOT / "config" / "callbridge.yaml", environ={})
    async with FakePBX(["queue_answered"], speed=5.0) as pbx:
        pbx.pause_replay(at=0.001)
        settings = dataclasses.replace(
            base,
            agents_file=str(tmp_path / "agents.json"),
            ami=dataclasses.replace(base.ami, port=pbx.port, backoff_initial=0.05),
            customers=dataclasses.replace(base.customers, database=str(tmp_path / "customers.db")),
            http=dataclasses.replace(base.http, port=0, api_tokens=(OPS,)),
        )
        service = Service(settings)
        resynced = service.bus.subscribe(PBXResynced, name="test-resynced")
        async with service:
            assert await asyncio.wait_for(pbx.wait_paused(), 10)
            await asyncio.wait_for(resynced.get(), 10)  # the PBX's queue members are known
            origin = f"http://127.0.0.1:{service.http_port}"
            auth = {"Authorization": f"Bearer {OPS.token}"}
            async with aiohttp.ClientSession(origin, cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
                async with http.delete("/api/agents/agent1", headers=auth) as r:
                    assert r.status == 204, await r.text()
                body = {"name": "Grace", "interfaces": ["Local/agent1@agents/n"], "password": "grace-pw-77"}
                async with http.put("/api/agents/agent9", headers=auth, json=body) as r:
                    assert r.status == 201, await r.text()
                async with http.post(
                    "/agent/login", json={"agent_id": "agent9", "password": "grace-pw-77"}
                ) as r:
                    assert r.status == 200, await r.text()
                async with http.ws_connect("/agent/ws", headers={"Origin": origin}) as ws:
                    await ws.send_json({"type": "hello", "last_seq": None, "epoch": None})
                    pbx.resume_replay()
                    async with asyncio.timeout(10):
                        while (message := await ws.receive_json())["type"] != "pop":
                            pass
                    assert message["call_id"] == "1795581569.0"
                    assert service.hub.sockets("agent9") == 1 and service.hub.live("agent1") == []
                    me = await (await http.get("/agent/me")).json()
                    assert me["name"] == "Grace"
                async with http.get("/agent", allow_redirects=False) as r:
                    assert (r.status, r.headers["Location"]) == (308, "/agent/")
    restarted = AgentDirectory.load(base.agents, tmp_path / "agents.json")
    assert restarted.get("agent1") is None and restarted.get("agent9") is not None
