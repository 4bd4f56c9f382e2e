"""The agent page's actions against the real Asterisk 22: click-to-dial rings the agent's device and
then reaches the customer; the wrap-up pause shows in QueueStatus and goes at the submit."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from callbridge.service import Service
from callbridge.settings import Settings, WrapupSettings, load_settings
from cti.asterisk import PBXResynced
from cti.model import CallState
from customers.sqlite_store import SQLiteStore
from screenpop import hash_password

ROOT = Path(__file__).resolve().parents[2]
PASSWORDS = {"agent1": "alice-pw-0001", "agent2": "bob-pw-0002"}
NOON_IN_CALIFORNIA = datetime(2026, 11, 30, 20, 0, tzinfo=UTC).timestamp()

pytestmark = pytest.mark.lab


@dataclasses.dataclass
class Page:
    http: aiohttp.ClientSession
    ws: aiohttp.ClientWebSocketResponse
    origin: str

    async def post(self, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        async with self.http.post(path, json=body, headers={"Origin": self.origin}) as response:
            return response.status, await response.json()

    async def next(self, kind: str, timeout: float = 20) -> dict[str, Any]:
        async with asyncio.timeout(timeout):
            while True:
                message: dict[str, Any] = await self.ws.receive_json()
                if message["type"] == kind:
                    return message


@contextlib.asynccontextmanager
async def service_on_the_lab(
    lab: Any, tmp_path: Path, configure: Callable[[Settings], Settings] = lambda s: s
) -> AsyncIterator[tuple[Service, dict[str, Page]]]:
    lab.wait_idle()
    db = tmp_path / "customers.db"
    async with SQLiteStore(db) as store:
        await store.create_customer("Jane Doe", identities=[("phone", "+1 415 555 0123")])
    base = load_settings(ROOT / "config" / "callbridge.yaml", environ={})
    agents = tuple(
        dataclasses.replace(a, password_hash=hash_password(PASSWORDS[a.id])) if a.id in PASSWORDS else a
        for a in base.agents
    )
    settings = configure(
        dataclasses.replace(
            base,
            agents=agents,
            ami=lab.ami_config(),
            customers=dataclasses.replace(base.customers, database=str(db)),
            http=dataclasses.replace(base.http, port=0),
        )
    )
    service = Service(settings)
    ready = service.bus.subscribe(PBXResynced)
    async with service:
        async with asyncio.timeout(15):
            await ready.get()
        origin = f"http://127.0.0.1:{service.http_port}"
        pages: dict[str, Page] = {}
        try:
            for agent_id, password in PASSWORDS.items():
                http = aiohttp.ClientSession(origin, cookie_jar=aiohttp.CookieJar(unsafe=True))
                pages[agent_id] = Page(http, await _login(http, origin, agent_id, password), origin)
            yield service, pages
        finally:
            for page in pages.values():
                await page.ws.close()
                await page.http.close()
            for agent_id in PASSWORDS:
                with contextlib.suppress(Exception):
                    await service.client.send_action(
                        "QueuePause", {"Interface": f"Local/{agent_id}@agents/n", "Paused": "false"}
                    )
    lab.wait_idle()


async def _login(
    http: aiohttp.ClientSession, origin: str, agent_id: str, password: str
) -> aiohttp.ClientWebSocketResponse:
    async with http.post("/agent/login", json={"agent_id": agent_id, "password": password}) as response:
        assert response.status == 200
    ws = await http.ws_connect("/agent/ws", headers={"Origin": origin})
    await ws.send_json({"type": "hello", "last_seq": None, "epoch": None})
    assert (await ws.receive_json(timeout=5))["type"] == "welcome"
    return ws


async def test_click_to_dial_rings_the_agents_device_then_reaches_the_customer(
    lab: Any, tmp_path: Path
) -> None:
    """The lab's ``customers`` context plays the customer on the agent's own channel: it rings 3 s
    after agent1's device answered (2 s), then answers. The model makes it agent1's outbound
    call, and agent1's page gets the pop that the wrap-up takes."""
    async with service_on_the_lab(lab, tmp_path) as (service, pages):
        dialer = service.dialer
        assert dialer is not None
        dialer.clock = lambda: NOON_IN_CALIFORNIA
        store = service.store
        assert store is not None
        sam = await store.create_customer("Sam Lee", identities=[("phone", "+1 415 555 0188")])
        page = pages["agent1"]
        status, body = await page.post("/agent/dial", {"number": "(415) 555-0188", "customer_id": sam.id})
        assert status == 202, body
        assert body["message"] == "Originate successfully queued"

        # The shared lab may ring agent1 for somebody else's queue call meanwhile: those are inbound.
        while (pop := await page.next("pop"))["facts"]["direction"] != "outbound":
            pass
        assert pop["payload"]["agent_id"] == "agent1" and pop["facts"]["state"] == "ringing"
        async with asyncio.timeout(30):
            while True:
                update = await page.next("update")
                if update["pop_id"] == pop["pop_id"] and update["facts"]["customer_answered_at"] is not None:
                    break
        assert update["reason"] == "answered"
        assert (update["facts"]["state"], update["facts"]["remote_num"]) == ("answered", "+14155550188")

        call = service.model.get_call(pop["facts"]["call_id"])
        assert call is not None and call.live
        assert (call.direction, call.agent, call.remote_num, call.state) == (
            "outbound",
            "agent1",
            "+14155550188",
            CallState.CONNECTED,
        )
        assert call.answered_at is not None and call.answered_at == call.customer_answered_at
        agent_leg = next(leg for leg in call.legs if leg.agent == "agent1")
        assert agent_leg.channel.startswith("Local/agent1@agents")
        # The PBX agrees on where the call is.
        async with asyncio.timeout(10):
            while (where := await dialplan_of(service, call.id)) is None:
                await asyncio.sleep(0.2)
        assert where == ("customers", "+14155550188")

        result = await service.client.send_action("Hangup", {"Channel": agent_leg.channel})
        assert result.ok, result.message
        while (retract := await page.next("retract"))["pop_id"] != pop["pop_id"]:
            pass
        assert retract["reason"] == "call_ended"

        status, body = await page.post("/agent/wrapup", {"pop_id": pop["pop_id"], "disposition": "resolved"})
        assert status == 200, body
        assert body["customer_id"] == sam.id
        calls = await store.timeline(sam.id, channels=["call"])
        assert [(c.data["agent"], c.data["call_id"]) for c in calls] == [("agent1", call.id)]


