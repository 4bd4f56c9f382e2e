"""The customer REST API: how other systems (web shop, ERP, help desk, the dialer) feed and read
the one view of a customer.

``customer_api(store, tokens)`` returns an aiohttp sub-application; the service mounts it with
``app.add_subapp("/api/", customer_api(store, tokens))`` and owns the store's lifecycle (opens it
in a ``cleanup_ctx`` of its own app). ``docs/api.md`` documents every endpoint.

Rule 1: every request is authenticated before anything else, also one for a path that does not
exist: an unauthenticated client learns nothing about the API, not even which routes it has.
The bearer token is compared in constant time (SHA-256 of both sides, ``hmac.compare_digest``,
every configured token compared); a missing token and a wrong one get the same answer.

Rule 2: a body is read under a size cap, parsed, and validated against its schema (unknown fields
included) before the store is touched, so a bad request writes nothing.

Rule 3: a write is one store call, and a store call is one transaction: a create with one bad
identity stores nothing. ``PUT .../consent`` is the exception (one call per channel, then the
quiet hours), so everything it carries is validated first.

Rule 4: every answer that is not a success is ``{"error": {"code", "message"[, "field"]}}`` with a
stable kebab-case ``code``; an unexpected exception is logged with a reference and answered with
a JSON 500 naming that reference, never a traceback or an HTML page.

Rule 5: what a token writes is recorded with ``api:<token name>`` as its source (identities,
interactions, do-not-call entries), author (notes) or actor (merges).

Rule 6: each token has a role. ``read`` may only GET; ``write`` may also create and change
profiles, the timeline, notes and consent; ``admin`` may also merge profiles and remove
do-not-call entries (the two writes that cannot be taken back by another write). A token
without the role gets 403 naming the role needed; a path that does not exist is still 404.

Rule 7: ``POST /customers`` with an ``Idempotency-Key`` header creates at most one customer per
token and key, also across restarts: the key is stored with the profile, in the same
transaction, as an external id of system ``api-request``; a retry answers 200 with that profile.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import math
import re
import secrets
import time
import zoneinfo
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, fields, is_dataclass
from enum import Enum
from functools import partial
from typing import Any, Final, Protocol

import jsonschema
from aiohttp import hdrs, web

from customers.model import Channel, ConsentScope, Identity, IdentityKind, Interaction
from customers.store import Conflict, CustomerError, CustomerStore, InvalidInput

log = logging.getLogger(__name__)

MAX_BODY: Final = 256 * 1024
"""Default cap on a request body, in bytes (a profile with fifty identities is under 20 KiB)."""

MAX_NESTING: Final = 8
"""How deep ``attributes`` and interaction ``data`` may nest: they are stored as JSON and shown
on a screen-pop, not a document store."""

# --- configuration ------------------------------------------------------------------------------


class TokenLike(Protocol):
    """What the API needs of a token: ``callbridge.settings.ApiToken`` is one. A protocol, so the
    customers package does not import the service's settings."""

    @property
    def name(self) -> str: ...

    @property
    def token(self) -> str: ...

    @property
    def role(self) -> str: ...


ROLES: Final = ("read", "write", "admin")


@dataclass(frozen=True, slots=True)
class _Config:
    store: CustomerStore
    clients: tuple[tuple[str, bytes, str], ...]
    """(token name, SHA-256 of the token, role)."""
    max_body: int
    clock: Callable[[], float]


API: Final = web.AppKey("customers.api", _Config)
CLIENT: Final = web.RequestKey("customers.api.client", str)
"""The name of the token that authenticated the request."""
ROLE: Final = web.RequestKey("customers.api.role", str)

