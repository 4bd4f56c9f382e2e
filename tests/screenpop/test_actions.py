"""The agent page's actions over the real service: a replayed call (Alice takes Jane Doe's support
call) wrapped up onto Jane's timeline, the wrap-up pause, click-to-dial, creating and linking
the caller's customer from the pop. Real HTTP clients with the agent cookie, the fake PBX
recording what it was sent."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from callbridge.fakepbx import FakePBX
from callbridge.service import Service
from callbridge.settings import Settings, WrapupSettings, load_settings
from cti.ami.message import Message
from customers.model import Channel
from customers.sqlite_store import SQLiteStore
from screenpop import hash_password

ROOT = Path(__file__).resolve().parents[2]
PASSWORDS = {"agent1": "alice-pw-0001", "agent2": "bob-pw-0002"}
CALL_ID = "1795581569.0"
NOON_IN_CALIFORNIA = datetime(2026, 11, 30, 20, 0, tzinfo=UTC).timestamp()


@dataclass
class Page:
    """One agent's browser: the cookie jar, the pop socket, the service's own Origin."""

    http: aiohttp.ClientSession
    ws: aiohttp.ClientWebSocketResponse
    origin: str

    async def post(
        self, path: str, body: dict[str, Any], *, origin: str | None = None
    ) -> tuple[int, dict[str, Any]]:
        async with self.http.post(path, json=body, headers={"Origin": origin or self.origin}) as response:
            return response.status, await response.json()

    async def get(self, path: str) -> tuple[int, dict[str, Any]]:
        async with self.http.get(path) as response:
            return response.status, await response.json()

    async def next(self, kind: str, timeout: float = 10) -> dict[str, Any]:
        async with asyncio.timeout(timeout):
            while True:
                message: dict[str, Any] = await self.ws.receive_json()
                if message["type"] == kind:
                    return message


@dataclass
class Running:
    service: Service
    pbx: FakePBX
    pages: dict[str, Page]
    customers: dict[str, str] = field(default_factory=dict)

    @property
    def store(self) -> SQLiteStore:
        store = self.service.store
        assert isinstance(store, SQLiteStore)
        return store


@contextlib.asynccontextmanager
async def running(
    tmp_path: Path,
    *,
    jane: bool = True,
    configure: Callable[[Settings], Settings] = lambda s: s,
    hold_at: float | None = None,
    capture: str = "queue_answered",
) -> AsyncIterator[Running]:
    """The service on the fake PBX replaying ``capture``, Alice's and Bob's pages logged in and
    connected; the replay starts once they are (and holds at capture time ``hold_at``)."""
    db = tmp_path / "customers.db"
    ids = {}
    async with SQLiteStore(db) as store:
        if jane:
            ids["jane"] = (
                await store.create_customer("Jane Doe", identities=[("phone", "(415) 555-0123")])
            ).id
        ids["smith"] = (
            await store.create_customer("Jane Smith", identities=[("email", "js@example.com")])
        ).id
    base = load_settings(ROOT / "config" / "callbridge.yaml", environ={})
    agents = tuple(
        dataclasses.replace(a, password_hash=hash_password(PASSWORDS[a.id])) if a.id in PASSWORDS else a
        for a in base.agents
    )
    async with FakePBX([capture], speed=5.0) as pbx:
        pbx.pause_replay(at=0.001)
        settings = configure(
            dataclasses.replace(
                base,
                agents=agents,
                ami=dataclasses.replace(base.ami, port=pbx.port, backoff_initial=0.05),
                customers=dataclasses.replace(base.customers, database=str(db)),
                http=dataclasses.replace(base.http, port=0),
            )
        )
        async with Service(settings) as service:
            assert await asyncio.wait_for(pbx.wait_paused(), 10)
            origin = f"http://127.0.0.1:{service.http_port}"
            pages: dict[str, Page] = {}
            try:
                for agent_id, password in PASSWORDS.items():
                    http = aiohttp.ClientSession(origin, cookie_jar=aiohttp.CookieJar(unsafe=True))
                    async with http.post(
                        "/agent/login", json={"agent_id": agent_id, "password": password}
                    ) as response:
                        assert response.status == 200
                    ws = await http.ws_connect("/agent/ws", headers={"Origin": origin})
                    pages[agent_id] = Page(http, ws, origin)
                    await ws.send_json({"type": "hello", "last_seq": None, "epoch": None})
                    await pages[agent_id].next("welcome")
                pbx.resume_replay()
                if hold_at is not None:
                    pbx.pause_replay(at=hold_at)
                yield Running(service, pbx, pages, ids)
            finally:
                for page in pages.values():
                    await page.ws.close()
                    await page.http.close()


async def ended_pop(run: Running) -> str:
    """Alice's pop of the replayed call, once the call has ended."""
    alice = run.pages["agent1"]
    pop = await alice.next("pop")
    retract = await alice.next("retract")
    assert retract["pop_id"] == pop["pop_id"] and retract["reason"] == "call_ended"
    return str(pop["pop_id"])