async def dialplan_of(service: Service, call_id: str) -> tuple[str, str] | None:
    """(context, exten) of the call's channel that runs in the ``customers`` context, if any."""
    result = await service.client.send_action("CoreShowChannels")
    for event in result.events:
        if event.get("Linkedid") == call_id and event.get("Context") == "customers":
            return "customers", event.get("Exten") or ""
    return None


def with_pause(settings: Settings) -> Settings:
    wrapup = WrapupSettings(pause=True, reason="Wrap-up", max_seconds=60)
    return dataclasses.replace(settings, screenpop=dataclasses.replace(settings.screenpop, wrapup=wrapup))


async def member_pause(service: Service, interface: str) -> tuple[str | None, str | None]:
    """(Paused, PausedReason) of ``interface`` in the support queue, as QueueStatus reports it."""
    result = await service.client.send_action("QueueStatus", {"Queue": "support"})
    for event in result.events:
        if event.name == "QueueMember" and event.get("Location", event.get("Interface")) == interface:
            return event.get("Paused"), event.get("PausedReason")
    raise AssertionError(f"{interface} not a member of support")


async def test_the_wrap_up_pause_shows_in_queue_status_until_the_submit(lab: Any, tmp_path: Path) -> None:
    async with service_on_the_lab(lab, tmp_path, with_pause) as (service, pages):
        result = await service.client.send_action(
            "Originate",
            {
                "Channel": "Local/pstn@callers",
                "Context": "from-pstn",
                "Exten": "8005550100",
                "Priority": "1",
                "CallerID": '"Jane Doe" <+14155550123>',
                "Variable": "CALLER_HOLD=5",
                "Async": "true",
            },
        )
        assert result.ok, result.message
        pending = {agent: asyncio.ensure_future(page.next("pop")) for agent, page in pages.items()}
        done, _ = await asyncio.wait(pending.values(), return_when=asyncio.FIRST_COMPLETED)
        for task in pending.values():
            if task not in done:
                task.cancel()
        pop = done.pop().result()
        agent = pop["payload"]["agent_id"]
        interface = f"Local/{agent}@agents/n"
        page = pages[agent]
        assert (await page.next("retract"))["reason"] == "call_ended"
        async with asyncio.timeout(10):
            while (await member_pause(service, interface))[0] != "1":
                await asyncio.sleep(0.1)
        assert await member_pause(service, interface) == ("1", "Wrap-up")

        status, body = await page.post("/agent/wrapup", {"pop_id": pop["pop_id"], "disposition": "resolved"})
        assert status == 200, body
        assert body["pause"]["ok"] is True and body["pause"]["paused"] is False
        assert body["wait"] is not None and body["talk"] is not None
        assert (await member_pause(service, interface))[0] == "0"
        store = service.store
        assert store is not None
        calls = await store.timeline(body["customer_id"], channels=["call"])
        assert [c.data["agent"] for c in calls] == [agent]
