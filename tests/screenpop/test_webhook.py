"""Signed webhooks against a real local receiver (aiohttp on 127.0.0.1:0): the signature, retries
with the same delivery id, what is not retried, the bounded queue; and, in the running service,
a receiver that hangs never delays a pop."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from callbridge.settings import Settings, WebhookSettings
from screenpop.webhook import Webhooks, parse_retry_after, retry_delay, sign, verify
from tests.screenpop.test_actions import ended_pop, running

SECRET = "s3cret-s3cret-s3cret"


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.body)
        return data


@dataclass
class Receiver:
    """A local HTTP receiver answering each request with the next of ``statuses`` (then 200)."""

    statuses: list[int | tuple[int, dict[str, str]]] = field(default_factory=list)
    hang: asyncio.Event | None = None
    requests: list[Received] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    url: str = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.requests.append(Received(dict(request.headers), await request.read()))
        self.arrived.set()
        if self.hang is not None:
            await self.hang.wait()
        answer = self.statuses.pop(0) if self.statuses else 200
        status, headers = answer if isinstance(answer, tuple) else (answer, {})
        return web.Response(status=status, headers=headers)

    def events(self, event: str) -> list[Received]:
        return [r for r in self.requests if r.headers["X-Callbridge-Event"] == event]

    async def wait_for(self, count: int, timeout: float = 10) -> None:
        async with asyncio.timeout(timeout):
            while len(self.requests) < count:
                self.arrived.clear()
                await self.arrived.wait()


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    receiver = Receiver()
    app = web.Application()
    app.router.add_post("/hook", receiver.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    receiver.url = f"http://127.0.0.1:{port}/hook"
    yield receiver
    if receiver.hang is not None:
        receiver.hang.set()
    await runner.cleanup()


def hook(url: str, **overrides: Any) -> WebhookSettings:
    fields: dict[str, Any] = {
        "url": url,
        "secret": SECRET,
        "timeout": 2.0,
        "max_attempts": 4,
        "backoff_initial": 0.01,
        "backoff_max": 0.05,
    }
    return WebhookSettings(**(fields | overrides))


def receiver_verifies(received: Received) -> bool:
    """The check docs/webhooks.md gives receivers, written out with the standard library."""
    timestamp = received.headers["X-Callbridge-Timestamp"]
    expected = hmac.new(SECRET.encode(), timestamp.encode() + b"." + received.body, hashlib.sha256)
    signature = received.headers["X-Callbridge-Signature"]
    return hmac.compare_digest("sha256=" + expected.hexdigest(), signature) and (
        abs(time.time() - int(timestamp)) < 300
    )


def test_the_signature_is_an_hmac_of_the_timestamp_and_the_body() -> None:
    body = b'{"event":"pop"}'
    expected = hmac.new(b"key", b"1700000000." + body, hashlib.sha256).hexdigest()
    assert sign("key", "1700000000", body) == "sha256=" + expected
    assert verify("key", "1700000000", body, "sha256=" + expected)
    assert not verify("key", "1700000001", body, "sha256=" + expected)
    assert not verify("other", "1700000000", body, "sha256=" + expected)


def test_retry_delays_grow_exponentially_with_jitter_up_to_the_cap() -> None:
    assert retry_delay(1, 1.0, 300.0, rng=lambda: 1.0) == 1.0
    assert retry_delay(1, 1.0, 300.0, rng=lambda: 0.0) == 0.5
    assert retry_delay(4, 1.0, 300.0, rng=lambda: 1.0) == 8.0
    assert retry_delay(20, 1.0, 300.0, rng=lambda: 1.0) == 300.0
    assert retry_delay(20, 1.0, 300.0, rng=lambda: 0.0) == 150.0


def test_retry_after_in_seconds_or_as_a_date() -> None:
    assert parse_retry_after("7", 0.0) == 7.0
    assert parse_retry_after("Thu, 01 Jan 1970 00:00:30 GMT", 10.0) == 20.0
    assert parse_retry_after("soon", 0.0) is None
    assert parse_retry_after(None, 0.0) is None


async def test_a_full_queue_drops_the_oldest_and_counts_it() -> None:
    webhooks = Webhooks([hook("http://127.0.0.1:9/never")], max_queue=2)  # not started: nothing sent
    ids = [webhooks.publish("pop", {"n": n}) for n in range(3)]
    assert all(ids) and len(set(ids)) == 3
    (stats,) = webhooks.stats()
    assert (stats.queued, stats.dropped) == (2, 1)
    assert webhooks.publish("wrapup", {}) is not None
    only_pops = Webhooks([hook("http://127.0.0.1:9/never", events=("pop",))])
    assert only_pops.publish("wrapup", {}) is None


async def test_a_500_is_retried_and_delivered_once_with_the_same_delivery_id(receiver: Receiver) -> None:
    receiver.statuses = [500, (429, {"Retry-After": "0"})]
    webhooks = Webhooks([hook(receiver.url)])
    await webhooks.start()
    try:
        delivery_id = webhooks.publish("pop", {"pop_id": "p1", "name": "Müller"})
        await receiver.wait_for(3)
        await asyncio.sleep(0.05)
    finally:
        await webhooks.stop()
    assert len(receiver.requests) == 3
    assert {r.headers["X-Callbridge-Delivery"] for r in receiver.requests} == {delivery_id}
    assert all(receiver_verifies(r) for r in receiver.requests)
    body = receiver.requests[-1].json
    assert body["event"] == "pop" and body["delivery_id"] == delivery_id
    assert body["data"] == {"pop_id": "p1", "name": "Müller"}
    (stats,) = webhooks.stats()
    assert (stats.delivered, stats.retries, stats.failed) == (1, 2, 0)


async def test_a_4xx_is_not_retried_and_the_next_delivery_goes_on(receiver: Receiver) -> None:
    receiver.statuses = [400]
    webhooks = Webhooks([hook(receiver.url)])
    await webhooks.start()
    try:
        webhooks.publish("retract", {"pop_id": "p1"})
        webhooks.publish("retract", {"pop_id": "p2"})
        await receiver.wait_for(2)
        await asyncio.sleep(0.05)
    finally:
        await webhooks.stop()
    assert [r.json["data"]["pop_id"] for r in receiver.requests] == ["p1", "p2"]
    (stats,) = webhooks.stats()
    assert (stats.delivered, stats.failed, stats.retries) == (1, 1, 0)


async def test_an_unreachable_receiver_is_tried_max_attempts_times_then_dropped(receiver: Receiver) -> None:
    webhooks = Webhooks([hook("http://127.0.0.1:1/hook", max_attempts=3)])
    await webhooks.start()
    try:
        webhooks.publish("pop", {"pop_id": "p1"})
        async with asyncio.timeout(5):
            while webhooks.stats()[0].failed == 0:
                await asyncio.sleep(0.01)
    finally:
        await webhooks.stop()
    (stats,) = webhooks.stats()
    assert (stats.retries, stats.failed, stats.delivered) == (2, 1, 0)


def with_hooks(*hooks: WebhookSettings) -> Callable[[Settings], Settings]:
    def configure(settings: Settings) -> Settings:
        return dataclasses.replace(
            settings, screenpop=dataclasses.replace(settings.screenpop, webhooks=hooks)
        )

    return configure


async def test_the_service_posts_each_pop_change_and_the_wrap_up(tmp_path: Path, receiver: Receiver) -> None:
    receiver.statuses = [500]
    async with running(tmp_path, configure=with_hooks(hook(receiver.url))) as run:
        pop_id = await ended_pop(run)
        status, _ = await run.pages["agent1"].post(
            "/agent/wrapup", {"pop_id": pop_id, "disposition": "resolved", "notes": "done"}
        )
        assert status == 200
        async with asyncio.timeout(10):
            while not receiver.events("wrapup"):
                await receiver.wait_for(len(receiver.requests) + 1)
    pops = receiver.events("pop")
    assert (
        len(pops) == 2
        and pops[0].headers["X-Callbridge-Delivery"] == pops[1].headers["X-Callbridge-Delivery"]
    )
    assert all(receiver_verifies(r) for r in receiver.requests)
    pop = pops[-1].json["data"]
    assert pop["pop_id"] == pop_id and pop["agent_id"] == "agent1"
    assert pop["payload"]["customer"]["display_name"] == "Jane Doe"
    assert receiver.events("update")[0].json["data"]["reason"] == "answered"
    assert receiver.events("retract")[0].json["data"]["reason"] == "call_ended"
    (wrapup,) = receiver.events("wrapup")
    outcome = wrapup.json["data"]
    assert outcome["disposition"] == "resolved" and outcome["notes"] == "done"
    assert outcome["customer_id"] == run.customers["jane"] and outcome["talk"] == 4


async def test_a_receiver_that_hangs_does_not_delay_the_pops(tmp_path: Path, receiver: Receiver) -> None:
    receiver.hang = asyncio.Event()
    async with running(tmp_path, configure=with_hooks(hook(receiver.url, timeout=60.0))) as run:
        await ended_pop(run)  # shown, answered and retracted at Alice's page ...
        await receiver.wait_for(1)
        assert len(receiver.requests) == 1  # ... while the first POST still hangs
        (stats,) = run.service.webhooks.stats()
        assert stats.queued >= 2 and stats.delivered == 0