async def wait_for_actions(pbx: FakePBX, name: str, count: int, timeout: float = 10) -> list[Message]:
    async with asyncio.timeout(timeout):
        while len(actions := pbx.actions_named(name)) < count:
            await asyncio.sleep(0.01)
    return actions


async def test_a_wrap_up_lands_once_on_the_callers_timeline_with_the_call_facts(tmp_path: Path) -> None:
    async with running(tmp_path) as run:
        pop_id = await ended_pop(run)
        alice = run.pages["agent1"]
        status, body = await alice.post("/agent/wrapup", {"pop_id": pop_id, "disposition": "nonsense"})
        assert status == 400 and body["error"]["field"] == "disposition"
        status, body = await alice.post("/agent/wrapup", {"pop_id": pop_id, "disposition": "follow_up"})
        assert (status, body["error"]["code"], body["error"]["field"]) == (400, "notes-required", "notes")

        request = {"pop_id": pop_id, "disposition": "follow_up", "notes": "wants a refund by Friday"}
        status, body = await alice.post("/agent/wrapup", request)
        assert status == 200, body
        jane = run.customers["jane"]
        assert body["customer_id"] == jane and body["stored"] is True

        status, again = await alice.post("/agent/wrapup", request)
        assert status == 409 and again["error"]["code"] == "already-wrapped-up"

        calls = await run.store.timeline(jane, channels=[Channel.CALL])
        assert len(calls) == 1
        call = calls[0]
        assert call.direction == "inbound" and call.external_id == CALL_ID
        assert call.data["queue"] == "support" and call.data["agent"] == "agent1"
        assert call.data["agent_name"] == "Alice"
        assert call.data["wait"] == 2 and call.data["talk"] == 4  # Asterisk's HoldTime, TalkTime
        assert call.data["disposition"] == "follow_up"
        notes = await run.store.notes(jane)
        assert [(n.author, n.text) for n in notes] == [("agent1", "wants a refund by Friday")]


async def test_a_retried_submit_whose_answer_was_lost_writes_the_call_once(tmp_path: Path) -> None:
    """The store's (source, external id) makes the timeline write idempotent even when the desk
    has not recorded the first submit (its answer lost between the store and the desk)."""
    async with running(tmp_path) as run:
        pop_id = await ended_pop(run)
        jane = run.customers["jane"]
        desk = run.service.wrapup
        assert desk is not None
        first = await desk.submit("agent1", pop_id, "resolved")
        desk.desk.get("agent1", pop_id).outcome = None  # the desk forgot; the store did not
        second = await desk.submit("agent1", pop_id, "resolved")
        assert first["interaction_id"] == second["interaction_id"]
        assert len(await run.store.timeline(jane, channels=[Channel.CALL])) == 1


