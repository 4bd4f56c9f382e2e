"""What the agent page does besides showing pops: wrap-up, click-to-dial, and creating or linking
the customer of an unknown caller. JSON routes on the agent sub-app (``hub_routes``), each
behind ``require_agent``; the shapes are written down in docs/agent-api.md.

Every answer that is not a success is ``{"error": {"code", "message", "field"}}`` (``field``:
the body or query field at fault, else ``null``) with 400, 401, 403, 404, 409 or 503.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from aiohttp import web

from customers.identities import is_anonymous, normalise_phone
from customers.model import Customer, IdentityKind
from customers.store import Conflict, CustomerError, CustomerStore, InvalidInput, NotFound
from screenpop.assembly import PopAssembler
from screenpop.dial import ClickToDial
from screenpop.hub import PopHub, require_agent
from screenpop.refusal import Refusal
from screenpop.tracker import ShowPop, UpdatePop, UpdateReason
from screenpop.wrapup import DispositionConfig, WrapupService

__all__ = ["AgentActions", "AgentProfile", "add_action_routes"]

log = logging.getLogger(__name__)

SEARCH_LIMIT: Final = 10
_MAX_TEXT: Final = 200

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True, slots=True)
class AgentProfile:
    id: str
    name: str
    device: str
    """The channel click-to-dial rings first; empty: the agent cannot dial from the page."""


class ActionError(Refusal):
    """A request the page sent wrong."""


@dataclass(slots=True)
class AgentActions:
    """What the routes need; the service builds it (``callbridge.service``)."""

    agents: Mapping[str, AgentProfile]
    dispositions: Sequence[DispositionConfig]
    wrapup: WrapupService
    store: CustomerStore
    hub: PopHub
    assembler: PopAssembler
    dialer: ClickToDial | None = None
    wrapup_pause: bool = False
    wrapup_max_seconds: float = 0.0
    on_update: Callable[[UpdatePop, Mapping[str, Any]], object] | None = None
    """Told of each pop update the routes publish (the webhooks' ``update``)."""


_ACTIONS: Final = web.AppKey("screenpop.actions", AgentActions)


def add_action_routes(app: web.Application, actions: AgentActions) -> None:
    """Add the routes to the agent sub-app ``hub_routes`` returned (before it is mounted)."""
    app[_ACTIONS] = actions
    app.router.add_get("/me", _errors(_me))
    app.router.add_post("/wrapup", _errors(_wrapup))
    app.router.add_post("/dial", _errors(_dial))
    app.router.add_post("/customers", _errors(_create_customer))
    app.router.add_get("/customers", _errors(_search))
    app.router.add_post("/link", _errors(_link))


def error_response(status: int, code: str, message: str, field: str | None = None) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message, "field": field}}, status=status)


def _errors(handler: Handler) -> Handler:
    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except Refusal as exc:
            return error_response(exc.status, exc.code, exc.message, exc.field)
        except NotFound as exc:
            return error_response(404, exc.code, str(exc), getattr(exc, "field", None))
        except InvalidInput as exc:
            return error_response(400, exc.code, str(exc), exc.field)
        except Conflict as exc:
            return error_response(409, exc.code, str(exc))
        except CustomerError as exc:
            log.error("agent %s %s: customer store failed: %s", request.method, request.path, exc)
            return error_response(503, "store-unavailable", "the customer store failed; try again")
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            code = {401: "not-logged-in", 403: "forbidden", 404: "not-found", 405: "method-not-allowed"}
            return error_response(exc.status, code.get(exc.status, "http-error"), exc.text or exc.reason)

    return wrapped