IDEMPOTENCY_SYSTEM: Final = "api-request"
"""The external-id system under which ``Idempotency-Key`` values are kept."""
ADMIN_ROUTE_PREFIX: Final = "admin_"
"""Routes whose name starts with this need the ``admin`` role (Rule 6), also ones other parts of
the service add to this sub-application."""

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def customer_api(
    store: CustomerStore,
    tokens: Sequence[TokenLike],
    *,
    max_body: int = MAX_BODY,
    clock: Callable[[], float] = time.time,
) -> web.Application:
    """The API as a sub-application, to mount with ``app.add_subapp("/api/", ...)``.

    ``store`` is used as it is (the caller opens it before serving and closes it after);
    ``tokens`` are the clients allowed in; ``clock`` gives "now" (UTC epoch seconds) for
    ``may-call`` and for interactions posted without ``at``.
    """
    if not tokens:
        log.warning("customer API has no tokens configured: every request will be refused")
    for t in tokens:
        if t.role not in ROLES:
            raise ValueError(f"API token {t.name!r}: role {t.role!r} is not one of {', '.join(ROLES)}")
    app = web.Application(middlewares=[_errors, _authenticate])
    app[API] = _Config(
        store=store,
        clients=tuple((t.name, _digest(t.token), t.role) for t in tokens),
        max_body=max_body,
        clock=clock,
    )
    r = app.router
    r.add_get("/customers", lookup_customers)
    r.add_post("/customers", create_customer)
    r.add_get("/customers/{id}", get_profile, name="customer")
    r.add_patch("/customers/{id}", update_customer)
    r.add_post("/customers/{id}/identities", add_identity)
    r.add_delete("/customers/{id}/identities/{kind}/{value}", remove_identity)
    r.add_get("/customers/{id}/interactions", list_interactions)
    r.add_post("/customers/{id}/interactions", append_interaction)
    r.add_get("/customers/{id}/notes", list_notes)
    r.add_post("/customers/{id}/notes", add_note)
    r.add_get("/customers/{id}/consent", get_consent)
    r.add_put("/customers/{id}/consent", put_consent)
    r.add_post("/customers/{id}/merge", merge_customers, name="admin_merge")
    r.add_post("/do-not-call", add_do_not_call)
    r.add_delete("/do-not-call", remove_do_not_call, name="admin_remove_do_not_call")
    r.add_get("/may-call", may_call)
    return app


# --- errors and middlewares ---------------------------------------------------------------------


class ApiError(Exception):
    """An answer other than success, raised anywhere below a handler."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        field: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.headers = dict(headers or {})


_dumps = partial(json.dumps, ensure_ascii=False, allow_nan=False)


def _json(data: object, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.json_response(data, status=status, headers=headers, dumps=_dumps)


def error_response(
    status: int,
    code: str,
    message: str,
    field: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    body: dict[str, str] = {"code": code, "message": message}
    if field:
        body["field"] = field
    return _json({"error": body}, status=status, headers=headers)


def _store_message(exc: CustomerError) -> str:
    """The store's message without the field prefix ``InvalidInput`` puts in front of it."""
    text = str(exc)
    field = getattr(exc, "field", None)
    return text.removeprefix(f"{field}: ") if field else text


_HTTP_CODES: Final = {404: "not-found", 405: "method-not-allowed", 413: "body-too-large"}


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        return error_response(exc.status, exc.code, exc.message, exc.field, exc.headers)
    except CustomerError as exc:
        if exc.status == 503:
            # Busy (another writer past the busy timeout) or not open: nothing was written; a
            # retry shortly is the answer, so say when.
            log.warning("customer API: %s %s: %s", request.method, request.path, exc)
            return error_response(
                503,
                exc.code,
                "the customer store is busy; nothing was written, try again",
                headers={"Retry-After": "1"},
            )
        if exc.status >= 500:
            # Storage trouble: the details (file paths, SQL) are for the log, not the client.
            ref = secrets.token_hex(4)
            log.error("customer API: %s %s: %s (ref %s)", request.method, request.path, exc, ref)
            return error_response(exc.status, exc.code, f"the customer store failed; logged as ref {ref}")
        return error_response(exc.status, exc.code, str(exc), getattr(exc, "field", None))
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        # The router's own answers (no such route, wrong method) in our format; Allow is kept.
        headers = {k: v for k, v in exc.headers.items() if k == hdrs.ALLOW}
        code = _HTTP_CODES.get(exc.status, exc.reason.lower().replace(" ", "-"))
        message = (
            f"no such endpoint: {request.method} {request.path}"
            if exc.status == 404
            else f"{request.method} is not allowed on {request.path}"
            if exc.status == 405
            else exc.reason
        )
        return error_response(exc.status, code, message, headers=headers)
    except Exception:
        ref = secrets.token_hex(4)
        log.exception(
            "customer API: %s %s failed (ref %s, client %s)",
            request.method,
            request.path,
            ref,
            request.get(CLIENT, "-"),
        )
        return error_response(500, "internal-error", f"internal error; it is logged as ref {ref}")


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


def _client_of(header: str, clients: Sequence[tuple[str, bytes, str]]) -> tuple[str, str] | None:
    scheme, _, presented = header.strip().partition(" ")
    presented = presented.strip()
    if scheme.lower() != "bearer" or not presented:
        return None
    # Digests have one length whatever was sent, and every token is compared: the time taken
    # says neither how much of a token matched nor which one.
    digest = _digest(presented)
    found = None
    for name, expected, role in clients:
        if hmac.compare_digest(digest, expected) and found is None:
            found = (name, role)
    return found