async def test_only_the_agent_who_took_the_call_can_wrap_it_up(tmp_path: Path) -> None:
    async with running(tmp_path) as run:
        pop_id = await ended_pop(run)
        alice, bob = run.pages["agent1"], run.pages["agent2"]
        request = {"pop_id": pop_id, "disposition": "resolved"}
        status, body = await bob.post("/agent/wrapup", request)
        assert status == 404 and body["error"] == {
            "code": "pop-not-found",
            "message": f"no call of yours with pop id {pop_id!r}",
            "field": "pop_id",
        }
        status, body = await alice.post("/agent/wrapup", request, origin="http://evil.example")
        assert status == 403 and body["error"]["code"] == "forbidden"
        async with (
            aiohttp.ClientSession(alice.origin) as anonymous,
            anonymous.post("/agent/wrapup", json=request, headers={"Origin": alice.origin}) as r,
        ):
            assert r.status == 401 and (await r.json())["error"]["code"] == "not-logged-in"
        assert await run.store.timeline(run.customers["jane"], channels=[Channel.CALL]) == []
        status, me = await alice.get("/agent/me")
        assert status == 200
        assert me["agent_id"] == "agent1" and me["name"] == "Alice" and me["can_dial"] is True
        assert me["wrapup_pause"] is False
        assert {"code": "follow_up", "label": "Needs follow-up", "notes_required": True} in me["dispositions"]
        assert [p["pop_id"] for p in me["pending_wrapups"]] == [pop_id]
        status, body = await alice.post("/agent/wrapup", request)
        assert status == 200 and body["pause"] == {"paused": False}
        assert (await alice.get("/agent/me"))[1]["pending_wrapups"] == []


def with_pause(max_seconds: float) -> Callable[[Settings], Settings]:
    def configure(settings: Settings) -> Settings:
        wrapup = WrapupSettings(pause=True, reason="Wrap-up", max_seconds=max_seconds)
        return dataclasses.replace(settings, screenpop=dataclasses.replace(settings.screenpop, wrapup=wrapup))

    return configure


def pause_fields(action: Message) -> tuple[str | None, str | None, str | None]:
    return action.get("Interface"), action.get("Paused"), action.get("Reason")


async def test_the_wrap_up_pause_lasts_until_the_submit(tmp_path: Path) -> None:
    async with running(tmp_path, configure=with_pause(60)) as run:
        pop_id = await ended_pop(run)
        paused = await wait_for_actions(run.pbx, "QueuePause", 1)
        assert [pause_fields(a) for a in paused] == [("Local/agent1@agents/n", "true", "Wrap-up")]
        status, body = await run.pages["agent1"].post(
            "/agent/wrapup", {"pop_id": pop_id, "disposition": "resolved"}
        )
        assert status == 200
        assert body["pause"] == {"paused": False, "ok": True, "interfaces": ["Local/agent1@agents/n"]}
        actions = run.pbx.actions_named("QueuePause")
        assert [pause_fields(a)[:2] for a in actions] == [
            ("Local/agent1@agents/n", "true"),
            ("Local/agent1@agents/n", "false"),
        ]


async def test_the_wrap_up_pause_ends_after_max_seconds_without_a_submit(tmp_path: Path, unit: float) -> None:
    async with running(tmp_path, configure=with_pause(0.3 * unit)) as run:
        pop_id = await ended_pop(run)
        actions = await wait_for_actions(run.pbx, "QueuePause", 2)
        assert [pause_fields(a)[1] for a in actions] == ["true", "false"]
        # The call can still be wrapped up afterwards; nothing more is sent to the PBX.
        status, body = await run.pages["agent1"].post(
            "/agent/wrapup", {"pop_id": pop_id, "disposition": "resolved"}
        )
        assert status == 200 and body["pause"] == {"paused": False}
        assert len(run.pbx.actions_named("QueuePause")) == 2


