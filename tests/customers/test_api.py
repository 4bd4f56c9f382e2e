"""The customer REST API on a real aiohttp server on loopback, over a real SQLite file.

The app is built the way the service builds it: the store opened in a ``cleanup_ctx`` of the
main app, the API mounted with ``add_subapp("/api/", ...)``.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from callbridge.settings import ApiToken
from customers.api import customer_api
from customers.sqlite_store import SQLiteStore

SHOP = ApiToken("shop", "shop-0123456789abcdef0123456789", role="admin")
ERP = ApiToken("erp", "erp-fedcba9876543210fedcba98765")
REPORTS = ApiToken("reports", "reports-00112233445566778899aabb", role="read")
AUTH = {"Authorization": f"Bearer {SHOP.token}"}
ERP_AUTH = {"Authorization": f"Bearer {ERP.token}"}
READ_AUTH = {"Authorization": f"Bearer {REPORTS.token}"}
MAX_BODY = 16 * 1024
NY = "+12125550100"
SF = "+14155550123"


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> float:
    return datetime(year, month, day, hour, minute, tzinfo=UTC).timestamp()


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass
class Api:
    client: TestClient[web.Request, web.Application]
    store: SQLiteStore
    path: Path
    clock: Clock
    api_app: web.Application

    async def call(
        self, method: str, url: str, *, status: int, headers: dict[str, str] | None = None, **kwargs: Any
    ) -> Any:
        """The decoded JSON answer (or None for an empty one), after checking the status."""
        response = await self.client.request(
            method, url, headers=AUTH if headers is None else headers, **kwargs
        )
        text = await response.text()
        assert response.status == status, text
        if not text:
            return None
        assert response.content_type == "application/json", text
        return await response.json()

    async def create(self, name: str, *identities: dict[str, Any], **fields: Any) -> dict[str, Any]:
        body = {"display_name": name, "identities": list(identities), **fields}
        created: dict[str, Any] = await self.call("POST", "/api/customers", json=body, status=201)
        return created

    def dump(self) -> list[str]:
        """Every row of the database, for "nothing was written" checks."""
        with sqlite3.connect(self.path) as conn:
            return list(conn.iterdump())


def phone(value: str, **extra: Any) -> dict[str, Any]:
    return {"kind": "phone", "value": value, **extra}


@pytest.fixture
def clock() -> Clock:
    # 15:00 UTC: 10:00 in New York, 07:00 in San Francisco.
    return Clock(utc(2026, 3, 4, 15))


@pytest.fixture
async def api(tmp_path: Path, clock: Clock) -> AsyncIterator[Api]:
    path = tmp_path / "customers.db"
    store = SQLiteStore(path, default_region="US", clock=clock)

    async def open_store(app: web.Application) -> AsyncIterator[None]:
        async with store:
            yield

    app = web.Application()
    app.cleanup_ctx.append(open_store)
    api_app = customer_api(store, [SHOP, ERP, REPORTS], max_body=MAX_BODY, clock=clock)
    app.add_subapp("/api/", api_app)
    server = TestServer(app, host="127.0.0.1", port=0)
    async with server, TestClient(server) as client:
        yield Api(client, store, path, clock, api_app)


def error_of(answer: Any) -> dict[str, Any]:
    assert set(answer) == {"error"}, answer
    error: dict[str, Any] = answer["error"]
    assert set(error) <= {"code", "message", "field"}
    assert "Traceback" not in error["message"]
    return error


# --- authentication -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": ""},
        {"Authorization": "Bearer"},
        {"Authorization": "Bearer wrong-token-0123456789abcdef"},
        {"Authorization": f"Bearer {SHOP.token[:-1]}"},  # a prefix of a real token
        {"Authorization": f"Bearer {SHOP.token[:8]}"},
        {"Authorization": f"Bearer {SHOP.token}x"},
        {"Authorization": f"Basic {SHOP.token}"},
        {"Authorization": SHOP.token},
    ],
    ids=["none", "empty", "no-token", "wrong", "prefix", "short-prefix", "longer", "basic", "no-scheme"],
)
async def test_without_a_valid_token_every_answer_is_the_same_401(api: Api, headers: dict[str, str]) -> None:
    customer = await api.create("Ann Lee", phone(NY))
    answers = []
    for method, url in [
        ("GET", f"/api/customers/{customer['id']}"),
        ("GET", "/api/customers/nobody"),
        ("GET", "/api/no-such-endpoint"),
        ("POST", "/api/customers"),
    ]:
        response = await api.client.request(method, url, headers=headers, data=b"{not json")
        assert response.status == 401
        assert response.headers["WWW-Authenticate"] == 'Bearer realm="callbridge"'
        answers.append(await response.json())
    assert answers == [answers[0]] * 4
    assert error_of(answers[0]) == {
        "code": "unauthorized",
        "message": "a valid API token is required: Authorization: Bearer <token>",
    }


async def test_each_token_is_recorded_as_the_source_of_its_writes(api: Api) -> None:
    customer = await api.create("Ann Lee", phone(NY))
    assert customer["identities"][0]["source"] == "api:shop"
    cid = customer["id"]
    lower_case_scheme = {"Authorization": f"bearer {ERP.token}"}
    identity = await api.call(
        "POST", f"/api/customers/{cid}/identities", json=phone(SF), headers=lower_case_scheme, status=201
    )
    assert identity["source"] == "api:erp"
    note = await api.call(
        "POST", f"/api/customers/{cid}/notes", json={"text": "VIP"}, headers=ERP_AUTH, status=201
    )
    assert note["author"] == "api:erp"


# --- profiles -------------------------------------------------------------------------------------


async def test_create_then_get_the_whole_profile(api: Api) -> None:
    response = await api.client.post(
        "/api/customers",
        headers=AUTH,
        json={
            "display_name": "Ann Lee",
            "given_name": "Ann",
            "family_name": "Lee",
            "timezone": "America/New_York",
            "attributes": {"tier": "gold"},
            "identities": [
                phone("(212) 555-0100", label="mobile"),
                {"kind": "email", "value": "Ann.Lee@Example.com"},
                {"kind": "external", "system": "shop", "value": "10042"},
            ],
        },
    )
    assert response.status == 201
    customer = await response.json()
    cid = customer["id"]
    assert response.headers["Location"] == f"/api/customers/{cid}"
    assert customer["display_name"] == "Ann Lee"
    assert customer["attributes"] == {"tier": "gold"}
    assert customer["merged_into"] is None
    assert {(i["kind"], i["system"], i["value"]) for i in customer["identities"]} == {
        ("phone", "", NY),
        ("email", "", "ann.lee@example.com"),
        ("external", "shop", "10042"),
    }
    mobile = next(i for i in customer["identities"] if i["kind"] == "phone")
    assert (mobile["raw"], mobile["label"], mobile["shared"]) == ("(212) 555-0100", "mobile", False)

    await api.call(
        "POST",
        f"/api/customers/{cid}/interactions",
        json={"channel": "order", "summary": "Order 1"},
        status=201,
    )
    await api.call(
        "POST", f"/api/customers/{cid}/notes", json={"text": "Prefers email", "pinned": True}, status=201
    )
    profile = await api.call("GET", f"/api/customers/{cid}", status=200)
    assert set(profile) == {"customer", "latest", "notes", "consent", "value", "segments"}
    assert profile["customer"] == customer | {"updated_at": profile["customer"]["updated_at"]}
    assert [i["summary"] for i in profile["latest"]["order"]] == ["Order 1"]
    assert [(n["text"], n["pinned"], n["author"]) for n in profile["notes"]] == [
        ("Prefers email", True, "api:shop")
    ]
    assert profile["consent"] == {
        "customer_id": cid,
        "channels": {},
        "quiet_hours": None,
        "do_not_call": [],
        "updated_at": profile["consent"]["updated_at"],
    }
    assert profile["value"] is None
    assert profile["segments"] == []
    smaller = await api.call("GET", f"/api/customers/{cid}?per_channel=1&notes=0", status=200)
    assert smaller["notes"] == []


async def test_get_unknown_customer_is_404(api: Api) -> None:
    answer = await api.call("GET", "/api/customers/no-such-id", status=404)
    assert error_of(answer) == {"code": "not-found", "message": "customer no-such-id not found"}
    answer = await api.call("GET", "/api/customers/x?per_channel=lots", status=400)
    assert error_of(answer)["field"] == "per_channel"


async def test_unknown_route_and_wrong_method_answer_json(api: Api) -> None:
    answer = await api.call("GET", "/api/nothing-here", status=404)
    assert error_of(answer) == {"code": "not-found", "message": "no such endpoint: GET /api/nothing-here"}
    response = await api.client.delete("/api/customers", headers=AUTH)
    assert response.status == 405
    assert {"GET", "POST"} <= set(response.headers["Allow"].split(","))
    assert error_of(await response.json())["code"] == "method-not-allowed"


async def test_create_with_one_bad_identity_stores_nothing(api: Api) -> None:
    await api.create("Someone Else", phone(SF))
    before = api.dump()
    answer = await api.call(
        "POST",
        "/api/customers",
        json={
            "display_name": "Ann Lee",
            "identities": [phone(NY), phone("12"), {"kind": "email", "value": "ann@example.com"}],
        },
        status=422,
    )
    assert error_of(answer) == {
        "code": "invalid-input",
        "field": "identities[1].value",
        "message": "identities[1].value: not a phone number: '12' (default region US)",
    }
    assert api.dump() == before
    # One already held by another customer (not shared): a conflict, and nothing stored either.
    answer = await api.call(
        "POST",
        "/api/customers",
        json={"display_name": "Ann Lee", "identities": [phone(NY), phone(SF)]},
        status=409,
    )
    error = error_of(answer)
    assert (error["code"], error["field"]) == ("conflict", "identities[1]")
    assert "phone +14155550123 already belongs to customer" in error["message"]
    assert api.dump() == before


async def test_malformed_json_names_the_position(api: Api) -> None:
    before = api.dump()
    answer = await api.call(
        "POST", "/api/customers", data=b'{"display_name": "Ann",\n "identities": [}', status=400
    )
    assert error_of(answer) == {
        "code": "malformed-json",
        "message": "the body is not valid JSON: Expecting value at line 2, column 17 (character 40)",
    }
    for body, message in [
        (b"", "the body is empty; a JSON object is expected"),
        (b'{"display_name": NaN}', "the body is not valid JSON: NaN is not a JSON number"),
        (b'{"display_name": "\xff"}', "the body is not UTF-8 (byte 18)"),
        (b"[" * 10000, "the body nests too deep to be read"),
    ]:
        answer = await api.call("POST", "/api/customers", data=body, status=400)
        assert error_of(answer) == {"code": "malformed-json", "message": message}
    answer = await api.call("POST", "/api/customers", json=["Ann"], status=422)
    assert error_of(answer) == {"code": "invalid-input", "message": "the body must be an object"}
    assert api.dump() == before


async def test_unknown_fields_are_named(api: Api) -> None:
    answer = await api.call(
        "POST",
        "/api/customers",
        json={"display_name": "Ann", "nickname": "A", "identities": [phone(NY, colour="red")], "age": 3},
        status=422,
    )
    assert error_of(answer) == {
        "code": "unknown-field",
        "field": "age",
        "message": "unknown fields: age, nickname, identities[0].colour",
    }


@pytest.mark.parametrize(
    ("body", "field", "message"),
    [
        ({}, "display_name", "display_name is required"),
        ({"display_name": " "}, "display_name", "display_name must not be blank"),
        ({"display_name": 7}, "display_name", "display_name must be a string"),
        ({"display_name": "A", "timezone": "Mars/Olympus"}, "timezone", None),
        ({"display_name": "A", "birthday": "1990-13-01"}, "birthday", None),
        ({"display_name": "A", "identities": [{"kind": "fax", "value": "1"}]}, "identities[0].kind", None),
        ({"display_name": "A", "identities": [{"kind": "phone"}]}, "identities[0].value", None),
        (
            {"display_name": "A", "identities": [{"kind": "external", "value": "1"}]},
            "identities[0].system",
            "identities[0].system is required",
        ),
        (
            {"display_name": "A", "identities": [{"kind": "email", "value": "nope"}]},
            "identities[0].value",
            None,
        ),
        (
            {"display_name": "A", "attributes": {"a": {"b": {"c": {"d": {"e": {"f": {"g": {"h": {}}}}}}}}}},
            "attributes",
            "attributes nests deeper than 8 levels",
        ),
    ],
)
async def test_invalid_create_names_the_field(
    api: Api, body: dict[str, Any], field: str, message: str | None
) -> None:
    before = api.dump()
    error = error_of(await api.call("POST", "/api/customers", json=body, status=422))
    assert (error["code"], error["field"]) == ("invalid-input", field)
    if message is not None:
        assert error["message"] == message
    assert api.dump() == before


async def test_oversize_body_is_413(api: Api) -> None:
    before = api.dump()
    big = {"display_name": "Ann", "attributes": {"blob": "x" * MAX_BODY}}
    answer = await api.call("POST", "/api/customers", json=big, status=413)
    assert error_of(answer)["code"] == "body-too-large"

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: the cap holds while reading
        yield b'{"display_name": "Ann", "attributes": {"blob": "'
        for _ in range(MAX_BODY // 1024 + 1):
            yield b"x" * 1024
        yield b'"}}'

    answer = await api.call("POST", "/api/customers", data=chunks(), status=413)
    assert error_of(answer) == {
        "code": "body-too-large",
        "message": f"the body is over the limit of {MAX_BODY} bytes",
    }
    assert api.dump() == before
    # The server is still fine afterwards.
    await api.create("Ann Lee", phone(NY))


async def test_update_fields_and_attributes(api: Api) -> None:
    customer = await api.create("Ann Lee", phone(NY), attributes={"tier": "gold", "old": 1})
    cid = customer["id"]
    updated = await api.call(
        "PATCH",
        f"/api/customers/{cid}",
        json={
            "company": "Acme",
            "display_name": "Ann Lee-Smith",
            "attributes": {"tier": "platinum", "old": None},
        },
        status=200,
    )
    assert (updated["company"], updated["display_name"]) == ("Acme", "Ann Lee-Smith")
    assert updated["attributes"] == {"tier": "platinum"}
    assert updated["identities"] == customer["identities"]
    error = error_of(await api.call("PATCH", f"/api/customers/{cid}", json={}, status=422))
    assert error["message"] == "nothing to update: give at least one field"
    error = error_of(
        await api.call("PATCH", f"/api/customers/{cid}", json={"timezone": "Nowhere"}, status=422)
    )
    assert error["field"] == "timezone"
    error = error_of(await api.call("PATCH", f"/api/customers/{cid}", json={"id": "other"}, status=422))
    assert (error["code"], error["field"]) == ("unknown-field", "id")
    await api.call("PATCH", "/api/customers/nobody", json={"company": "X"}, status=404)


# --- identities -----------------------------------------------------------------------------------


async def test_add_and_remove_identities(api: Api) -> None:
    cid = (await api.create("Ann Lee", phone(NY)))["id"]
    response = await api.client.post(
        f"/api/customers/{cid}/identities", headers=AUTH, json={"kind": "phone", "value": "415 555 0123 x12"}
    )
    assert response.status == 201
    assert response.headers["Location"] == f"/api/customers/{cid}"
    identity = await response.json()
    assert (identity["value"], identity["extension"], identity["source"]) == (SF, "12", "api:shop")
    await api.call(
        "POST",
        f"/api/customers/{cid}/identities",
        json={"kind": "im", "system": "WhatsApp", "value": "@ann"},
        status=201,
    )

    error = error_of(
        await api.call(
            "POST", f"/api/customers/{cid}/identities", json={"kind": "phone", "value": "x"}, status=422
        )
    )
    assert (error["code"], error["field"]) == ("invalid-input", "value")
    error = error_of(
        await api.call(
            "POST", f"/api/customers/{cid}/identities", json={"kind": "external", "value": "1"}, status=422
        )
    )
    assert error["field"] == "system"
    other = (await api.create("Bob Roe"))["id"]
    error = error_of(await api.call("POST", f"/api/customers/{other}/identities", json=phone(NY), status=409))
    assert error["code"] == "conflict"
    assert "field" not in error
    # Shared on purpose: both hold it now.
    await api.call("POST", f"/api/customers/{other}/identities", json=phone(NY, shared=True), status=201)
    await api.call("POST", "/api/customers/nobody/identities", json=phone(NY), status=404)

    await api.call("DELETE", f"/api/customers/{cid}/identities/phone/+14155550123", status=204)
    await api.call("DELETE", f"/api/customers/{cid}/identities/im/whatsapp:ann", status=204)
    after = await api.call("GET", f"/api/customers/{cid}", status=200)
    assert [i["value"] for i in after["customer"]["identities"]] == [NY]
    error = error_of(
        await api.call("DELETE", f"/api/customers/{cid}/identities/phone/+14155550123", status=404)
    )
    assert error["code"] == "not-found"
    error = error_of(await api.call("DELETE", f"/api/customers/{cid}/identities/fax/123", status=404))
    assert error["field"] == "kind"
    error = error_of(await api.call("DELETE", f"/api/customers/{cid}/identities/external/10042", status=404))
    assert error["field"] == "value"
    error = error_of(await api.call("DELETE", f"/api/customers/{cid}/identities/phone/nonsense", status=422))
    assert error["field"] == "value"


# --- lookups --------------------------------------------------------------------------------------


async def test_lookup_of_a_shared_number_gives_ranked_candidates(api: Api, clock: Clock) -> None:
    ann = (await api.create("Ann Lee", phone(NY, label="home", shared=True)))["id"]
    bob = (await api.create("Bob Lee", phone(NY, label="home", shared=True)))["id"]
    clock.now += 60
    await api.call(
        "POST",
        f"/api/customers/{bob}/interactions",
        json={"channel": "call", "direction": "inbound"},
        status=201,
    )
    clock.now += 3600

    answer = await api.call("GET", "/api/customers?phone=(212) 555-0100", status=200)
    assert answer["query"] == {"phone": "(212) 555-0100"}
    candidates = answer["candidates"]
    assert [c["customer"]["id"] for c in candidates] == [bob, ann]
    assert candidates[0]["score"] > candidates[1]["score"]
    assert candidates[0]["reasons"][:2] == ["exact phone +12125550100", "shared number (2 customers)"]
    assert "last call 60 minutes ago" in candidates[0]["reasons"]
    assert "no interaction yet" in candidates[1]["reasons"]

    assert (await api.call("GET", "/api/customers?phone=%2B1 415 555 0123", status=200))["candidates"] == []
    answer = await api.call("GET", "/api/customers?phone=020 7946 0958&region=GB", status=200)
    assert answer["candidates"] == []


async def test_lookup_by_each_kind_and_search(api: Api) -> None:
    ann = await api.create(
        "Ann Lee",
        {"kind": "email", "value": "ann@example.com"},
        {"kind": "member", "value": "M-1001"},
        {"kind": "external", "system": "shop", "value": "10042"},
        {"kind": "im", "system": "wechat", "value": "annlee"},
        company="Acme",
    )
    for query in ["email=ANN@example.com", "member=M 1001", "external=shop:10042", "im=wechat:@AnnLee"]:
        answer = await api.call("GET", f"/api/customers?{query}", status=200)
        assert [c["customer"]["id"] for c in answer["candidates"]] == [ann["id"]], query
        assert answer["candidates"][0]["score"] == 100.0
    answer = await api.call("GET", "/api/customers?q=acme", status=200)
    assert answer == {"query": {"q": "acme"}, "customers": [ann]}
    assert (await api.call("GET", "/api/customers?q=nobody&limit=5", status=200))["customers"] == []


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("", None),
        ("?phone=1&email=a@b.c", "email"),
        ("?phone=", "phone"),
        ("?phone=not-a-number", "phone"),
        ("?email=nope", "email"),
        ("?external=10042", "external"),
        ("?phone=2125550100&region=usa", "region"),
        ("?email=a@b.c&region=US", "region"),
        ("?email=a@b.c&limit=3", "limit"),
        ("?q=ann&limit=0", "limit"),
        ("?q=ann&colour=red", "colour"),
        ("?q=ann&q=bob", "q"),
    ],
)
async def test_bad_lookups_are_400(api: Api, query: str, field: str | None) -> None:
    error = error_of(await api.call("GET", f"/api/customers{query}", status=400))
    assert error["code"] == "invalid-query"
    assert error.get("field") == field


# --- timeline and notes ---------------------------------------------------------------------------


async def test_interaction_append_is_idempotent_with_external_id(api: Api, clock: Clock) -> None:
    cid = (await api.create("Ann Lee", phone(NY)))["id"]
    body = {
        "channel": "order",
        "at": utc(2026, 3, 1, 10),
        "summary": "Order 5001",
        "data": {"amount": 120.5, "currency": "EUR"},
        "external_id": "order-5001",
    }
    response = await api.client.post(f"/api/customers/{cid}/interactions", headers=AUTH, json=body)
    assert response.status == 201
    first = await response.json()
    assert first["source"] == "api:shop"
    assert first["customer_id"] == cid
    # The same again (a retry), and the same key with other content: the stored one, 200.
    assert await api.call("POST", f"/api/customers/{cid}/interactions", json=body, status=200) == first
    changed = body | {"summary": "Order 5001 (edited)", "at": utc(2026, 3, 2)}
    assert await api.call("POST", f"/api/customers/{cid}/interactions", json=changed, status=200) == first
    # Without "at" the server's clock stamps it; a retry later still finds the first.
    no_at = {"channel": "web", "summary": "viewed cart", "external_id": "visit-1"}
    visit = await api.call("POST", f"/api/customers/{cid}/interactions", json=no_at, status=201)
    assert visit["at"] == clock.now
    clock.now += 5
    assert await api.call("POST", f"/api/customers/{cid}/interactions", json=no_at, status=200) == visit
    # The key is per token: the ERP may use the same one.
    await api.call("POST", f"/api/customers/{cid}/interactions", json=body, headers=ERP_AUTH, status=201)
    # Without a key every post is a new entry.
    plain_body = {"channel": "call", "at": utc(2026, 3, 1, 10), "direction": "inbound"}
    one = await api.call("POST", f"/api/customers/{cid}/interactions", json=plain_body, status=201)
    two = await api.call("POST", f"/api/customers/{cid}/interactions", json=plain_body, status=201)
    assert one["id"] != two["id"]
    # The same key on another customer's timeline is a conflict.
    other = (await api.create("Bob Roe"))["id"]
    error = error_of(await api.call("POST", f"/api/customers/{other}/interactions", json=body, status=409))
    assert (error["code"], error["field"]) == ("conflict", "external_id")
    timeline = await api.call("GET", f"/api/customers/{cid}/interactions", status=200)
    assert len(timeline["interactions"]) == 5


async def test_interaction_errors(api: Api) -> None:
    cid = (await api.create("Ann Lee"))["id"]
    before = api.dump()
    for body, code, field in [
        ({"channel": "pigeon"}, "invalid-input", "channel"),
        ({"summary": "x"}, "invalid-input", "channel"),
        ({"channel": "call", "at": 1_772_000_000_000}, "invalid-input", "at"),
        ({"channel": "call", "direction": "sideways"}, "invalid-input", "direction"),
        ({"channel": "call", "data": []}, "invalid-input", "data"),
        ({"channel": "call", "agent": "bob"}, "unknown-field", "agent"),
    ]:
        error = error_of(await api.call("POST", f"/api/customers/{cid}/interactions", json=body, status=422))
        assert (error["code"], error.get("field")) == (code, field), body
    assert (
        error_of(
            await api.call(
                "POST", f"/api/customers/{cid}/interactions", json={"channel": "call", "at": 1e12}, status=422
            )
        )["message"]
        == "at must be UTC epoch seconds (not milliseconds)"
    )
    await api.call("POST", "/api/customers/nobody/interactions", json={"channel": "call"}, status=404)
    assert api.dump() == before


async def test_timeline_pages_and_filters(api: Api) -> None:
    cid = (await api.create("Ann Lee"))["id"]
    for day in range(1, 6):
        channel = "call" if day % 2 else "email"
        await api.call(
            "POST",
            f"/api/customers/{cid}/interactions",
            json={"channel": channel, "at": utc(2026, 2, day), "summary": f"day {day}"},
            status=201,
        )
    page = await api.call("GET", f"/api/customers/{cid}/interactions?limit=2", status=200)
    assert [i["summary"] for i in page["interactions"]] == ["day 5", "day 4"]
    assert page["next_before"] == utc(2026, 2, 4)
    page = await api.call(
        "GET", f"/api/customers/{cid}/interactions?limit=2&before={page['next_before']}", status=200
    )
    assert [i["summary"] for i in page["interactions"]] == ["day 3", "day 2"]
    calls = await api.call("GET", f"/api/customers/{cid}/interactions?channel=call", status=200)
    assert [i["summary"] for i in calls["interactions"]] == ["day 5", "day 3", "day 1"]
    assert calls["next_before"] is None
    both = await api.call("GET", f"/api/customers/{cid}/interactions?channel=call,email&limit=10", status=200)
    assert len(both["interactions"]) == 5
    for query, field in [("channel=pigeon", "channel"), ("limit=0", "limit"), ("before=soon", "before")]:
        error = error_of(await api.call("GET", f"/api/customers/{cid}/interactions?{query}", status=400))
        assert error["field"] == field
    await api.call("GET", "/api/customers/nobody/interactions", status=404)


async def test_notes(api: Api, clock: Clock) -> None:
    cid = (await api.create("Ann Lee"))["id"]
    response = await api.client.post(
        f"/api/customers/{cid}/notes", headers=AUTH, json={"text": "Call after 5"}
    )
    assert response.status == 201
    note = await response.json()
    assert (note["customer_id"], note["author"], note["text"], note["pinned"]) == (
        cid,
        "api:shop",
        "Call after 5",
        False,
    )
    clock.now += 1
    await api.call("POST", f"/api/customers/{cid}/notes", json={"text": "Second"}, status=201)
    notes = await api.call("GET", f"/api/customers/{cid}/notes", status=200)
    assert [n["text"] for n in notes["notes"]] == ["Second", "Call after 5"]
    error = error_of(await api.call("POST", f"/api/customers/{cid}/notes", json={"text": "  "}, status=422))
    assert error["field"] == "text"
    await api.call("POST", "/api/customers/nobody/notes", json={"text": "x"}, status=404)


# --- consent, do-not-call, may-call ---------------------------------------------------------------


async def test_consent_get_and_put(api: Api) -> None:
    cid = (await api.create("Ann Lee", phone(NY), timezone="America/New_York"))["id"]
    consent = await api.call(
        "PUT",
        f"/api/customers/{cid}/consent",
        json={"channels": {"call": True, "sms": False}, "quiet_hours": ["21:00", "08:00"]},
        status=200,
    )
    assert consent["channels"] == {"call": True, "sms": False}
    assert consent["quiet_hours"] == ["21:00", "08:00"]
    assert await api.call("GET", f"/api/customers/{cid}/consent", status=200) == consent
    # Channels not named stay as they are; null clears the quiet hours.
    consent = await api.call(
        "PUT",
        f"/api/customers/{cid}/consent",
        json={"channels": {"email": True}, "quiet_hours": None},
        status=200,
    )
    assert consent["channels"] == {"call": True, "sms": False, "email": True}
    assert consent["quiet_hours"] is None

    before = api.dump()
    for body, code, field in [
        ({"channels": {"call": True, "fax2": True}}, "unknown-field", "channels.fax2"),
        ({"channels": {"call": "yes"}}, "invalid-input", "channels.call"),
        ({"channels": {"call": False}, "quiet_hours": ["21:00", "8am"]}, "invalid-input", "quiet_hours[1]"),
        ({"quiet_hours": ["21:00"]}, "invalid-input", "quiet_hours"),
        ({}, "invalid-input", None),
    ]:
        error = error_of(await api.call("PUT", f"/api/customers/{cid}/consent", json=body, status=422))
        assert (error["code"], error.get("field")) == (code, field), body
    await api.call("PUT", "/api/customers/nobody/consent", json={"channels": {"call": False}}, status=404)
    await api.call("GET", "/api/customers/nobody/consent", status=404)
    assert api.dump() == before


async def test_do_not_call_and_may_call_with_reasons(api: Api, clock: Clock) -> None:
    ann = (await api.create("Ann Lee", phone(NY), timezone="America/New_York"))["id"]
    answer = await api.call("GET", "/api/may-call?number=(212) 555-0100", status=200)
    assert answer == {
        "allowed": True,
        "reasons": [],
        "number": NY,
        "customer_ids": [ann],
        "local_time": "2026-03-04 10:00 America/New_York",
        "next_allowed_at": None,
    }
    answer = await api.call("GET", "/api/may-call?number=%2B12125550100&purpose=marketing", status=200)
    assert answer["allowed"] is False
    assert answer["reasons"] == [
        f"customer {ann} (Ann Lee) has not given explicit consent to marketing calls"
    ]

    response = await api.client.post(
        "/api/do-not-call",
        headers=AUTH,
        json={"scope": "number", "target": "212-555-0100", "reason": "asked on the phone"},
    )
    assert response.status == 201
    assert await response.json() == {
        "scope": "number",
        "target": "212-555-0100",
        "source": "api:shop",
        "reason": "asked on the phone",
        "until": None,
    }
    await api.call(
        "PUT", f"/api/customers/{ann}/consent", json={"quiet_hours": ["09:00", "11:00"]}, status=200
    )
    answer = await api.call("GET", f"/api/may-call?number={NY}", status=200)
    assert answer["allowed"] is False
    assert answer["reasons"][0] == (
        "number +12125550100 on do-not-call since 2026-03-04 (source: api:shop): asked on the phone"
    )
    assert any("quiet hours" in reason for reason in answer["reasons"]), answer["reasons"]

    await api.call("DELETE", f"/api/do-not-call?scope=number&target={NY}", status=204)
    error = error_of(await api.call("DELETE", f"/api/do-not-call?scope=number&target={NY}", status=404))
    assert error["code"] == "not-found"
    await api.call("PUT", f"/api/customers/{ann}/consent", json={"quiet_hours": None}, status=200)
    assert (await api.call("GET", f"/api/may-call?number={NY}", status=200))["allowed"] is True

    # Customer scope; the calling window, asked for another time.
    await api.call(
        "POST",
        "/api/do-not-call",
        json={"scope": "customer", "target": ann, "until": clock.now + 86400},
        status=201,
    )
    answer = await api.call("GET", f"/api/may-call?number={NY}", status=200)
    assert answer["reasons"][0].startswith(f"customer {ann} (Ann Lee) on do-not-call")
    await api.call("DELETE", f"/api/do-not-call?scope=customer&target={ann}", status=204)
    late = utc(2026, 3, 5, 3)  # 22:00 in New York
    answer = await api.call("GET", f"/api/may-call?number={NY}&at={late}&window=09:00-20:00", status=200)
    assert answer["allowed"] is False
    assert answer["local_time"] == "2026-03-04 22:00 America/New_York"
    assert answer["next_allowed_at"] == utc(2026, 3, 5, 14)


async def test_do_not_call_and_may_call_errors(api: Api) -> None:
    before = api.dump()
    for body, code, field in [
        ({"scope": "everyone", "target": NY}, "invalid-input", "scope"),
        ({"scope": "number"}, "invalid-input", "target"),
        ({"scope": "number", "target": "12"}, "invalid-input", "target"),
        ({"scope": "number", "target": NY, "until": "tomorrow"}, "invalid-input", "until"),
        ({"scope": "number", "target": NY, "by": "me"}, "unknown-field", "by"),
    ]:
        error = error_of(await api.call("POST", "/api/do-not-call", json=body, status=422))
        assert (error["code"], error.get("field")) == (code, field), body
    await api.call("POST", "/api/do-not-call", json={"scope": "customer", "target": "nobody"}, status=404)
    assert api.dump() == before
    for query, field in [
        ("", "number"),
        ("?number=12", "number"),
        (f"?number={NY}&purpose=sales", "purpose"),
        (f"?number={NY}&window=9-5", "window"),
        (f"?number={NY}&at=later", "at"),
    ]:
        error = error_of(await api.call("GET", f"/api/may-call{query}", status=400))
        assert error["field"] == field, query
    for query, field in [("scope=number", "target"), (f"scope=all&target={NY}", "scope")]:
        error = error_of(await api.call("DELETE", f"/api/do-not-call?{query}", status=400))
        assert error["field"] == field


# --- merge ----------------------------------------------------------------------------------------


async def test_merge_keeps_both_timelines(api: Api, clock: Clock) -> None:
    keep = (await api.create("Ann Lee", phone(NY)))["id"]
    gone = (await api.create("A. Lee", {"kind": "email", "value": "ann@example.com"}, company="Acme"))["id"]
    await api.call(
        "POST",
        f"/api/customers/{keep}/interactions",
        json={"channel": "call", "summary": "keep call"},
        status=201,
    )
    clock.now += 10
    await api.call(
        "POST",
        f"/api/customers/{gone}/interactions",
        json={"channel": "email", "summary": "gone mail"},
        status=201,
    )
    await api.call("POST", f"/api/customers/{gone}/notes", json={"text": "from the duplicate"}, status=201)

    merged = await api.call("POST", f"/api/customers/{keep}/merge", json={"merge": gone}, status=200)
    assert merged["id"] == keep
    assert merged["company"] == "Acme"
    assert {i["value"] for i in merged["identities"]} == {NY, "ann@example.com"}
    timeline = await api.call("GET", f"/api/customers/{keep}/interactions", status=200)
    assert [i["summary"] for i in timeline["interactions"]] == ["gone mail", "keep call"]
    # The merged id still answers, with the surviving profile.
    profile = await api.call("GET", f"/api/customers/{gone}", status=200)
    assert profile["customer"]["id"] == keep
    assert [n["text"] for n in profile["notes"]] == ["from the duplicate"]
    assert [
        c["customer"]["id"]
        for c in (await api.call("GET", "/api/customers?email=ann@example.com", status=200))["candidates"]
    ] == [keep]

    for target, status in [(keep, 409), (gone, 409), ("nobody", 404)]:
        error = error_of(
            await api.call("POST", f"/api/customers/{keep}/merge", json={"merge": target}, status=status)
        )
        assert error["code"] == ("conflict" if status == 409 else "not-found")
    error = error_of(await api.call("POST", f"/api/customers/{keep}/merge", json={"id": gone}, status=422))
    assert (error["code"], error["field"]) == ("unknown-field", "id")


# --- failures inside ------------------------------------------------------------------------------


async def test_an_unexpected_failure_is_a_logged_json_500(api: Api, caplog: pytest.LogCaptureFixture) -> None:
    async def broken(request: web.Request) -> web.Response:
        raise RuntimeError("secret detail")

    # Routes cannot be added to a running app's router; a second app with the same factory can.
    app = web.Application()
    sub = customer_api(api.store, [SHOP])
    sub.router.add_get("/broken", broken)
    app.add_subapp("/api/", sub)
    server = TestServer(app, host="127.0.0.1", port=0)
    async with server, TestClient(server) as client:
        with caplog.at_level(logging.ERROR, logger="customers.api"):
            response = await client.get("/api/broken", headers=AUTH)
            assert response.status == 500
            error = error_of(await response.json())
    assert error["code"] == "internal-error"
    assert "secret detail" not in error["message"]
    ref = error["message"].rsplit(" ", 1)[-1]
    assert any(ref in record.getMessage() and record.exc_info for record in caplog.records)


async def test_a_closed_store_answers_503_without_details(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "never-opened.db")
    app = web.Application()
    app.add_subapp("/api/", customer_api(store, [SHOP]))
    server = TestServer(app, host="127.0.0.1", port=0)
    async with server, TestClient(server) as client:
        response = await client.get("/api/customers/x", headers=AUTH)
        assert response.status == 503
        error = error_of(await response.json())
    assert error["code"] == "store-closed"
    assert "never-opened.db" not in error["message"]


async def test_a_write_blocked_by_another_writer_answers_503_retry_after_and_writes_nothing(
    tmp_path: Path,
) -> None:
    """Another process holds the write lock past the busy timeout: 503 store-busy with
    Retry-After, nothing stored; once the lock is gone the same request succeeds."""
    import sqlite3

    path = tmp_path / "customers.db"
    store = SQLiteStore(path, busy_timeout=0.2)
    app = web.Application()
    app.add_subapp("/api/", customer_api(store, [SHOP]))
    server = TestServer(app, host="127.0.0.1", port=0)
    async with store, server, TestClient(server) as client:
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        try:
            response = await client.post("/api/customers", json={"display_name": "Ann Lee"}, headers=AUTH)
            assert response.status == 503 and response.headers["Retry-After"] == "1"
            error = error_of(await response.json())
            assert error["code"] == "store-busy" and str(path) not in error["message"]
        finally:
            other.execute("ROLLBACK")
            other.close()
        assert (await store.search("Ann Lee")) == []
        response = await client.post("/api/customers", json={"display_name": "Ann Lee"}, headers=AUTH)
        assert response.status == 201


async def test_served_by_an_app_runner_to_a_client_session(tmp_path: Path) -> None:
    """The way the service runs it: AppRunner + TCPSite on loopback, a plain ClientSession."""
    store = SQLiteStore(tmp_path / "customers.db")

    async def open_store(app: web.Application) -> AsyncIterator[None]:
        async with store:
            yield

    app = web.Application()
    app.cleanup_ctx.append(open_store)
    app.add_subapp("/api/", customer_api(store, [SHOP]))
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        async with aiohttp.ClientSession(f"http://127.0.0.1:{port}") as session:
            async with session.post("/api/customers", headers=AUTH, json={"display_name": "Ann"}) as response:
                assert response.status == 201
                cid = (await response.json())["id"]
            async with session.get(f"/api/customers/{cid}", headers=AUTH) as response:
                assert (await response.json())["customer"]["display_name"] == "Ann"
    finally:
        await runner.cleanup()


def test_no_tokens_is_warned_about(caplog: pytest.LogCaptureFixture, tmp_path: Path) -> None:
    with caplog.at_level(logging.WARNING, logger="customers.api"):
        customer_api(SQLiteStore(tmp_path / "x.db"), [])
    assert "no tokens configured" in caplog.text


# --- roles and idempotent creates ---------------------------------------------------------------------


async def test_each_role_may_do_its_part_and_is_told_which_role_it_lacks(api: Api) -> None:
    cid = (await api.create("Ann Lee", identities=[{"kind": "phone", "value": SF}]))["id"]
    other = (await api.create("Ann Lee (dup)"))["id"]
    profile = await api.call("GET", f"/api/customers/{cid}", headers=READ_AUTH, status=200)
    assert profile["customer"]["display_name"] == "Ann Lee"
    await api.call("GET", f"/api/may-call?number={SF}", headers=READ_AUTH, status=200)
    error = error_of(
        await api.call("POST", "/api/customers", json={"display_name": "X"}, headers=READ_AUTH, status=403)
    )
    assert error == {
        "code": "forbidden",
        "message": "token 'reports' has the read role; POST /api/customers needs write",
    }
    note = {"text": "called back"}
    await api.call("POST", f"/api/customers/{cid}/notes", json=note, headers=READ_AUTH, status=403)
    await api.call("POST", f"/api/customers/{cid}/notes", json=note, headers=ERP_AUTH, status=201)
    # The writes that cannot be undone by another write are the admin's.
    merge = {"merge": other}
    error = error_of(
        await api.call("POST", f"/api/customers/{cid}/merge", json=merge, headers=ERP_AUTH, status=403)
    )
    assert error["message"].endswith("needs admin")
    dnc = {"scope": "number", "target": NY, "reason": "asked"}
    await api.call("POST", "/api/do-not-call", json=dnc, headers=ERP_AUTH, status=201)
    await api.call("DELETE", f"/api/do-not-call?scope=number&target={NY}", headers=ERP_AUTH, status=403)
    await api.call("DELETE", f"/api/do-not-call?scope=number&target={NY}", status=204)
    await api.call("POST", f"/api/customers/{cid}/merge", json=merge, status=200)
    # A path that does not exist is a 404 whatever the role.
    error = error_of(await api.call("POST", "/api/nothing-here", json={}, headers=READ_AUTH, status=404))
    assert error["code"] == "not-found"


def test_a_token_with_an_unknown_role_is_refused_at_start(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="role 'owner' is not one of read, write, admin"):
        customer_api(
            SQLiteStore(tmp_path / "x.db"), [ApiToken("ops", "ops-0123456789abcdef0123", role="owner")]
        )


async def test_a_create_retried_with_its_idempotency_key_makes_one_customer(api: Api) -> None:
    body = {"display_name": "Kim Park", "identities": [{"kind": "email", "value": "kim@example.com"}]}
    key = {"Idempotency-Key": "order-5521-create"}
    response = await api.client.post("/api/customers", json=body, headers=AUTH | key)
    assert response.status == 201
    first = await response.json()
    response = await api.client.post("/api/customers", json=body, headers=AUTH | key)
    assert response.status == 200 and response.headers["Idempotent-Replayed"] == "true"
    assert (await response.json())["id"] == first["id"]
    # Two retries racing: still one customer.
    racing = {"Idempotency-Key": "race-1"}
    answers = await asyncio.gather(
        *(
            api.client.post("/api/customers", json={"display_name": "Lee Race"}, headers=AUTH | racing)
            for _ in range(4)
        )
    )
    assert sorted(a.status for a in answers) == [200, 200, 200, 201]
    assert len({(await a.json())["id"] for a in answers}) == 1
    # The key is the token's own: another system's same key is another request.
    response = await api.client.post("/api/customers", json=body | {"identities": []}, headers=ERP_AUTH | key)
    assert response.status == 201 and (await response.json())["id"] != first["id"]
    found = await api.call("GET", "/api/customers?q=Kim Park", status=200)
    assert len(found["customers"]) == 2
    response = await api.client.post(
        "/api/customers", json=body, headers=AUTH | {"Idempotency-Key": "bad key"}
    )
    assert response.status == 400
    assert error_of(await response.json())["field"] == "Idempotency-Key"
