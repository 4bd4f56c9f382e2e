"""What ``callbridge demo`` brings besides the fake PBX: a customer base behind the captured
callers, and agent logins a newcomer can type.

The captured calls come from a handful of numbers; each is given a customer that shows one kind
of pop: Jane Doe (+1 415 555 0123) has a full history on every channel, notes and a value; the
Chens share a family landline (+1 212 555 0147), so its pop offers two ranked candidates; Acme's
switchboard (+1 312 555 0188) is a company; Sam Rivera is the outbound lead ``C-100042`` of the
``renewals-q3`` campaign (+1 415 555 0142); +1 415 555 0144 is on the do-not-call list. Around
them, ``generated`` customers with random names, phones and emails make the base a real one to
search. Every write is keyed, so seeding a database twice creates nothing new.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import phonenumbers

from callbridge.settings import AgentSettings, ApiToken, Settings
from customers.compute import compute_all
from customers.model import Channel, Identity, IdentityKind, NewCustomer
from customers.segments import RuleSet, load_rules
from customers.store import CustomerStore, NotFound
from screenpop.sessions import hash_password

DEMO_PASSWORD = "demo"
"""Every demo agent's password; the demo prints it with the logins."""

_SOURCE = "demo"
_DAY = 86400.0

_GIVEN = [
    "Ada",
    "Ben",
    "Chloe",
    "Dmitri",
    "Elena",
    "Farid",
    "Grace",
    "Hiro",
    "Ines",
    "Jonas",
    "Kofi",
    "Lena",
    "Marco",
    "Nadia",
    "Omar",
    "Priya",
    "Quinn",
    "Rosa",
    "Sven",
    "Tara",
    "Umar",
    "Vera",
    "Wen",
    "Ximena",
    "Yusuf",
    "Zoe",
]
_FAMILY = [
    "Okafor",
    "Schmidt",
    "Dubois",
    "Rossi",
    "Tanaka",
    "Silva",
    "Nowak",
    "Haddad",
    "Kim",
    "Jensen",
    "Moreau",
    "Garcia",
    "Novak",
    "Ivanova",
    "Mensah",
    "Larsen",
    "Costa",
    "Weber",
    "Sato",
    "Ali",
    "Murphy",
    "Berg",
    "Fischer",
    "Lopez",
]
_AREAS = ("212", "312", "415", "617", "713", "206", "305", "512", "602", "303")


@dataclass(frozen=True, slots=True)
class DemoBase:
    featured: int
    generated: int
    rejected: int
    seeded: bool
    """False when the database held the demo customers already."""


async def seed_demo_customers(
    store: CustomerStore,
    *,
    now: float,
    generated: int = 5000,
    seed: int = 7,
    rules: RuleSet | None = None,
) -> DemoBase:
    """The featured customers with their histories, then ``generated`` random ones; then, with
    segment ``rules``, every value and segment computed as ``customers segments`` does."""
    try:
        await store.get_customer("C-100042")  # the last one _featured creates
    except NotFound:
        pass
    else:
        return DemoBase(featured=5, generated=0, rejected=0, seeded=False)
    await _featured(store, now)
    rng = random.Random(seed)
    created = rejected = 0
    batch: list[NewCustomer] = []
    for n in range(generated):
        batch.append(_generated_customer(n, rng))
        if len(batch) == 2000 or n == generated - 1:
            result = await store.create_customers(batch)
            created += len(result.created) + len(result.updated)
            rejected += len(result.rejected)
            batch = []
    if rules is not None:
        await compute_all(store, rules, now)
    return DemoBase(featured=5, generated=created, rejected=rejected, seeded=True)