async def test_click_to_dial_originates_from_the_agents_device(tmp_path: Path) -> None:
    async with running(tmp_path) as run:
        dialer = run.service.dialer
        assert dialer is not None
        dialer.clock = lambda: NOON_IN_CALIFORNIA
        alice = run.pages["agent1"]
        jane = run.customers["jane"]
        status, body = await alice.post("/agent/dial", {"number": "(415) 555-0123", "customer_id": jane})
        assert status == 202, body
        assert body["number"] == "+14155550123"
        (originate,) = run.pbx.actions_named("Originate")
        assert originate.get("Channel") == "Local/agent1@agents/n"
        assert originate.get("Context") == "customers"
        assert originate.get("Exten") == "+14155550123"
        assert originate.get("Priority") == "1" and originate.get("Async") == "true"
        assert originate.get("Timeout") == "30000"
        assert originate.get_all("Variable") == ["CALLBRIDGE_AGENT=agent1", f"CUSTOMER_ID={jane}"]

        await run.store.add_do_not_call("number", "+1 415 555 0177", source="customer request")
        status, body = await alice.post("/agent/dial", {"number": "415-555-0177"})
        assert status == 403 and body["error"]["code"] == "may-not-call"
        message = body["error"]["message"]
        assert "number +14155550177 on do-not-call" in message and "(source: customer request)" in message
        status, body = await alice.post("/agent/dial", {"number": "not a number"})
        assert status == 400 and body["error"]["field"] == "number"
        assert len(run.pbx.actions_named("Originate")) == 1


async def test_creating_the_unknown_callers_customer_updates_the_pop(tmp_path: Path) -> None:
    async with running(tmp_path, jane=False, hold_at=3.0) as run:
        alice = run.pages["agent1"]
        pop = await alice.next("pop")
        assert pop["payload"]["match"] == "unknown"
        assert await asyncio.wait_for(run.pbx.wait_paused(), 10)  # Alice is talking to the caller
        status, body = await alice.post(
            "/agent/customers",
            {"pop_id": pop["pop_id"], "display_name": "Jane Doe", "email": "jane@example.com"},
        )
        assert status == 201, body
        assert body["customer"]["phones"] == ["+14155550123"] and body["pop_updated"] is True
        update = await alice.next("update")
        while update["reason"] != "customer":
            update = await alice.next("update")
        assert update["payload"]["customer"]["display_name"] == "Jane Doe"
        assert update["payload"]["match"] == "unique"
        run.pbx.resume_replay()
        await alice.next("retract")
        status, wrapped = await alice.post("/agent/wrapup", {"pop_id": pop["pop_id"], "disposition": "sale"})
        assert status == 200 and wrapped["customer_id"] == body["customer"]["id"]


async def test_linking_the_number_to_a_customer_found_by_search_updates_the_pop(tmp_path: Path) -> None:
    async with running(tmp_path, jane=False, hold_at=3.0) as run:
        alice, bob = run.pages["agent1"], run.pages["agent2"]
        pop = await alice.next("pop")
        assert await asyncio.wait_for(run.pbx.wait_paused(), 10)
        status, found = await alice.get("/agent/customers?q=Jane%20Smith")
        assert status == 200 and [c["id"] for c in found["customers"]] == [run.customers["smith"]]
        status, body = await alice.get("/agent/customers?q=")
        assert status == 400 and body["error"]["field"] == "q"
        link = {"pop_id": pop["pop_id"], "customer_id": run.customers["smith"]}
        status, body = await bob.post("/agent/link", link)
        assert status == 404
        status, body = await alice.post("/agent/link", link | {"customer_id": "nobody"})
        assert status == 404 and body["error"]["field"] == "customer_id"
        status, body = await alice.post("/agent/link", link)
        assert status == 200, body
        assert body["identity"] == {"kind": "phone", "value": "+14155550123"}
        update = await alice.next("update")
        while update["reason"] != "customer":
            update = await alice.next("update")
        assert update["payload"]["customer"]["id"] == run.customers["smith"]
        run.pbx.resume_replay()
        await alice.next("retract")
        status, wrapped = await alice.post(
            "/agent/wrapup", {"pop_id": pop["pop_id"], "disposition": "resolved"}
        )
        assert status == 200 and wrapped["customer_id"] == run.customers["smith"]
        assert len(await run.store.timeline(run.customers["smith"], channels=[Channel.CALL])) == 1


async def test_an_unknown_caller_wrapped_up_without_a_customer_stores_nothing(tmp_path: Path) -> None:
    async with running(tmp_path, jane=False) as run:
        pop_id = await ended_pop(run)
        status, body = await run.pages["agent1"].post(
            "/agent/wrapup", {"pop_id": pop_id, "disposition": "wrong_number"}
        )
        assert status == 200
        assert body["customer_id"] is None and body["stored"] is False and body["interaction_id"] is None