@web.middleware
async def _authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
    client = _client_of(request.headers.get(hdrs.AUTHORIZATION, ""), request.app[API].clients)
    if client is None:
        log.warning(
            "customer API: refused %s %r from %s: no valid token",
            request.method,
            request.path,
            request.remote,
        )
        raise ApiError(
            401,
            "unauthorized",
            "a valid API token is required: Authorization: Bearer <token>",
            headers={hdrs.WWW_AUTHENTICATE: 'Bearer realm="callbridge"'},
        )
    name, role = client
    request[CLIENT], request[ROLE] = name, role
    needed = _role_needed(request)
    if needed is not None and ROLES.index(role) < ROLES.index(needed):
        log.warning(
            "customer API: token %s (role %s) refused %s %s", name, role, request.method, request.path
        )
        raise ApiError(
            403,
            "forbidden",
            f"token {name!r} has the {role} role; {request.method} {request.path} needs {needed}",
        )
    return await handler(request)


def _role_needed(request: web.Request) -> str | None:
    """``None`` for a path or method the router refuses anyway (its 404 / 405 is the answer)."""
    match_info = request.match_info
    if match_info.http_exception is not None:
        return None
    if request.method in (hdrs.METH_GET, hdrs.METH_HEAD):
        return "read"
    name = match_info.route.name or ""
    return "admin" if name.startswith(ADMIN_ROUTE_PREFIX) else "write"


def _source(request: web.Request) -> str:
    return f"api:{request[CLIENT]}"


# --- bodies -------------------------------------------------------------------------------------


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


async def read_json(request: web.Request, validator: Any) -> dict[str, Any]:
    """The body, capped, parsed and validated; ``ApiError`` (400, 413, 422) otherwise."""
    cap = request.app[API].max_body
    length = request.content_length
    if length is not None and length > cap:
        raise ApiError(413, "body-too-large", f"the body is {length} bytes; the limit is {cap}")
    raw = bytearray()
    while chunk := await request.content.read(cap + 1 - len(raw)):
        raw += chunk
        if len(raw) > cap:
            raise ApiError(413, "body-too-large", f"the body is over the limit of {cap} bytes")
    if not raw.strip():
        raise ApiError(400, "malformed-json", "the body is empty; a JSON object is expected")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ApiError(400, "malformed-json", f"the body is not UTF-8 (byte {exc.start})") from None
    try:
        data = json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise ApiError(
            400,
            "malformed-json",
            f"the body is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}"
            f" (character {exc.pos})",
        ) from None
    except RecursionError:
        raise ApiError(400, "malformed-json", "the body nests too deep to be read") from None
    except ValueError as exc:
        raise ApiError(400, "malformed-json", f"the body is not valid JSON: {exc}") from None
    _validate(validator, data)
    assert isinstance(data, dict)  # the schemas all ask for an object
    return data