async def _featured(store: CustomerStore, now: float) -> None:
    phone, email = IdentityKind.PHONE, IdentityKind.EMAIL
    jane = await store.create_customer(
        "Jane Doe",
        customer_id="demo-jane",
        identities=[
            Identity(phone, "+14155550123", label="mobile"),
            (email, "jane.doe@example.com"),
            (IdentityKind.MEMBER, "M-20417"),
            Identity(IdentityKind.EXTERNAL, "SHOP-88123", system="shop"),
            Identity(IdentityKind.IM, "+14155550123", system="whatsapp"),
        ],
        attributes={"tier": "gold", "preferred_language": "English"},
        source=_SOURCE,
        given_name="Jane",
        family_name="Doe",
        timezone="America/Los_Angeles",
        birthday="1986-04-12",
    )
    history: Sequence[tuple[float, Channel, str, str, dict[str, object]]] = (
        (2, Channel.EMAIL, "inbound", "Where is my order #5521?", {}),
        (3, Channel.ORDER, "", "Order #5521: noise-cancelling headset", {"amount": 189.0}),
        (5, Channel.WEB, "inbound", "Viewed: returns policy, headset accessories", {}),
        (9, Channel.CHAT, "inbound", "Asked about extended warranty", {}),
        (
            12,
            Channel.CALL,
            "inbound",
            "Billing question, resolved",
            {"queue": "support", "disposition": "resolved"},
        ),
        (20, Channel.SMS, "outbound", "Your order #5390 has shipped", {}),
        (21, Channel.ORDER, "", "Order #5390: desk lamp", {"amount": 64.5}),
        (35, Channel.VISIT, "inbound", "Store visit: Union Square", {}),
        (48, Channel.ORDER, "", "Order #5102: ergonomic chair", {"amount": 420.0}),
        (
            60,
            Channel.CALL,
            "outbound",
            "Renewal offer accepted",
            {"campaign": "renewals-q2", "disposition": "sale"},
        ),
        (75, Channel.EMAIL, "outbound", "Loyalty points statement", {}),
        (90, Channel.ORDER, "", "Order #4877: monitor arm", {"amount": 99.0}),
        (120, Channel.FAX, "inbound", "Signed business account form", {}),
        (150, Channel.ORDER, "", "Order #4410: standing desk", {"amount": 610.0}),
    )
    for days, channel, direction, summary, data in history:
        await store.append_interaction(
            jane.id,
            channel,
            at=now - days * _DAY,
            direction=direction,
            summary=summary,
            data=data,
            source=_SOURCE,
            external_id=f"jane-{days}-{channel.value}",
        )
    await store.add_note(jane.id, "agent1", "Prefers email follow-ups; call only about orders.", pinned=True)
    await store.add_note(jane.id, "agent2", "Asked twice about the headset warranty: offer the extension.")
    await store.set_channel_permission(jane.id, Channel.SMS, True)

    for customer_id, name, given in (
        ("demo-robert-chen", "Robert Chen", "Robert"),
        ("demo-mei-chen", "Mei Chen", "Mei"),
    ):
        chen = await store.create_customer(
            name,
            customer_id=customer_id,
            identities=[
                Identity(phone, "+12125550147", label="home", shared=True),
                (email, f"{given.lower()}.chen@example.net"),
            ],
            source=_SOURCE,
            given_name=given,
            family_name="Chen",
            timezone="America/New_York",
        )
        await store.append_interaction(
            chen.id,
            Channel.CALL,
            at=now - (4 if given == "Mei" else 30) * _DAY,
            direction="inbound",
            summary="Asked about delivery times",
            source=_SOURCE,
            external_id=f"{customer_id}-call",
        )
    acme = await store.create_customer(
        "Acme Logistics",
        customer_id="demo-acme",
        identities=[Identity(phone, "+13125550188", label="switchboard"), (email, "purchasing@acme.example")],
        attributes={"account_manager": "Bob", "contract": "enterprise"},
        source=_SOURCE,
        company="Acme Logistics",
        timezone="America/Chicago",
    )
    await store.append_interaction(
        acme.id,
        Channel.ORDER,
        at=now - 15 * _DAY,
        summary="PO 7781: 40 headsets",
        data={"amount": 7200.0},
        source=_SOURCE,
        external_id="acme-po-7781",
    )
    await store.add_note(acme.id, "agent3", "Transfers to purchasing go to Bob.")
    await store.add_do_not_call("number", "+14155550144", source=_SOURCE, reason="asked not to be called")
    sam = await store.create_customer(
        "Sam Rivera",
        customer_id="C-100042",
        identities=[Identity(phone, "+14155550142", label="mobile"), (email, "sam.rivera@example.org")],
        attributes={"plan": "basic", "renewal_due": "next month"},
        source=_SOURCE,
        given_name="Sam",
        family_name="Rivera",
        timezone="America/Los_Angeles",
    )
    await store.append_interaction(
        sam.id,
        Channel.EMAIL,
        at=now - 7 * _DAY,
        direction="outbound",
        summary="Your plan renews next month",
        source=_SOURCE,
        external_id="sam-renewal-mail",
    )


def _generated_customer(n: int, rng: random.Random) -> NewCustomer:
    given, family = rng.choice(_GIVEN), rng.choice(_FAMILY)
    while True:
        number = f"+1{rng.choice(_AREAS)}{rng.randint(200, 999)}{rng.randint(0, 9999):04d}"
        if phonenumbers.is_valid_number(phonenumbers.parse(number)):
            break
    identities: list[Identity | tuple[IdentityKind | str, str]] = [
        Identity(IdentityKind.PHONE, number, label="mobile"),
        (IdentityKind.EMAIL, f"{given}.{family}.{n}@example.com".lower()),
    ]
    if n % 3 == 0:
        identities.append((IdentityKind.MEMBER, f"M-{30000 + n}"))
    return NewCustomer(
        display_name=f"{given} {family}",
        identities=tuple(identities),
        fields={"given_name": given, "family_name": family},
        key=f"{_SOURCE}:gen-{n}",
        source=_SOURCE,
        value=float(rng.randint(5, 95)),
    )


DEMO_API_TOKEN = ApiToken("demo", "demo-api-token-0123456789", role="admin")
"""The REST API's token in the demo when the settings give none (printed with the logins)."""


def with_demo_logins(settings: Settings) -> Settings:
    """Every configured agent gets ``DEMO_PASSWORD``, and the API ``DEMO_API_TOKEN`` unless the
    settings name tokens: the demo is for trying, not guarding."""
    password_hash = hash_password(DEMO_PASSWORD)
    agents = tuple(dataclasses.replace(a, password_hash=password_hash) for a in settings.agents)
    http = settings.http
    if not http.api_tokens:
        http = dataclasses.replace(http, api_tokens=(DEMO_API_TOKEN,))
    return dataclasses.replace(settings, agents=agents, http=http)


def login_lines(agents: Sequence[AgentSettings]) -> list[str]:
    return [f"  {agent.id:<10} {agent.name:<8} password: {DEMO_PASSWORD}" for agent in agents]


def demo_rules(path: str | Path) -> RuleSet | None:
    """The segment rules when the file is there (a checkout); an installed demo runs without."""
    return load_rules(path) if Path(path).exists() else None
