"""The agent page: ``GET /agent/`` (the login form or the agent's desk) and its static files.

Rules:

Rule 1 (markup). Every template is rendered with autoescaping on, and the page's script builds the
        pops with ``textContent`` only: a customer's name or note is text, never markup.
Rule 2 (scripts). Every response of the agent sub-app carries ``CONTENT_SECURITY_POLICY``: scripts,
        styles and images from this service only, no inline script or style, no framing, forms
        and connections back to this service only. The page therefore loads nothing from a CDN
        and has no inline ``<script>``; what it needs is in ``screenpop/static/``.
Rule 3 (state). The server renders who is logged in and nothing about pops: the page's script
        gets the pops over the WebSocket (``screenpop.hub``) and the rest from the agent's JSON
        routes, so a reload and a second tab show exactly what the hub says is live.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Final

import jinja2
from aiohttp import web

from screenpop.sessions import SessionStore

__all__ = ["CONTENT_SECURITY_POLICY", "STATIC_DIR", "TEMPLATES_DIR", "add_page_routes", "templates"]

TEMPLATES_DIR: Final = Path(__file__).resolve().parent / "templates"
STATIC_DIR: Final = Path(__file__).resolve().parent / "static"

CONTENT_SECURITY_POLICY: Final = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self'",
        "connect-src 'self'",
        "form-action 'self'",
        "base-uri 'none'",
        "frame-ancestors 'none'",
    )
)
"""Rule 2. ``connect-src 'self'`` covers the page's own ``ws:``/``wss:`` origin (CSP Level 3)."""

_SECURITY_HEADERS: Final = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}


def templates() -> jinja2.Environment:
    """The page's templates, autoescaped whatever their file name (Rule 1)."""
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES_DIR),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


_ENV: Final = web.AppKey("screenpop.page_templates", jinja2.Environment)
_WHO: Final = web.AppKey[Callable[[web.Request], str | None]]("screenpop.page_agent")
_SESSIONS: Final = web.AppKey("screenpop.page_sessions", SessionStore)


def add_page_routes(
    app: web.Application, sessions: SessionStore, agent_of: Callable[[web.Request], str | None]
) -> None:
    """Add ``GET /`` and ``/static/`` to the agent sub-app ``app``; ``agent_of`` says whose live
    session a request carries (``None``: show the login form)."""
    app[_ENV] = templates()
    app[_WHO] = agent_of
    app[_SESSIONS] = sessions
    app.router.add_get("/", _page, name="agent-page")
    app.router.add_static("/static/", STATIC_DIR, name="agent-static", append_version=True)
    app.on_response_prepare.append(_security_headers)


async def _security_headers(request: web.Request, response: web.StreamResponse) -> None:
    for name, value in _SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)


async def _page(request: web.Request) -> web.Response:
    agent_id = request.app[_WHO](request)
    static = request.app.router["agent-static"]

    def asset(name: str) -> str:
        # A versioned URL (``?v=<hash>``): a new release is never mixed with a cached old script.
        return str(static.url_for(filename=name))

    if agent_id is None:
        html = request.app[_ENV].get_template("login.html").render(asset=asset)
    else:
        account = request.app[_SESSIONS].account(agent_id)
        name = account.name if account is not None else agent_id
        html = request.app[_ENV].get_template("desk.html").render(asset=asset, agent_id=agent_id, name=name)
    response = web.Response(text=html, content_type="text/html", charset="utf-8")
    response.headers["Cache-Control"] = "no-store"
    return response
