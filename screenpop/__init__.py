"""Screen-pop: which agent sees which pop, pushed to the agents' sessions.

``PopTracker`` (``screenpop.tracker``) is the pure core: ``CallChanged`` in, ``ShowPop`` /
``UpdatePop`` / ``RetractPop`` out; its rules are written at the top of that module.
``PopAssembler`` (``screenpop.assembly``) turns a ``ShowPop`` into the payload the agent sees:
the call facts and the customer (or candidates) behind the number. ``WrapupDesk`` /
``WrapupService`` (``screenpop.wrapup``) store the agent's disposition and notes and pause the
agent while wrapping up; ``ClickToDial`` (``screenpop.dial``) originates calls from the page;
``Webhooks`` (``screenpop.webhook``) post pops to other systems; ``add_action_routes``
(``screenpop.actions``) puts these on the agent sub-app.
"""

from screenpop.actions import AgentActions, AgentProfile, add_action_routes
from screenpop.assembly import PopAssembler, payload_json
from screenpop.dial import ClickToDial, DialError, originate_fields
from screenpop.hub import LatencyStats, PopHub, hub_routes
from screenpop.sessions import AgentAccount, SessionStore, hash_password, verify_password
from screenpop.tracker import (
    Facts,
    PopCommand,
    PopState,
    PopTracker,
    RetractPop,
    RetractReason,
    ShowPop,
    UpdatePop,
    UpdateReason,
)
from screenpop.webhook import Webhooks, sign, verify
from screenpop.wrapup import PauseAgent, WrapupDesk, WrapupError, WrapupService

__all__ = [
    "AgentActions",
    "AgentProfile",
    "ClickToDial",
    "DialError",
    "PauseAgent",
    "Webhooks",
    "WrapupDesk",
    "WrapupError",
    "WrapupService",
    "add_action_routes",
    "originate_fields",
    "sign",
    "verify",
    "AgentAccount",
    "LatencyStats",
    "PopHub",
    "SessionStore",
    "hash_password",
    "hub_routes",
    "verify_password",
    "Facts",
    "PopAssembler",
    "PopCommand",
    "PopState",
    "PopTracker",
    "RetractPop",
    "RetractReason",
    "ShowPop",
    "UpdatePop",
    "UpdateReason",
    "payload_json",
]