def _field(path: Sequence[object]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else f".{part}" if out else str(part)
    return out


_TYPE_NAMES: Final = {
    "string": "a string",
    "number": "a number",
    "integer": "an integer",
    "object": "an object",
    "array": "an array",
    "boolean": "true or false",
    "null": "null",
}


def _describe(error: Any) -> str:
    """A short message for a schema error; jsonschema's own repeat the (possibly huge) value."""
    kind, limit, schema = error.validator, error.validator_value, error.schema
    if kind == "type":
        names = [limit] if isinstance(limit, str) else limit
        return "must be " + " or ".join(_TYPE_NAMES.get(n, n) for n in names)
    if kind == "enum":
        return "must be one of " + ", ".join(json.dumps(v) for v in limit)
    if kind == "const":
        return f"must be {json.dumps(limit)}"
    if kind == "minLength":
        return "must not be empty" if limit == 1 else f"must be at least {limit} characters"
    if kind == "maxLength":
        return f"must be at most {limit} characters"
    if kind in ("pattern", "format"):
        return str(schema.get("x-message", f"does not match {limit}"))
    if kind in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        return str(schema.get("x-message", error.message))
    if kind == "minItems":
        return f"must have at least {limit} item{'s' if limit != 1 else ''}"
    if kind == "maxItems":
        return f"must have at most {limit} items"
    if kind == "minProperties":
        return str(schema.get("x-message", f"must have at least {limit} field(s)"))
    if kind == "maxProperties":
        return f"must have at most {limit} fields"
    message: str = error.message
    return message if len(message) <= 200 else message[:200] + "..."


def _validate(validator: Any, data: object) -> None:
    errors = sorted(validator.iter_errors(data), key=lambda e: [str(p) for p in e.absolute_path])
    unknown = []
    for error in errors:
        if error.validator == "additionalProperties" and isinstance(error.instance, dict):
            known = set(error.schema.get("properties", {}))
            path = list(error.absolute_path)
            unknown += [_field([*path, name]) for name in sorted(set(error.instance) - known)]
    if unknown:
        raise ApiError(
            422,
            "unknown-field",
            f"unknown field{'s' if len(unknown) > 1 else ''}: " + ", ".join(unknown),
            field=unknown[0],
        )
    for error in errors:
        path = list(error.absolute_path)
        if error.validator == "required":
            missing = [name for name in error.validator_value if name not in error.instance]
            raise ApiError(
                422,
                "invalid-input",
                f"{_field([*path, missing[0]])} is required",
                field=_field([*path, missing[0]]),
            )
        where = _field(path)
        if not where:
            message = _describe(error)
            raise ApiError(
                422, "invalid-input", f"the body {message}" if error.validator == "type" else message
            )
        raise ApiError(422, "invalid-input", f"{where} {_describe(error)}", field=where)


def _nesting(value: object, depth: int = 0) -> int:
    if depth > MAX_NESTING:
        return depth
    if isinstance(value, dict):
        return max((_nesting(v, depth + 1) for v in value.values()), default=depth + 1)
    if isinstance(value, list):
        return max((_nesting(v, depth + 1) for v in value), default=depth + 1)
    return depth


def _check_free_form(body: Mapping[str, Any], name: str) -> None:
    if name in body and _nesting(body[name]) > MAX_NESTING:
        raise ApiError(422, "invalid-input", f"{name} nests deeper than {MAX_NESTING} levels", field=name)


def _check_timezone(body: Mapping[str, Any]) -> None:
    zone = body.get("timezone")
    if not zone:
        return
    try:
        zoneinfo.ZoneInfo(zone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
        raise ApiError(
            422,
            "invalid-input",
            f"timezone {zone!r} is not an IANA time zone such as Europe/Berlin",
            field="timezone",
        ) from None


# --- schemas ------------------------------------------------------------------------------------


def _text(max_length: int, min_length: int = 0) -> dict[str, Any]:
    return (
        {"type": "string", "minLength": min_length, "maxLength": max_length}
        if min_length
        else {"type": "string", "maxLength": max_length}
    )


_HHMM: Final[dict[str, Any]] = {
    "type": "string",
    "pattern": "^([01][0-9]|2[0-3]):[0-5][0-9]$",
    "x-message": "must be a local time HH:MM (00:00 to 23:59)",
}
_CHANNELS: Final = [c.value for c in Channel]
_KINDS: Final = [k.value for k in IdentityKind]
_SYSTEM_KINDS: Final = ("external", "im")

_IDENTITY: Final[dict[str, Any]] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["kind", "value"],
    "properties": {
        "kind": {"enum": _KINDS},
        "value": {**_text(320, 1), "pattern": r"\S", "x-message": "must not be blank"},
        "system": {
            "type": "string",
            "maxLength": 64,
            "pattern": "^[A-Za-z0-9][A-Za-z0-9_.-]*$|^$",
            "x-message": "must be a system name such as shop or erp (letters, digits, _ . -)",
        },
        "label": _text(64),
        "shared": {"type": "boolean"},
    },
    "allOf": [
        {
            # External ids and IM handles mean nothing without the system they belong to.
            "if": {"properties": {"kind": {"enum": list(_SYSTEM_KINDS)}}, "required": ["kind"]},
            "then": {"required": ["system"], "properties": {"system": {"minLength": 1}}},
        },
    ],
}

_PROFILE_FIELDS: Final[dict[str, Any]] = {
    "display_name": {**_text(200, 1), "pattern": r"\S", "x-message": "must not be blank"},
    "given_name": _text(200),
    "family_name": _text(200),
    "company": _text(200),
    "language": {
        "type": "string",
        "pattern": "^$|^[A-Za-z]{2,3}(-[A-Za-z0-9]{1,8})*$",
        "x-message": "must be a language tag such as en or pt-BR",
    },
    "timezone": _text(64),
    "birthday": {
        "type": "string",
        "pattern": r"^$|^([0-9]{4}|-)-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])$",
        "x-message": "must be YYYY-MM-DD, or --MM-DD when the year is unknown",
    },
    "attributes": {"type": "object", "maxProperties": 200},
}
_NAME_FIELDS: Final = ("given_name", "family_name", "company", "language", "timezone", "birthday")

_EPOCH: Final[dict[str, Any]] = {
    "type": "number",
    "minimum": 0,
    # 2100-01-01: a larger number is almost surely milliseconds.
    "maximum": 4102444800,
    "x-message": "must be UTC epoch seconds (not milliseconds)",
}


def body_schema(properties: Mapping[str, Any], *required: str, **extra: Any) -> Any:
    schema = {"type": "object", "additionalProperties": False, "properties": dict(properties), **extra}
    if required:
        schema["required"] = list(required)
    validator = jsonschema.Draft202012Validator(schema)
    validator.check_schema(schema)
    return validator


CREATE: Final = body_schema(
    {**_PROFILE_FIELDS, "identities": {"type": "array", "maxItems": 50, "items": _IDENTITY}}, "display_name"
)
UPDATE: Final = body_schema(
    _PROFILE_FIELDS, minProperties=1, **{"x-message": "nothing to update: give at least one field"}
)
IDENTITY: Final = body_schema(_IDENTITY["properties"], "kind", "value", allOf=_IDENTITY["allOf"])
INTERACTION: Final = body_schema(
    {
        "channel": {"enum": _CHANNELS},
        "at": _EPOCH,
        "direction": {"enum": ["", "inbound", "outbound", "internal"]},
        "summary": _text(4000),
        "data": {"type": "object", "maxProperties": 100},
        "external_id": _text(200, 1),
    },
    "channel",
)
NOTE: Final = body_schema(
    {
        "text": {**_text(10000, 1), "pattern": r"\S", "x-message": "must not be blank"},
        "pinned": {"type": "boolean"},
    },
    "text",
)
CONSENT: Final = body_schema(
    {
        "channels": {
            "type": "object",
            "additionalProperties": False,
            "properties": {c: {"type": "boolean"} for c in _CHANNELS},
        },
        "quiet_hours": {
            "type": ["array", "null"],
            "prefixItems": [_HHMM, _HHMM],
            "minItems": 2,
            "maxItems": 2,
        },
    },
    minProperties=1,
    **{"x-message": "nothing to change: give channels, quiet_hours or both"},
)
DO_NOT_CALL: Final = body_schema(
    {
        "scope": {"enum": [s.value for s in ConsentScope]},
        "target": {**_text(200, 1), "pattern": r"\S", "x-message": "must not be blank"},
        "reason": _text(500),
        "until": {**_EPOCH, "type": ["number", "null"]},
    },
    "scope",
    "target",
)
MERGE: Final = body_schema({"merge": _text(200, 1)}, "merge")


# --- query parameters ---------------------------------------------------------------------------


def _query(request: web.Request, *allowed: str) -> dict[str, str]:
    unknown = sorted(set(request.query) - set(allowed))
    if unknown:
        expected = ", ".join(allowed) if allowed else "none"
        raise ApiError(
            400,
            "invalid-query",
            f"unknown query parameter{'s' if len(unknown) > 1 else ''} {', '.join(unknown)};"
            f" expected: {expected}",
            field=unknown[0],
        )
    out = {}
    for name in request.query:
        values = request.query.getall(name)
        if len(values) > 1:
            raise ApiError(400, "invalid-query", f"{name} is given more than once", field=name)
        out[name] = values[0].strip()
    return out


def _number(
    query: Mapping[str, str], name: str, *, integer: bool = False, low: float = 0, high: float = math.inf
) -> float | None:
    text = query.get(name)
    if text is None or text == "":
        return None
    try:
        value = int(text) if integer else float(text)
    except ValueError:
        raise ApiError(
            400, "invalid-query", f"{name} must be {'an integer' if integer else 'a number'}", field=name
        ) from None
    if not (low <= value <= high) or math.isnan(value):
        bound = f"{low:g}..{high:g}" if high != math.inf else f">= {low:g}"
        raise ApiError(400, "invalid-query", f"{name} must be in {bound}", field=name)
    return value


def _limit(query: Mapping[str, str], name: str, default: int, high: int, low: int = 1) -> int:
    value = _number(query, name, integer=True, low=low, high=high)
    return default if value is None else int(value)


def _identity_error(exc: CustomerError) -> ApiError:
    """A store error about the one identity of a body: the store names it ``identity.value``
    (``identity`` for a conflict), the body calls it ``value``."""
    field = getattr(exc, "field", None) or ""
    renamed = field.removeprefix("identity").lstrip(".") if field.startswith("identity") else field
    message = _store_message(exc) if field else str(exc)
    return ApiError(exc.status, exc.code, f"{renamed}: {message}" if renamed else message, renamed or None)


def _query_store_error(exc: InvalidInput, field: str) -> ApiError:
    """A store complaint about a value that came from the query string."""
    return ApiError(400, "invalid-query", f"{field}: {_store_message(exc)}", field=field)


# --- JSON out -----------------------------------------------------------------------------------


def plain(value: object) -> Any:
    """The model's values as JSON: dataclasses to objects, enums to their values, tuples to lists."""
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


def _location(request: web.Request, customer_id: str) -> dict[str, str]:
    return {hdrs.LOCATION: str(request.app.router["customer"].url_for(id=customer_id))}


# --- profiles -----------------------------------------------------------------------------------


async def get_profile(request: web.Request) -> web.Response:
    query = _query(request, "per_channel", "notes")
    profile = await request.app[API].store.profile(
        request.match_info["id"],
        per_channel=_limit(query, "per_channel", 3, 50),
        notes=_limit(query, "notes", 5, 100, low=0),
    )
    return _json(plain(profile))


_LOOKUP_KEYS: Final = ("phone", "email", "member", "external", "im", "q")


async def lookup_customers(request: web.Request) -> web.Response:
    query = _query(request, *_LOOKUP_KEYS, "region", "limit")
    given = [k for k in _LOOKUP_KEYS if k in query]
    if len(given) != 1:
        raise ApiError(
            400,
            "invalid-query",
            "give exactly one of "
            + ", ".join(_LOOKUP_KEYS)
            + (f" (got {', '.join(given)})" if given else ""),
            field=given[1] if len(given) > 1 else None,
        )
    key = given[0]
    value = query[key]
    if not value:
        raise ApiError(400, "invalid-query", f"{key} must not be empty", field=key)
    if "region" in query and key != "phone":
        raise ApiError(400, "invalid-query", "region only goes with phone", field="region")
    if "limit" in query and key != "q":
        raise ApiError(
            400, "invalid-query", "limit only goes with q; a lookup gives every holder", field="limit"
        )
    store = request.app[API].store
    try:
        if key == "q":
            found = await store.search(value, limit=_limit(query, "limit", 20, 100))
            return _json({"query": {"q": value}, "customers": plain(found)})
        if key == "phone":
            region = query.get("region") or None
            if region is not None and not re.fullmatch("[A-Z]{2}", region):
                raise ApiError(
                    400,
                    "invalid-query",
                    "region must be an ISO country code such as US or DE",
                    field="region",
                )
            candidates = await store.lookup_phone(value, region=region)
        elif key in _SYSTEM_KINDS:
            system, sep, ident = value.partition(":")
            if not (sep and system.strip() and ident.strip()):
                raise ApiError(400, "invalid-query", f"{key} must be system:id, e.g. shop:10042", field=key)
            candidates = await store.lookup(key, ident.strip(), system=system.strip())
        else:
            candidates = await store.lookup(key, value)
    except InvalidInput as exc:
        raise _query_store_error(exc, key) from None
    return _json({"query": {key: value}, "candidates": plain(candidates)})


def _profile_fields(body: Mapping[str, Any]) -> dict[str, str]:
    return {name: body[name] for name in _NAME_FIELDS if name in body}


def _identity(item: Mapping[str, Any], source: str) -> Identity:
    value = item["value"].strip()
    return Identity(
        kind=IdentityKind(item["kind"]),
        value=value,
        system=item.get("system", "").strip(),
        raw=value,
        label=item.get("label", ""),
        shared=item.get("shared", False),
        source=source,
    )


_IDEMPOTENCY_KEY: Final = re.compile(r"[\x21-\x7e]{1,128}")


async def create_customer(request: web.Request) -> web.Response:
    key = request.headers.get("Idempotency-Key")
    if key is not None and not _IDEMPOTENCY_KEY.fullmatch(key):
        raise ApiError(
            400, "invalid-header", "Idempotency-Key: 1-128 visible ASCII characters", field="Idempotency-Key"
        )
    body = await read_json(request, CREATE)
    _check_timezone(body)
    _check_free_form(body, "attributes")
    source = _source(request)
    store = request.app[API].store
    identities = [_identity(item, source) for item in body.get("identities", ())]
    request_id = f"{request[CLIENT]}:{key}" if key is not None else None
    if request_id is not None:
        if (replayed := await _created_by(store, request_id)) is not None:
            return replayed
        identities.append(
            Identity(IdentityKind.EXTERNAL, request_id, system=IDEMPOTENCY_SYSTEM, source=source)
        )
    try:
        customer = await store.create_customer(
            body["display_name"].strip(),
            identities=identities,
            attributes=body.get("attributes"),
            source=source,
            **_profile_fields(body),
        )
    except Conflict:
        # A concurrent retry with the same key won the race: its customer is the answer.
        if request_id is not None and (replayed := await _created_by(store, request_id)) is not None:
            return replayed
        raise
    log.info("customer API: %s created customer %s", source, customer.id)
    return _json(plain(customer), status=201, headers=_location(request, customer.id))


async def _created_by(store: CustomerStore, request_id: str) -> web.Response | None:
    found = await store.lookup(IdentityKind.EXTERNAL, request_id, system=IDEMPOTENCY_SYSTEM)
    if not found:
        return None
    return _json(plain(found[0].customer), status=200, headers={"Idempotent-Replayed": "true"})


async def update_customer(request: web.Request) -> web.Response:
    body = await read_json(request, UPDATE)
    _check_timezone(body)
    _check_free_form(body, "attributes")
    fields_ = _profile_fields(body)
    if "display_name" in body:
        fields_["display_name"] = body["display_name"].strip()
    customer = await request.app[API].store.update_customer(
        request.match_info["id"], attributes=body.get("attributes"), **fields_
    )
    return _json(plain(customer))


async def add_identity(request: web.Request) -> web.Response:
    body = await read_json(request, IDENTITY)
    customer_id = request.match_info["id"]
    identity = _identity(body, _source(request))
    try:
        stored = await request.app[API].store.add_identity(
            customer_id,
            identity.kind,
            identity.value,
            system=identity.system,
            label=identity.label,
            shared=identity.shared,
            source=identity.source,
        )
    except (InvalidInput, Conflict) as exc:
        raise _identity_error(exc) from None
    return _json(plain(stored), status=201, headers=_location(request, customer_id))


async def remove_identity(request: web.Request) -> web.Response:
    _query(request)
    kind, value = request.match_info["kind"], request.match_info["value"].strip()
    if kind not in _KINDS:
        raise ApiError(
            404, "not-found", f"no identity kind {kind!r}; one of {', '.join(_KINDS)}", field="kind"
        )
    system = ""
    if kind in _SYSTEM_KINDS:
        system, sep, value = value.partition(":")
        if not (sep and system and value):
            raise ApiError(
                404, "not-found", f"a {kind} identity is addressed as system:id (shop:10042)", field="value"
            )
    try:
        await request.app[API].store.remove_identity(request.match_info["id"], kind, value, system)
    except InvalidInput as exc:
        raise _identity_error(exc) from None
    return web.Response(status=204)


async def merge_customers(request: web.Request) -> web.Response:
    body = await read_json(request, MERGE)
    source = _source(request)
    keep_id = request.match_info["id"]
    customer = await request.app[API].store.merge(keep_id, body["merge"].strip(), actor=source)
    log.info("customer API: %s merged customer %s into %s", source, body["merge"], customer.id)
    return _json(plain(customer))


# --- timeline and notes -------------------------------------------------------------------------


def _same_content(stored: Interaction, submitted: Mapping[str, Any]) -> bool:
    return bool(
        stored.channel.value == submitted["channel"]
        and stored.at == submitted["at"]
        and stored.direction == submitted["direction"]
        and stored.summary == submitted["summary"]
        and stored.data == submitted["data"]
    )


async def append_interaction(request: web.Request) -> web.Response:
    body = await read_json(request, INTERACTION)
    _check_free_form(body, "data")
    config = request.app[API]
    store = config.store
    customer_id = request.match_info["id"]
    source = _source(request)
    external_id = body.get("external_id", "")
    submitted = {
        "channel": body["channel"],
        "at": float(body["at"]) if "at" in body else config.clock(),
        "direction": body.get("direction", ""),
        "summary": body.get("summary", ""),
        "data": body.get("data", {}),
    }
    # The store answers a repeated (source, external_id) with the stored interaction; whether it
    # was there already decides 200 or 201. A stored one that differs from this body was there;
    # one that is equal was there if the timeline held it at that instant before the append.
    seen_before = False
    if external_id and "at" in body:
        prior = await store.timeline(
            customer_id,
            channels=[body["channel"]],
            before=math.nextafter(submitted["at"], math.inf),
            limit=20,
        )
        seen_before = any(i.source == source and i.external_id == external_id for i in prior)
    try:
        stored = await store.append_interaction(
            customer_id,
            body["channel"],
            at=submitted["at"],
            direction=submitted["direction"],
            summary=submitted["summary"],
            data=submitted["data"],
            source=source,
            external_id=external_id,
        )
    except Conflict as exc:
        # The key is already used on another customer's timeline.
        raise ApiError(exc.status, exc.code, str(exc), "external_id") from None
    existed = bool(external_id) and (seen_before or not _same_content(stored, submitted))
    return _json(plain(stored), status=200 if existed else 201)


async def list_interactions(request: web.Request) -> web.Response:
    query = _query(request, "channel", "before", "limit")
    channels = None
    if query.get("channel"):
        channels = [c.strip() for c in query["channel"].split(",") if c.strip()]
        bad = [c for c in channels if c not in _CHANNELS]
        if bad:
            raise ApiError(
                400,
                "invalid-query",
                f"unknown channel {bad[0]!r}; one of {', '.join(_CHANNELS)}",
                field="channel",
            )
    limit = _limit(query, "limit", 50, 500)
    items = await request.app[API].store.timeline(
        request.match_info["id"], channels=channels, before=_number(query, "before"), limit=limit
    )
    next_before = items[-1].at if len(items) == limit else None
    return _json({"interactions": plain(items), "next_before": next_before})


async def add_note(request: web.Request) -> web.Response:
    body = await read_json(request, NOTE)
    note = await request.app[API].store.add_note(
        request.match_info["id"], _source(request), body["text"], pinned=body.get("pinned", False)
    )
    return _json(plain(note), status=201)


async def list_notes(request: web.Request) -> web.Response:
    query = _query(request, "limit")
    notes = await request.app[API].store.notes(
        request.match_info["id"], limit=_limit(query, "limit", 20, 200)
    )
    return _json({"notes": plain(notes)})


# --- consent ------------------------------------------------------------------------------------


async def get_consent(request: web.Request) -> web.Response:
    _query(request)
    return _json(plain(await request.app[API].store.consent(request.match_info["id"])))


async def put_consent(request: web.Request) -> web.Response:
    body = await read_json(request, CONSENT)
    store = request.app[API].store
    customer_id = request.match_info["id"]
    # Validated as a whole above; the store has one call per setting, so make sure the profile
    # exists before the first of them rather than failing half-way.
    await store.get_customer(customer_id)
    consent = None
    for channel, allowed in sorted(body.get("channels", {}).items()):
        consent = await store.set_channel_permission(customer_id, channel, allowed)
    if "quiet_hours" in body:
        hours = body["quiet_hours"]
        start, end = (hours[0], hours[1]) if hours else (None, None)
        consent = await store.set_quiet_hours(customer_id, start, end)
    if consent is None:
        consent = await store.consent(customer_id)
    return _json(plain(consent))


async def add_do_not_call(request: web.Request) -> web.Response:
    body = await read_json(request, DO_NOT_CALL)
    source = _source(request)
    target = body["target"].strip()
    entry = {
        "scope": body["scope"],
        "target": target,
        "source": source,
        "reason": body.get("reason", ""),
        "until": body.get("until"),
    }
    await request.app[API].store.add_do_not_call(
        body["scope"], target, source=source, reason=entry["reason"], until=entry["until"]
    )
    log.info("customer API: %s added do-not-call %s %s", source, body["scope"], target)
    return _json(entry, status=201)


async def remove_do_not_call(request: web.Request) -> web.Response:
    query = _query(request, "scope", "target")
    scopes = [s.value for s in ConsentScope]
    for name in ("scope", "target"):
        if not query.get(name):
            raise ApiError(400, "invalid-query", f"{name} is required", field=name)
    if query["scope"] not in scopes:
        raise ApiError(400, "invalid-query", f"scope must be one of {', '.join(scopes)}", field="scope")
    try:
        await request.app[API].store.remove_do_not_call(query["scope"], query["target"])
    except InvalidInput as exc:
        raise _query_store_error(exc, "target") from None
    log.info("customer API: %s removed do-not-call %s %s", _source(request), query["scope"], query["target"])
    return web.Response(status=204)


_PURPOSES: Final = ("service", "marketing")
_WINDOW: Final = re.compile(r"(\d\d:\d\d)-(\d\d:\d\d)")


async def may_call(request: web.Request) -> web.Response:
    query = _query(request, "number", "purpose", "at", "window")
    number = query.get("number")
    if not number:
        raise ApiError(400, "invalid-query", "number is required", field="number")
    purpose = query.get("purpose") or "service"
    if purpose not in _PURPOSES:
        raise ApiError(
            400, "invalid-query", f"purpose must be one of {', '.join(_PURPOSES)}", field="purpose"
        )
    window = ("08:00", "21:00")
    if query.get("window"):
        match = _WINDOW.fullmatch(query["window"])
        if not match or not all(re.fullmatch(_HHMM["pattern"], t) for t in match.groups()):
            raise ApiError(
                400, "invalid-query", "window must be HH:MM-HH:MM, e.g. 09:00-20:00", field="window"
            )
        window = (match[1], match[2])
    config = request.app[API]
    at = _number(query, "at", high=4102444800)
    try:
        permission = await config.store.may_call(
            number, config.clock() if at is None else at, purpose=purpose, window=window
        )
    except InvalidInput as exc:
        raise _query_store_error(exc, "number") from None
    return _json(plain(permission))