@pytest.mark.parametrize("path", ["/agent/wrapup", "/agent/dial", "/agent/customers", "/agent/link"])
async def test_a_body_that_is_not_a_json_object_is_400(tmp_path: Path, path: str) -> None:
    async with running(tmp_path) as run:
        alice = run.pages["agent1"]
        async with alice.http.post(path, data="[1]", headers={"Origin": alice.origin}) as response:
            assert response.status == 400
            assert (await response.json())["error"]["code"] == "invalid-json"


async def test_a_pbx_gone_at_the_submit_is_reported_and_the_wrap_up_still_stored(tmp_path: Path) -> None:
    async with running(tmp_path, configure=with_pause(60)) as run:
        pop_id = await ended_pop(run)
        await wait_for_actions(run.pbx, "QueuePause", 1)
        await run.pbx.stop()
        async with asyncio.timeout(10):
            while run.service.client.connected:
                await asyncio.sleep(0.01)
        status, body = await run.pages["agent1"].post(
            "/agent/wrapup", {"pop_id": pop_id, "disposition": "resolved"}
        )
        assert status == 200 and body["stored"] is True
        assert body["pause"]["ok"] is False and "no AMI link" in body["pause"]["error"]
        assert len(await run.store.timeline(run.customers["jane"], channels=[Channel.CALL])) == 1


async def test_a_failed_resume_is_tried_again_once_the_pbx_is_back(tmp_path: Path) -> None:
    async with running(tmp_path, configure=with_pause(60)) as run:
        wrapup = run.service.wrapup
        assert wrapup is not None
        wrapup._resume_retry = 0.2
        pop_id = await ended_pop(run)
        await wait_for_actions(run.pbx, "QueuePause", 1)
        restart = asyncio.create_task(run.pbx.restart(delay=1.0))
        async with asyncio.timeout(10):
            while run.service.client.connected:
                await asyncio.sleep(0.01)
        status, body = await run.pages["agent1"].post(
            "/agent/wrapup", {"pop_id": pop_id, "disposition": "resolved"}
        )
        assert status == 200 and body["pause"]["ok"] is False
        await restart
        actions = await wait_for_actions(run.pbx, "QueuePause", 2)
        assert [pause_fields(a)[1] for a in actions] == ["true", "false"]


@pytest.mark.parametrize("mask", [False, True])
async def test_a_caller_from_the_ivr_pops_with_what_they_keyed_in(tmp_path: Path, mask: bool) -> None:
    """``ivr_queue_answered``: Jane keys ``2`` and ``4155`` into the lab's FastAGI IVR, which
    queues her on support; Alice's pop (and its replay to a new tab) carries the digits and the
    IVR's steps, or dots and no read-back values with ``screenpop.mask_ivr_input``."""

    def configure(settings: Settings) -> Settings:
        return dataclasses.replace(
            settings, screenpop=dataclasses.replace(settings.screenpop, mask_ivr_input=mask)
        )

    async with running(tmp_path, capture="ivr_queue_answered", configure=configure) as run:
        pop = await run.pages["agent1"].next("pop")
        ivr = pop["facts"]["ivr"]
        assert pop["payload"]["customer"]["id"] == run.customers["jane"]
        assert pop["facts"]["queue"] == "support"
        assert ivr["script"] == "agi://127.0.0.1:4573/ivr?lang=en" and ivr["left_at"] is not None
        if mask:
            assert ivr["digits"] == "\u2022" * 5
            assert ivr["steps"][2:] == [
                "SET VARIABLE IVR_ACCOUNT \u2022\u2022\u2022",
                "EXEC Queue support,,,,60",
            ]
            assert run.service.pops is not None
            (replayed,) = run.service.pops.tracker.live_pops("agent1")
            assert "4155" not in json.dumps(replayed.facts["ivr"])
        else:
            assert ivr["digits"] == "24155"
            assert ivr["steps"] == [
                "GET DATA beep 6000 1",
                "GET DATA beep 4000 4",
                "SET VARIABLE IVR_ACCOUNT 4155",
                "EXEC Queue support,,,,60",
            ]
