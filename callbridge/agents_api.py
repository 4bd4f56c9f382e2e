"""``/api/agents``: supervisors map agents to their devices and queue-member interfaces at run time.

The routes join the customer API's sub-application, so they share its bearer tokens, roles and
JSON errors (``customers.api``): reading needs ``read``, changing an agent ``admin``. What a
change does and how it is kept is in ``callbridge.agents``.

``PUT /api/agents/{id}`` ``{"name", "interfaces": [...], "dial_device", "password"}`` declares or
re-declares an agent (``interfaces`` required; ``password`` optional: without it the agent keeps
the one it had, a new agent without one cannot log in to the page). A device another agent holds
is ``409`` naming that agent. ``DELETE /api/agents/{id}`` takes the agent's devices away and ends
its page sessions.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable
from typing import Any, Final

from aiohttp import web

from callbridge.agents import AgentDirectory
from callbridge.settings import AgentSettings
from cti.model import AgentConfig, CallModel
from cti.model.devices import device_of_interface
from customers.api import ApiError, body_schema, read_json
from screenpop.sessions import AgentAccount, SessionStore, hash_password

log = logging.getLogger(__name__)

_INTERFACE: Final = {"type": "string", "minLength": 3, "maxLength": 200, "pattern": "^[^\\s,|]+$"}
PUT_AGENT: Final = body_schema(
    {
        "name": {"type": "string", "minLength": 1, "maxLength": 200},
        "interfaces": {"type": "array", "minItems": 1, "maxItems": 20, "items": _INTERFACE},
        "dial_device": _INTERFACE,
        "password": {"type": "string", "minLength": 8, "maxLength": 200},
    },
    "interfaces",
)


@dataclasses.dataclass(slots=True)
class AgentAdmin:
    directory: AgentDirectory
    model: CallModel
    sessions: SessionStore
    publish: Callable[[object], None]
    """The bus's ``publish``: the model's changes (``AgentChanged``, a ringing call now an agent's)."""
    clock: Callable[[], float] = time.time

    def view(self, agent: AgentSettings) -> dict[str, Any]:
        live = self.model.agent(agent.id)
        return {
            "id": agent.id,
            "name": agent.name,
            "interfaces": list(agent.interfaces),
            "dial_device": agent.device,
            "can_log_in": bool(agent.password_hash),
            "origin": self.directory.origin(agent.id),
            "status": live.status.value if live else None,
            "queues": list(live.queues) if live else [],
            "paused_reason": live.paused_reason if live else None,
            "call_id": live.call_id if live else None,
        }

    def apply(self, agent: AgentSettings) -> None:
        now = self.clock()
        config = AgentConfig(agent.id, agent.name, agent.interfaces)
        for change in self.model.set_agent(config, now):
            self.publish(change)
        if agent.password_hash:
            self.sessions.add_account(AgentAccount(agent.id, agent.name, agent.password_hash))
        else:
            self.sessions.remove_account(agent.id)


_ADMIN: Final = web.AppKey("callbridge.agents_admin", AgentAdmin)


def add_agent_routes(api: web.Application, admin: AgentAdmin) -> None:
    """Add the routes to the customer API's sub-application (before it is mounted)."""
    api[_ADMIN] = admin
    api.router.add_get("/agents", list_agents)
    api.router.add_get("/agents/{id}", get_agent)
    api.router.add_put("/agents/{id}", put_agent, name="admin_put_agent")
    api.router.add_delete("/agents/{id}", remove_agent, name="admin_remove_agent")


def _agent_id(request: web.Request) -> str:
    agent_id = request.match_info["id"]
    if not agent_id or len(agent_id) > 64 or not agent_id.replace("-", "").replace("_", "").isalnum():
        raise ApiError(400, "invalid-path", "agent id: 1-64 letters, digits, - and _", field="id")
    return agent_id


async def list_agents(request: web.Request) -> web.Response:
    admin = request.app[_ADMIN]
    return web.json_response({"agents": [admin.view(agent) for agent in admin.directory.all()]})


async def get_agent(request: web.Request) -> web.Response:
    admin = request.app[_ADMIN]
    agent = admin.directory.get(_agent_id(request))
    if agent is None:
        raise ApiError(404, "not-found", f"no agent {request.match_info['id']!r}")
    return web.json_response(admin.view(agent))


async def put_agent(request: web.Request) -> web.Response:
    agent_id = _agent_id(request)
    body = await read_json(request, PUT_AGENT)
    admin = request.app[_ADMIN]
    # The only await comes first: from the ownership check to the model's change nothing else
    # runs, so a resync or another request cannot take a device in between.
    new_hash = await asyncio.to_thread(hash_password, body["password"]) if "password" in body else None
    interfaces = tuple(dict.fromkeys(body["interfaces"]))
    for index, interface in enumerate(interfaces):
        owner = admin.model.agent_for_device(device_of_interface(interface))
        if owner is not None and owner != agent_id:
            raise ApiError(
                409, "conflict", f"{interface} is agent {owner!r}'s device", field=f"interfaces[{index}]"
            )
    before = admin.directory.get(agent_id)
    agent = AgentSettings(
        agent_id,
        body.get("name") or (before.name if before else agent_id),
        interfaces,
        new_hash if new_hash is not None else (before.password_hash if before else ""),
        body.get("dial_device", ""),
    )
    admin.directory.put(agent)
    admin.apply(agent)
    log.info(
        "agent %s %s through the API: %s", agent_id, "changed" if before else "added", ", ".join(interfaces)
    )
    return web.json_response(admin.view(agent), status=200 if before else 201)


async def remove_agent(request: web.Request) -> web.Response:
    agent_id = _agent_id(request)
    admin = request.app[_ADMIN]
    agent = admin.directory.remove(agent_id)
    if agent is None:
        raise ApiError(404, "not-found", f"no agent {agent_id!r}")
    for change in admin.model.set_agent(AgentConfig(agent_id, agent.name, ()), admin.clock()):
        admin.publish(change)
    ended = admin.sessions.remove_account(agent_id)
    log.info("agent %s removed through the API (%d page sessions ended)", agent_id, ended)
    return web.Response(status=204)
