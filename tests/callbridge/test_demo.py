"""``callbridge demo`` as a newcomer runs it: a subprocess that seeds a customer base, prints the
agent page's address and the logins, and pops captured calls at the agents who log in."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from pathlib import Path
from typing import Any

import aiohttp

from callbridge.demo import DEMO_PASSWORD, demo_rules, seed_demo_customers
from customers.sqlite_store import SQLiteStore

ROOT = Path(__file__).resolve().parents[2]


async def test_demo_seeds_once_and_its_callers_resolve_to_the_pops_they_show(tmp_path: Path) -> None:
    db = tmp_path / "demo.db"
    async with SQLiteStore(db) as store:
        first = await seed_demo_customers(
            store, now=1_790_000_000.0, generated=300, rules=demo_rules(ROOT / "config" / "segments.yaml")
        )
        again = await seed_demo_customers(store, now=1_790_000_000.0, generated=300)
        assert (first.seeded, first.featured, first.generated, first.rejected) == (True, 5, 300, 0)
        assert not again.seeded
        (jane,) = await store.lookup_phone("(415) 555-0123")
        assert jane.customer.display_name == "Jane Doe"
        profile = await store.profile(jane.customer.id)
        assert {"call", "email", "order", "web", "chat", "sms", "visit", "fax"} <= set(profile.latest)
        assert profile.value is not None and profile.value.source == "rfm" and profile.value.frequency == 5
        assert "gold_tier" in profile.segments
        shared = await store.lookup_phone("+1 212 555 0147")
        assert sorted(c.customer.display_name for c in shared) == ["Mei Chen", "Robert Chen"]
        (sam,) = await store.lookup_phone("4155550142")
        assert sam.customer.id == "C-100042"
        refused = await store.may_call("+14155550144", 1_790_000_000.0, window=("00:00", "23:59"))
        assert not refused.allowed and any("do-not-call" in r for r in refused.reasons)


async def test_demo_prints_the_page_and_logins_and_pops_jane_doe_at_alice(tmp_path: Path) -> None:
    demo = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "callbridge", "--config", str(ROOT / "config" / "callbridge.yaml"), "demo",
        "--scenario", "queue_answered", "--speed", "4", "--port", "0",
        "--database", str(tmp_path / "demo.db"), "--customers", "200",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert demo.stdout is not None
    lines: list[str] = []
    try:
        async with asyncio.timeout(30):
            while not any(re.search(r"agent page (http://\S+/agent/)", line) for line in lines):
                lines.append((await demo.stdout.readline()).decode())
                assert lines[-1], "the demo ended early:\n" + "".join(lines)
            while len(lines) < 20 and "password" not in lines[-1]:
                lines.append((await demo.stdout.readline()).decode())
        while len(lines) < 40 and "curl" not in lines[-1]:
            lines.append((await demo.stdout.readline()).decode())
        page = next(m.group(1) for line in lines if (m := re.search(r"agent page (http://\S+/agent/)", line)))
        assert "200 generated" in "".join(lines)
        assert re.search(rf"agent1\s+Alice\s+password: {DEMO_PASSWORD}", "".join(lines))
        origin = page.removesuffix("/agent/")
        token = re.search(r"Bearer (\S+)'", "".join(lines))
        assert token is not None
        async with aiohttp.ClientSession(origin, cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
            async with http.get(
                "/api/customers?phone=4155550123", headers={"Authorization": f"Bearer {token.group(1)}"}
            ) as r:
                assert r.status == 200 and "Jane Doe" in await r.text()
            async with http.post("/agent/login", json={"agent_id": "agent1", "password": DEMO_PASSWORD}) as r:
                assert r.status == 200, await r.text()
            async with http.ws_connect("/agent/ws", headers={"Origin": origin}) as ws:
                await ws.send_json({"type": "hello", "last_seq": None, "epoch": None})
                pop = await _next(ws, "pop", timeout=20)
                assert pop["payload"]["match"] == "unique"
                assert pop["payload"]["customer"]["display_name"] == "Jane Doe"
                await ws.send_json({"type": "ack", "pop_id": pop["pop_id"]})
    finally:
        if demo.returncode is None:
            demo.send_signal(signal.SIGINT)
        out, err = await asyncio.wait_for(demo.communicate(), 15)
    assert demo.returncode == 0, err.decode()
    assert "demo over" in out.decode()


async def _next(ws: aiohttp.ClientWebSocketResponse, kind: str, timeout: float) -> dict[str, Any]:
    async with asyncio.timeout(timeout):
        while True:
            message: dict[str, Any] = await ws.receive_json()
            if message["type"] == kind:
                return message