async def _body(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        raise ActionError(400, "invalid-json", "the body must be a JSON object") from None
    if not isinstance(body, dict):
        raise ActionError(400, "invalid-json", "the body must be a JSON object")
    return body


def _text(body: Mapping[str, Any], name: str, *, required: bool, limit: int = _MAX_TEXT) -> str | None:
    value = body.get(name)
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            raise ActionError(400, "missing-field", f"{name} is required", name)
        return None
    if not isinstance(value, str):
        raise ActionError(400, "invalid-field", f"{name} must be a string", name)
    if len(value) > limit:
        raise ActionError(400, "invalid-field", f"{name}: at most {limit} characters", name)
    return value.strip()


async def _me(request: web.Request) -> web.Response:
    agent_id = require_agent(request, changes_state=False)
    actions = request.app[_ACTIONS]
    profile = actions.agents.get(agent_id)
    pending = [
        {
            "pop_id": call.pop_id,
            "call_id": call.call_id,
            "number": call.number,
            "queue": call.facts.get("queue"),
            "customer_id": call.customer_id,
            "ended_at": call.ended_at,
        }
        for call in actions.wrapup.desk.pending(agent_id)
    ]
    return web.json_response(
        {
            "agent_id": agent_id,
            "name": profile.name if profile is not None else agent_id,
            "dispositions": [
                {"code": d.code, "label": d.label, "notes_required": d.notes_required}
                for d in actions.dispositions
            ],
            "can_dial": actions.dialer is not None and profile is not None and bool(profile.device),
            "wrapup_pause": actions.wrapup_pause,
            "wrapup_max_seconds": actions.wrapup_max_seconds,
            "pending_wrapups": pending,
        }
    )


async def _wrapup(request: web.Request) -> web.Response:
    agent_id = require_agent(request, changes_state=True)
    actions = request.app[_ACTIONS]
    body = await _body(request)
    pop_id = _text(body, "pop_id", required=True)
    disposition = _text(body, "disposition", required=True)
    notes = body.get("notes")
    if notes is not None and not isinstance(notes, str):
        raise ActionError(400, "invalid-field", "notes must be a string", "notes")
    customer_id = _text(body, "customer_id", required=False)
    assert pop_id is not None and disposition is not None
    result = await actions.wrapup.submit(agent_id, pop_id, disposition, notes or "", customer_id)
    actions.hub.notify(agent_id, {"type": "wrapped", "pop_id": pop_id})
    return web.json_response(result)


async def _dial(request: web.Request) -> web.Response:
    agent_id = require_agent(request, changes_state=True)
    actions = request.app[_ACTIONS]
    body = await _body(request)
    number = _text(body, "number", required=True, limit=64)
    customer_id = _text(body, "customer_id", required=False)
    profile = actions.agents.get(agent_id)
    if actions.dialer is None or profile is None or not profile.device:
        raise ActionError(403, "dial-not-available", f"agent {agent_id} has no device to dial from")
    assert number is not None
    if customer_id is not None:
        customer_id = (await _customer(actions.store, customer_id)).id
    result = await actions.dialer.dial(agent_id, profile.device, number, customer_id)
    return web.json_response(result, status=202)


async def _create_customer(request: web.Request) -> web.Response:
    agent_id = require_agent(request, changes_state=True)
    actions = request.app[_ACTIONS]
    body = await _body(request)
    pop_id = _text(body, "pop_id", required=True)
    display_name = _text(body, "display_name", required=True)
    email = _text(body, "email", required=False, limit=320)
    assert pop_id is not None and display_name is not None
    call = actions.wrapup.desk.get(agent_id, pop_id)
    identities: list[tuple[IdentityKind | str, str]] = []
    number = call.number
    if number is not None and _is_phone(number, actions):
        identities.append((IdentityKind.PHONE, number))
    if email is not None:
        identities.append((IdentityKind.EMAIL, email))
    try:
        customer = await actions.store.create_customer(
            display_name, identities=identities, source=f"agent:{agent_id}"
        )
    except InvalidInput as exc:
        field = "email" if exc.field.startswith("identities") and email is not None else exc.field
        raise ActionError(400, exc.code, str(exc), field) from None
    log.info("agent %s created customer %s from pop %s", agent_id, customer.id, pop_id)
    updated = await _customer_linked(request, agent_id, pop_id, customer.id)
    return web.json_response(
        {"customer": _summary(customer), "pop_id": pop_id, "pop_updated": updated}, status=201
    )


async def _link(request: web.Request) -> web.Response:
    agent_id = require_agent(request, changes_state=True)
    actions = request.app[_ACTIONS]
    body = await _body(request)
    pop_id = _text(body, "pop_id", required=True)
    customer_id = _text(body, "customer_id", required=True)
    assert pop_id is not None and customer_id is not None
    call = actions.wrapup.desk.get(agent_id, pop_id)
    number = call.number
    if number is None or not _is_phone(number, actions):
        raise ActionError(409, "no-caller-number", "the caller's number is withheld or not a phone number")
    customer = await _customer(actions.store, customer_id)
    identity = await actions.store.add_identity(
        customer.id, IdentityKind.PHONE, number, source=f"agent:{agent_id}"
    )
    log.info("agent %s linked %s to customer %s from pop %s", agent_id, identity.value, customer.id, pop_id)
    updated = await _customer_linked(request, agent_id, pop_id, customer.id)
    return web.json_response(
        {
            "customer": _summary(customer),
            "identity": {"kind": identity.kind.value, "value": identity.value},
            "pop_id": pop_id,
            "pop_updated": updated,
        }
    )


async def _search(request: web.Request) -> web.Response:
    require_agent(request, changes_state=False)
    actions = request.app[_ACTIONS]
    query = request.query.get("q", "").strip()
    if not query:
        raise ActionError(400, "missing-field", "q is required", "q")
    if len(query) > _MAX_TEXT:
        raise ActionError(400, "invalid-field", f"q: at most {_MAX_TEXT} characters", "q")
    found = await actions.store.search(query, limit=SEARCH_LIMIT)
    return web.json_response({"customers": [_summary(c) for c in found]})


async def _customer(store: CustomerStore, customer_id: str) -> Customer:
    try:
        return await store.get_customer(customer_id)
    except (NotFound, InvalidInput):
        raise ActionError(404, "customer-not-found", f"no customer {customer_id!r}", "customer_id") from None


def _is_phone(number: str, actions: AgentActions) -> bool:
    if is_anonymous(number):
        return False
    region = actions.dialer.region if actions.dialer is not None else "US"
    try:
        normalise_phone(number, region)
    except InvalidInput:
        return False
    return True


async def _customer_linked(request: web.Request, agent_id: str, pop_id: str, customer_id: str) -> bool:
    """The pop's wrap-up goes to ``customer_id`` now; a live pop is assembled again and sent to
    the agent's page (``update``, reason ``customer``). Returns whether the pop was live."""
    actions = request.app[_ACTIONS]
    actions.wrapup.desk.set_customer(agent_id, pop_id, customer_id)
    if pop_id not in actions.hub.live(agent_id):
        return False
    call = actions.wrapup.desk.get(agent_id, pop_id)
    payload = await actions.assembler.assemble(ShowPop(pop_id, agent_id, call.call_id, dict(call.facts)))
    if payload.get("customer") is None:
        # The number is on several profiles now (or the lookup failed): still name the one chosen.
        payload["linked_customer_id"] = customer_id
    update = UpdatePop(pop_id, agent_id, dict(call.facts), UpdateReason.CUSTOMER)
    await actions.hub.publish(update, payload)
    if actions.on_update is not None:
        try:
            actions.on_update(update, payload)
        except Exception:
            log.exception("pop %s: the customer update was not published to webhooks", pop_id)
    return True


def _summary(customer: Customer) -> dict[str, Any]:
    return {
        "id": customer.id,
        "display_name": customer.display_name,
        "company": customer.company,
        "phones": [i.value for i in customer.identities if i.kind is IdentityKind.PHONE],
        "emails": [i.value for i in customer.identities if i.kind is IdentityKind.EMAIL],
    }
