"""The agent page on a real aiohttp server: login form or desk, escaping, CSP, static files."""

from __future__ import annotations

import tomllib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from fnmatch import fnmatch
from html.parser import HTMLParser
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from screenpop.hub import PopHub, hub_routes
from screenpop.page import CONTENT_SECURITY_POLICY, STATIC_DIR, TEMPLATES_DIR, templates
from screenpop.sessions import AgentAccount, SessionStore, hash_password

ROOT = Path(__file__).resolve().parents[2]
ORIGIN = "http://agents.example"
MARKUP = "<img src=x onerror=alert(1)>"
ACCOUNTS = {"1001": ("Alice", "alice-pw"), "1666": (MARKUP, "mallory-pw")}


class Tags(HTMLParser):
    """Every start tag of a page, with its attributes."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.script_text: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        self._in_script = tag == "script"

    def handle_endtag(self, tag: str) -> None:
        self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.script_text.append(data)


def parse(html: str) -> Tags:
    tags = Tags()
    tags.feed(html)
    return tags


@dataclass
class Server:
    base: str
    sessions: SessionStore
    http: aiohttp.ClientSession

    async def login(self, agent_id: str) -> None:
        resp = await self.http.post(
            f"{self.base}/agent/login", json={"agent_id": agent_id, "password": ACCOUNTS[agent_id][1]}
        )
        assert resp.status == 200, await resp.text()

    async def get(self, path: str) -> tuple[aiohttp.ClientResponse, str]:
        resp = await self.http.get(f"{self.base}{path}")
        return resp, await resp.text()


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    sessions = SessionStore(
        [AgentAccount(a, name, hash_password(pw, n=2**10)) for a, (name, pw) in ACCOUNTS.items()]
    )
    app = web.Application()
    app.add_subapp("/agent/", hub_routes(PopHub(), sessions, allowed_origins=[ORIGIN]))
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        yield Server(f"http://{host}:{port}", sessions, http)
    await runner.cleanup()


def assert_strict_headers(resp: aiohttp.ClientResponse) -> None:
    assert resp.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    assert resp.headers["X-Frame-Options"] == "DENY"


async def test_without_a_session_the_page_is_the_login_form(server: Server) -> None:
    resp, html = await server.get("/agent/")
    assert resp.status == 200
    assert resp.content_type == "text/html"
    assert resp.headers["Cache-Control"] == "no-store"
    assert_strict_headers(resp)
    tags = parse(html)
    forms = [attrs for tag, attrs in tags.tags if tag == "form"]
    assert forms == [{"id": "login-form", "method": "post", "action": "login", "autocomplete": "on"}]
    names = {attrs.get("name") for tag, attrs in tags.tags if tag == "input"}
    assert names == {"agent_id", "password"}
    assert "logout" not in html


async def test_with_a_session_the_desk_and_after_logout_the_form_again(server: Server) -> None:
    await server.login("1001")
    resp, html = await server.get("/agent/")
    assert resp.status == 200
    assert_strict_headers(resp)
    tags = parse(html)
    ids = {attrs.get("id") for _, attrs in tags.tags}
    assert {"agent", "conn", "pops", "logout", "dial-form"} <= ids
    assert 'data-agent-id="1001"' in html and "Alice (1001)" in html
    resp = await server.http.post(f"{server.base}/agent/logout", headers={"Origin": ORIGIN})
    assert resp.status == 200
    _, html = await server.get("/agent/")
    assert 'id="login-form"' in html and 'id="pops"' not in html


async def test_a_name_with_markup_is_text_in_the_html(server: Server) -> None:
    await server.login("1666")
    _, html = await server.get("/agent/")
    assert MARKUP not in html
    assert "&lt;img src=x onerror=alert(1)&gt;" in html
    assert not [attrs for tag, attrs in parse(html).tags if tag == "img"]


@pytest.mark.parametrize("agent", [None, "1001"])
async def test_no_inline_script_or_style_and_only_own_assets(server: Server, agent: str | None) -> None:
    """What the CSP would block must not be on the page in the first place."""
    if agent is not None:
        await server.login(agent)
    _, html = await server.get("/agent/")
    tags = parse(html)
    assert tags.script_text == []
    scripts = [attrs for tag, attrs in tags.tags if tag == "script"]
    assert scripts and all(attrs["src"] and attrs["src"].startswith("/agent/static/") for attrs in scripts)
    for tag, attrs in tags.tags:
        assert "style" not in attrs, tag
        assert not any(name.startswith("on") for name in attrs), (tag, attrs)
    links = [attrs["href"] for tag, attrs in tags.tags if tag == "link"]
    assert links and all(href and href.startswith("/agent/static/") for href in links)


async def test_static_files_with_their_content_types(server: Server) -> None:
    await server.login("1001")
    desk = parse((await server.get("/agent/"))[1])
    await server.http.post(f"{server.base}/agent/logout", headers={"Origin": ORIGIN})
    login = parse((await server.get("/agent/"))[1])
    urls = {attrs["src"] for page in (desk, login) for tag, attrs in page.tags if tag == "script"}
    urls |= {attrs["href"] for page in (desk, login) for tag, attrs in page.tags if tag == "link"}
    seen = {}
    for url in urls:
        assert url is not None
        resp, body = await server.get(url)
        assert resp.status == 200, url
        assert_strict_headers(resp)
        name = url.split("?")[0].rsplit("/", 1)[1]
        assert body == (STATIC_DIR / name).read_text()
        seen[name] = resp.content_type
    assert seen == {
        "agent.css": "text/css",
        "favicon.svg": "image/svg+xml",
        "desk.js": seen["desk.js"],
        "login.js": seen["login.js"],
    }
    assert {seen["desk.js"], seen["login.js"]} <= {"text/javascript", "application/javascript"}
    # Served without a session too: the login page needs them before anyone logs in.
    resp, _ = await server.get("/agent/static/agent.css")
    assert resp.status == 200


async def test_static_files_stay_inside_their_folder(server: Server) -> None:
    for path in ("/agent/static/../page.py", "/agent/static/%2e%2e/page.py", "/agent/static/nope.js"):
        resp, _ = await server.get(path)
        assert resp.status in (403, 404), path


def test_every_template_escapes() -> None:
    env = templates()
    names = sorted(p.name for p in TEMPLATES_DIR.iterdir())
    assert names == env.list_templates()
    for name in names:
        html = env.get_template(name).render(asset=lambda n: f"/s/{n}", agent_id=MARKUP, name=MARKUP)
        assert MARKUP not in html, name
    assert env.from_string("{{ x }}").render(x=MARKUP) == "&lt;img src=x onerror=alert(1)&gt;"


def test_templates_and_static_files_are_package_data() -> None:
    """An installed (not editable) service finds them beside the module, as ``page`` looks there."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["screenpop"]
    package = TEMPLATES_DIR.parent
    files = [p.relative_to(package).as_posix() for d in (TEMPLATES_DIR, STATIC_DIR) for p in d.rglob("*")]
    assert files
    for file in files:
        assert any(fnmatch(file, pattern) for pattern in patterns), file
