"""Screen-pop: which agent sees which pop, pushed to the agents' sessions.

``PopTracker`` (``screenpop.tracker``) is the pure core: ``CallChanged`` in, ``ShowPop`` /
``UpdatePop`` / ``RetractPop`` out; its rules are written at the top of that module.
``PopAssembler`` (``screenpop.assembly``) turns a ``ShowPop`` into the payload the agent sees:
the call facts and the customer (or candidates) behind the number.
"""

from screenpop.assembly import PopAssembler, payload_json
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

__all__ = [
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
