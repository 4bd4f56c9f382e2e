"""The service's HTTP side: one aiohttp application, the parts mounted on it.

``make_app(service)`` is shared by ``callbridge serve`` and the tests. The customer REST API is
mounted under ``/api/``, the agents' login, pop WebSocket and actions (wrap-up, click-to-dial,
customer create/link: docs/agent-api.md) under ``/agent/``; ``/healthz`` says
whether the PBX link is up, for load balancers and supervisors' monitoring.
"""

from __future__ import annotations

from typing import Final

from aiohttp import web

from callbridge.agents import agent_profiles
from callbridge.agents_api import AgentAdmin, add_agent_routes
from callbridge.pops import webhook_event
from callbridge.service import Service
from customers.api import customer_api
from screenpop import AgentActions, add_action_routes, hub_routes

SERVICE: Final = web.AppKey("callbridge.service", Service)


def make_app(service: Service) -> web.Application:
    app = web.Application()
    app[SERVICE] = service
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/agent", _to_agent_page)
    if service.store is not None:
        api = customer_api(service.store, service.settings.http.api_tokens)
        add_agent_routes(
            api, AgentAdmin(service.agents, service.model, service.sessions, service.bus.publish)
        )
        app.add_subapp("/api/", api)
    agent_app = hub_routes(
        service.hub,
        service.sessions,
        allowed_origins=service.allowed_origins,
        secure_cookie=service.settings.http.secure_cookie,
    )
    if service.store is not None and service.wrapup is not None and service.pops is not None:
        screenpop = service.settings.screenpop
        webhooks = service.webhooks
        add_action_routes(
            agent_app,
            AgentActions(
                agents=agent_profiles(service.agents),
                dispositions=screenpop.dispositions,
                wrapup=service.wrapup,
                store=service.store,
                hub=service.hub,
                assembler=service.pops.assembler,
                dialer=service.dialer,
                wrapup_pause=screenpop.wrapup.pause,
                wrapup_max_seconds=screenpop.wrapup.max_seconds,
                on_update=lambda update, payload: webhooks.publish(*webhook_event(update, payload)),
            ),
        )
    app.add_subapp("/agent/", agent_app)
    return app


async def _to_agent_page(request: web.Request) -> web.Response:
    raise web.HTTPPermanentRedirect("/agent/")


async def healthz(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    client = service.client
    body = {
        "pbx": {
            "name": service.settings.pbx_name,
            "connected": client.connected,
            "session": client.session,
        },
        "calls": len(service.model.live_calls()),
        "customers": service.store is not None,
        "pops": _pop_latency(service),
    }
    return web.json_response(body, status=200 if client.connected else 503)


def _pop_latency(service: Service) -> dict[str, float | int | None]:
    """Pops delivered, from the tracker seeing the ring to the page's ack (the recent samples)."""
    stats = service.hub.latency()

    def ms(value: float | None) -> float | None:
        return round(value * 1000, 2) if value is not None else None

    return {
        "acked": stats.count,
        "p50_ms": ms(stats.p50),
        "p99_ms": ms(stats.p99),
        "max_ms": ms(stats.max),
        "unacked": stats.unacked,
        "retracted_unacked": stats.retracted_unacked,
    }
