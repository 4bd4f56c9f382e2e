"""The agent page in real headless Chromium (Debian's ``chromium``) against the real Service, with
the fake PBX replaying the real ``queue_answered`` capture: agent1 Alice gets Jane Doe's call.

Chromium is driven by Playwright's asyncio API over the system browser (``executable_path``),
never a browser Playwright downloads. Without Chromium or Playwright these tests skip, and fail
when ``CALLBRIDGE_REQUIRE_BROWSER=1`` (scripts/test.sh sets it: CI must run them). Screenshots go
to ``test-artifacts/`` (``CALLBRIDGE_ARTIFACTS`` to change it), which CI keeps.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import shutil
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from callbridge.fakepbx import FakePBX
from callbridge.service import Service
from callbridge.settings import load_settings
from customers.model import Value
from customers.sqlite_store import SQLiteStore
from screenpop import PopAssembler, RetractPop, RetractReason, ShowPop, hash_password

NOON_IN_CALIFORNIA = datetime(2026, 11, 30, 20, 0, tzinfo=UTC).timestamp()

if TYPE_CHECKING:
    from playwright.async_api import Browser, Page

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(os.environ.get("CALLBRIDGE_ARTIFACTS", ROOT / "test-artifacts"))
PASSWORDS = {"agent1": "alice-pw-0001", "agent2": "bob-pw-0002"}
MARKUP = "<img src=x onerror=alert(1)>"
REQUIRE_BROWSER = os.environ.get("CALLBRIDGE_REQUIRE_BROWSER") == "1"


def _chromium() -> str:
    """The system Chromium, or skip (fail when the browser tests are required)."""
    found = shutil.which(os.environ.get("CALLBRIDGE_CHROMIUM") or "chromium")
    problem = None
    if found is None:
        problem = "Debian's chromium is not installed (apt-get install chromium)"
    else:
        try:
            import playwright.async_api  # noqa: F401
        except ImportError:
            problem = "playwright is not installed (pip install -e '.[test]')"
    if problem is not None:
        if REQUIRE_BROWSER:
            pytest.fail(f"CALLBRIDGE_REQUIRE_BROWSER=1 but {problem}", pytrace=False)
        pytest.skip(problem)
    assert found is not None
    return found


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    executable = _chromium()
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        chromium = await playwright.chromium.launch(executable_path=executable, headless=True)
        try:
            yield chromium
        finally:
            await chromium.close()


@dataclass
class Watch:
    """What the page did that it must not: dialogs (an injected ``alert``), script errors, CSP
    refusals, failed requests to its own service."""

    problems: list[str] = field(default_factory=list)

    def attach(self, page: Page) -> None:
        async def dismiss(dialog: Any) -> None:
            self.problems.append(f"dialog: {dialog.message}")
            await dialog.dismiss()

        page.on("dialog", dismiss)
        page.on("pageerror", lambda error: self.problems.append(f"page error: {error}"))
        page.on(
            "console",
            lambda msg: (
                self.problems.append(f"console {msg.type}: {msg.text} {msg.location}")
                if msg.type == "error"
                else None
            ),
        )


async def eventually(check: Callable[[], bool | Awaitable[bool]], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


@asynccontextmanager
async def service_with_pbx(
    tmp_path: Path, store_setup: Callable[[SQLiteStore], Awaitable[None]], scenario: str = "queue_answered"
) -> AsyncIterator[tuple[Service, FakePBX, str]]:
    db = tmp_path / "customers.db"
    async with SQLiteStore(db) as store:
        await store_setup(store)
    base = load_settings(ROOT / "config" / "callbridge.yaml", environ={})
    agents = tuple(
        dataclasses.replace(a, password_hash=hash_password(PASSWORDS[a.id])) if a.id in PASSWORDS else a
        for a in base.agents
    )
    async with FakePBX([scenario], speed=5.0) as pbx:
        pbx.pause_replay(at=0.001)  # hold the call until the agent's page is connected
        settings = dataclasses.replace(
            base,
            agents=agents,
            ami=dataclasses.replace(base.ami, port=pbx.port, backoff_initial=0.05),
            customers=dataclasses.replace(base.customers, database=str(db)),
            http=dataclasses.replace(base.http, port=0),
        )
        async with Service(settings) as service:
            assert await asyncio.wait_for(pbx.wait_paused(), 10)
            yield service, pbx, f"http://127.0.0.1:{service.http_port}"


async def log_in(page: Page, origin: str, agent_id: str, unit: float) -> None:
    await page.goto(f"{origin}/agent/")
    await page.fill("#agent_id", agent_id)
    await page.fill("#password", PASSWORDS[agent_id])
    await page.click("#login-submit")
    await page.wait_for_selector("body.desk[data-conn=live]", timeout=10_000 * unit)


@asynccontextmanager
async def alice_desk(browser: Browser, origin: str, unit: float) -> AsyncIterator[Page]:
    """Alice's desk in a fresh browser context; on leaving, the page must have had no dialog,
    script error or console error (CSP refusals included)."""
    context = await browser.new_context()
    page = await context.new_page()
    watch = Watch()
    watch.attach(page)
    await log_in(page, origin, "agent1", unit)
    yield page
    await context.close()
    assert watch.problems == []


def screenshot_path(name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS / name


async def test_alice_logs_in_sees_jane_does_pop_resumes_and_wraps_up(
    tmp_path: Path, browser: Browser, unit: float
) -> None:
    jane_id = ""

    async def jane(store: SQLiteStore) -> None:
        nonlocal jane_id
        customer = await store.create_customer("Jane Doe", identities=[("phone", "(415) 555-0123")])
        jane_id = customer.id
        await store.add_note(customer.id, "bob", "prefers email follow-ups")

    async with service_with_pbx(tmp_path, jane) as (service, pbx, origin):
        context = await browser.new_context(viewport={"width": 1200, "height": 900})
        page = await context.new_page()
        watch = Watch()
        watch.attach(page)
        pops_received: list[str] = []

        def on_socket(socket: Any) -> None:
            socket.on(
                "framereceived",
                lambda frame: pops_received.append(str(frame)) if '"type": "pop"' in str(frame) else None,
            )

        page.on("websocket", on_socket)
        await log_in(page, origin, "agent1", unit)
        assert await page.locator("#agent").inner_text() == "Alice (agent1)"

        # The call rings Alice; the replay holds before the answer.
        pbx.resume_replay()
        pbx.pause_replay(at=1.0)
        card = page.locator("article.pop")
        await card.filter(has_text="Jane Doe").wait_for(timeout=10_000 * unit)
        assert await asyncio.wait_for(pbx.wait_paused(), 10 * unit)
        assert await card.count() == 1
        assert await card.get_attribute("data-state") == "ringing"
        assert await card.locator("h2.caller").inner_text() == "Jane Doe"
        assert await card.locator(".note-text").inner_text() == "prefers email follow-ups"
        assert await card.locator(".call-queue").inner_text() == "support"
        assert "null" not in await card.inner_text()
        await eventually(lambda: service.hub.latency().count == 1, 5 * unit, "the ack at the hub")
        assert service.hub.latency().unacked == 0
        await page.screenshot(path=screenshot_path("agent-page-pop.png"), full_page=True)

        # A second tab (its own sessionStorage) gets the live pop by replay.
        tab2 = await context.new_page()
        watch.attach(tab2)
        await tab2.goto(f"{origin}/agent/")
        await tab2.locator("article.pop").filter(has_text="Jane Doe").wait_for(timeout=10_000 * unit)
        assert await tab2.locator("article.pop").count() == 1
        await tab2.close()

        # The server closes the socket: the page reconnects, resumes from last_seq, and the
        # pop is neither sent again nor shown twice.
        pops_before = len(pops_received)
        service.hub.close_all()
        await page.wait_for_selector("body[data-conn=reconnecting]", timeout=5_000 * unit)
        await page.wait_for_selector("body[data-conn=live]", timeout=10_000 * unit)
        await eventually(lambda: service.hub.sockets("agent1") == 1, 5 * unit, "the reconnected socket")
        assert len(pops_received) == pops_before
        assert await card.count() == 1

        # A reload shows the card from sessionStorage at once and resumes: still one card.
        await page.reload()
        await page.wait_for_selector("body[data-conn=live]", timeout=10_000 * unit)
        assert await card.count() == 1
        assert len(pops_received) == pops_before

        # Answered: the card says so and offers the wrap-up form.
        pbx.resume_replay()
        pbx.pause_replay(at=3.0)
        await page.wait_for_selector("article.pop[data-state=answered] form.wrapup", timeout=10_000 * unit)
        assert await asyncio.wait_for(pbx.wait_paused(), 10 * unit)
        # The updates carry no payload (hub.py): the card keeps the customer it showed.
        assert await card.locator("h2.caller").inner_text() == "Jane Doe"
        assert await card.locator(".note-text").inner_text() == "prefers email follow-ups"

        # The call ends: the card stays for the wrap-up.
        pbx.resume_replay()
        await page.wait_for_selector("article.pop[data-state=ended]", timeout=10_000 * unit)
        assert await card.locator(".reason").inner_text() == "call ended"
        # Another tab shows the call waiting for its wrap-up too (GET /agent/me).
        tab3 = await context.new_page()
        watch.attach(tab3)
        await tab3.goto(f"{origin}/agent/")
        waiting_elsewhere = tab3.locator("article.pop")
        await waiting_elsewhere.wait_for(timeout=10_000 * unit)
        form = card.locator("form.wrapup")
        await form.locator("select[name=disposition]").select_option("follow_up")
        await form.locator("button[type=submit]").click()
        notes_error = form.locator('.field-error[data-field="notes"]')
        assert await notes_error.inner_text() == "Notes are required for this disposition."
        await form.locator("textarea[name=notes]").fill(f"Invoice 42 queried {MARKUP}")
        await page.screenshot(path=screenshot_path("agent-page-wrapup.png"), full_page=True)
        await form.locator("button[type=submit]").click()
        await card.wait_for(state="detached", timeout=10_000 * unit)
        assert await page.locator("#empty").is_visible()
        # The other tab drops its card at once ("wrapped" over the WebSocket), no reload.
        await waiting_elsewhere.wait_for(state="detached", timeout=5_000 * unit)
        await tab3.close()

        # The wrap-up reached Jane's timeline through the store, with the note as typed.
        assert service.store is not None
        calls = await service.store.timeline(jane_id, channels=["call"])
        assert [(i.summary, i.data["disposition"]) for i in calls] == [
            ("Call (support): Needs follow-up", "follow_up")
        ]
        profile = await service.store.profile(jane_id)
        assert [n.text for n in profile.notes][:1] == [f"Invoice 42 queried {MARKUP}"]
        await page.screenshot(path=screenshot_path("agent-page-done.png"), full_page=True)

        await page.click("#logout")
        await page.wait_for_selector("#login-form", timeout=10_000 * unit)
        await context.close()
        assert watch.problems == []


async def test_markup_in_a_customer_is_text_and_an_unanswered_retract_greys_then_goes(
    tmp_path: Path, browser: Browser, unit: float
) -> None:
    async def mallory(store: SQLiteStore) -> None:
        customer = await store.create_customer(MARKUP, identities=[("phone", "+1 415 555 0199")])
        await store.add_note(customer.id, MARKUP, f"note {MARKUP}")
        await store.append_interaction(customer.id, "email", at=time.time() - 60, summary=f"re: {MARKUP}")
        await store.add_do_not_call("customer", customer.id, source="test", reason="asked twice")
        await store.set_channel_permission(customer.id, "sms", False)
        await store.set_value(customer.id, Value(score=87.0, explanation="orders often"))
        await store.set_segments("vip", [customer.id], time.time())
        for name in ("Ann One", "Ann Two"):
            ann = await store.create_customer(name)
            await store.add_identity(ann.id, "phone", "+1 415 555 0177", shared=True)

    async with service_with_pbx(tmp_path, mallory) as (service, _pbx, origin):
        assert service.store is not None
        async with alice_desk(browser, origin, unit) as page:
            facts: dict[str, Any] = {
                "state": "ringing",
                "direction": "inbound",
                "caller_num": "+14155550199",
                "caller_name": MARKUP,
                "queue": "support",
                "wait_time": 12.0,
                "ringing_since": time.time(),
                "ivr": {
                    "context": "ivr-main",
                    "exten": "s",
                    "application": "AGI",
                    "script": "main",
                    "digits": "24155#",
                    "steps": ["GET DATA enter-account 6000 4", f"SET VARIABLE NAME {MARKUP}"],
                },
            }
            show = ShowPop("x1:agent1:1", "agent1", "x1", facts)
            payload = await PopAssembler(service.store).assemble(show)
            assert payload["match"] == "unique"
            await service.hub.publish(show, payload, t0=time.time())
            card = page.locator("article.pop")
            await card.wait_for(timeout=10_000 * unit)
            assert await card.locator("h2.caller").inner_text() == MARKUP
            assert await card.locator(".note-text").inner_text() == f"note {MARKUP}"
            assert "main" in await card.locator(".ivr").inner_text()
            assert await card.locator(".ivr-digits kbd").inner_text() == "24155#"
            await card.locator(".ivr-steps summary").click()
            assert await card.locator(".ivr-steps li").all_inner_texts() == [
                "GET DATA enter-account 6000 4",
                f"SET VARIABLE NAME {MARKUP}",
            ]
            assert await page.locator("#pops img").count() == 0
            assert await card.locator(".dnc").inner_text() == "Do not call (customer): asked twice"
            assert await card.locator(".consent").inner_text() == "No consent: sms"
            assert await card.locator(".segment").all_inner_texts() == ["vip"]
            assert "87 (orders often)" in await card.locator("dl.profile").inner_text()
            assert await card.locator(".channel-email .summary").inner_text() == f"re: {MARKUP}"
            await eventually(lambda: service.hub.latency().count == 1, 5 * unit, "the ack at the hub")
            await page.screenshot(path=screenshot_path("agent-page-markup.png"), full_page=True)

            # Two customers share a number: the agent picks the caller.
            shared = ShowPop("x2:agent1:1", "agent1", "x2", facts | {"caller_num": "+14155550177"})
            shared_payload = await PopAssembler(service.store).assemble(shared)
            assert shared_payload["match"] == "ambiguous"
            await service.hub.publish(shared, shared_payload, t0=time.time())
            ambiguous = page.locator('article.pop[data-pop-id="x2:agent1:1"]')
            await ambiguous.wait_for(timeout=10_000 * unit)
            assert await ambiguous.locator(".candidate-name").all_inner_texts() == ["Ann One", "Ann Two"]
            await ambiguous.locator(".candidate", has_text="Ann Two").locator("button.pick").click()
            assert await ambiguous.locator(".candidate.chosen .candidate-name").inner_text() == "Ann Two"
            await service.hub.publish(RetractPop(shared.pop_id, "agent1", RetractReason.ANSWERED_ELSEWHERE))
            await ambiguous.and_(page.locator(".phase-gone")).wait_for(timeout=5_000 * unit)

            card = page.locator('article.pop[data-pop-id="x1:agent1:1"]')
            await service.hub.publish(RetractPop(show.pop_id, "agent1", RetractReason.CALLER_HUNG_UP))
            await page.wait_for_selector("article.pop.phase-gone", timeout=5_000 * unit)
            assert await card.locator(".reason").inner_text() == "the caller hung up"
            await card.wait_for(state="detached", timeout=10_000 * unit)
            assert await page.locator("article.pop").count() == 0


async def test_an_unknown_callers_card_creates_the_customer_and_shows_the_profile(
    tmp_path: Path, browser: Browser, unit: float
) -> None:
    async def empty(store: SQLiteStore) -> None:
        return None

    async with service_with_pbx(tmp_path, empty) as (service, pbx, origin):
        assert service.store is not None
        assert service.dialer is not None
        # Inside the calling window of the caller's time zone (08:00-21:00 there), whenever the
        # test runs: the click-to-dial below is refused otherwise.
        service.dialer.clock = lambda: NOON_IN_CALIFORNIA
        async with alice_desk(browser, origin, unit) as page:
            pbx.resume_replay()
            pbx.pause_replay(at=3.0)
            card = page.locator("article.pop[data-state=answered]")
            await card.wait_for(timeout=10_000 * unit)
            assert await card.locator(".match").inner_text() == "Unknown caller: no customer has this number."
            assert await card.locator("form.link-customer").count() == 1
            create = card.locator("form.create-customer")
            await create.locator("input[name=display_name]").fill(MARKUP)
            await create.locator("input[name=email]").fill("jane@example.com")
            await create.locator("button[type=submit]").click()
            await card.locator(".customer").wait_for(timeout=10_000 * unit)
            assert await card.locator("h2.caller").inner_text() == MARKUP
            assert await card.locator("form.create-customer").count() == 0
            created = await service.store.lookup_phone("+14155550123")
            assert [c.customer.display_name for c in created] == [MARKUP]
            customer_id = await card.locator(".customer").get_attribute("data-customer-id")
            assert customer_id == created[0].customer.id
            await page.screenshot(path=screenshot_path("agent-page-created.png"), full_page=True)

            # Click-to-dial from the card: the service asks the PBX to ring Alice's phone first.
            await card.locator("button.dial-number").click()
            status = card.locator(".identity-phone .dial-status")
            await eventually(
                lambda: pbx.actions_named("Originate") != [], 10 * unit, "the Originate at the PBX"
            )
            await page.wait_for_function(
                "s => document.querySelector(s).textContent.startsWith('calling')",
                arg="article.pop .identity-phone .dial-status",
                timeout=5_000 * unit,
            )
            assert await status.inner_text() == "calling +14155550123: your phone rings first"
            originate = pbx.actions_named("Originate")[0]
            assert (originate.get("Exten"), originate.get("Channel")) == (
                "+14155550123",
                "Local/agent1@agents/n",
            )


async def test_an_unknown_callers_number_is_linked_to_a_customer_found_by_name(
    tmp_path: Path, browser: Browser, unit: float
) -> None:
    jane_id = ""

    async def jane_without_phone(store: SQLiteStore) -> None:
        nonlocal jane_id
        jane_id = (await store.create_customer("Jane Doe", identities=[("email", "jane@example.com")])).id

    async with service_with_pbx(tmp_path, jane_without_phone) as (service, pbx, origin):
        assert service.store is not None
        async with alice_desk(browser, origin, unit) as page:
            pbx.resume_replay()
            pbx.pause_replay(at=1.0)
            card = page.locator("article.pop")
            await card.locator("form.link-customer").wait_for(timeout=10_000 * unit)
            link = card.locator("form.link-customer")
            await link.locator("input[name=q]").fill("Jane")
            await link.locator("button[type=submit]").click()
            await link.locator(".link-results button").click()
            await card.locator(f'.customer[data-customer-id="{jane_id}"]').wait_for(timeout=10_000 * unit)
            assert await card.locator("h2.caller").inner_text() == "Jane Doe"
            assert await card.locator(".linked").inner_text() == "Number linked to Jane Doe."
            phones = await card.locator(".identity-phone .value").all_inner_texts()
            assert phones == ["+14155550123"]
            assert [c.customer.id for c in await service.store.lookup_phone("+14155550123")] == [jane_id]


async def test_an_outbound_pop_shows_the_campaign_lead_and_hold_updates_the_card(
    tmp_path: Path, browser: Browser, unit: float
) -> None:
    async def lead(store: SQLiteStore) -> None:
        await store.create_customer("Olivia Lead", customer_id="C-100042")

    async with (
        service_with_pbx(tmp_path, lead, "originate_answered") as (_service, pbx, origin),
        alice_desk(browser, origin, unit) as page,
    ):
        pbx.resume_replay()
        pbx.pause_replay(at=4.0)
        card = page.locator("article.pop[data-state=ringing]")
        await card.wait_for(timeout=10_000 * unit)
        assert await card.locator("h2.caller").inner_text() == "Olivia Lead"
        assert await card.locator(".campaign").inner_text() == "Campaign: renewals-q3 · lead C-100042"
        assert await card.locator(".call-direction").inner_text() == "outbound"


async def test_hold_and_unhold_update_the_card(tmp_path: Path, browser: Browser, unit: float) -> None:
    async def nobody(store: SQLiteStore) -> None:
        return None

    async with (
        service_with_pbx(tmp_path, nobody, "hold_moh") as (_service, pbx, origin),
        alice_desk(browser, origin, unit) as page,
    ):
        pbx.resume_replay()
        pbx.pause_replay(at=10.0)
        card = page.locator("article.pop")
        await page.locator("article.pop[data-state=held]").wait_for(timeout=10_000 * unit)
        assert await card.locator(".badge").inner_text() == "on hold"
        assert await card.locator(".reason").inner_text() == "on hold"
        pbx.resume_replay()
        pbx.pause_replay(at=14.0)
        await page.locator("article.pop[data-state=answered]").wait_for(timeout=10_000 * unit)
        assert await card.locator(".reason").inner_text() == "back from hold"
        assert await card.count() == 1


async def test_a_click_to_dial_card_says_dialing_until_the_customer_answers(
    tmp_path: Path, browser: Browser, unit: float
) -> None:
    """The real click-to-dial capture: Alice's device rings, she picks up (the customer's phone
    rings: "dialing"), the customer answers ("on call")."""

    async def jane(store: SQLiteStore) -> None:
        await store.create_customer("Jane Doe", identities=[("phone", "+14155550123")])

    async with (
        service_with_pbx(tmp_path, jane, "click_to_dial_answered") as (_service, pbx, origin),
        alice_desk(browser, origin, unit) as page,
    ):
        pbx.resume_replay()
        pbx.pause_replay(at=4.0)
        card = page.locator("article.pop")
        await page.locator("article.pop .badge-dialing").wait_for(timeout=10_000 * unit)
        assert await card.locator(".badge").inner_text() == "dialing"
        assert await card.locator(".call-direction").inner_text() == "outbound"
        pbx.resume_replay()
        pbx.pause_replay(at=7.0)
        await page.locator("article.pop .badge-answered").wait_for(timeout=10_000 * unit)
        assert await card.locator(".badge").inner_text() == "on call"
