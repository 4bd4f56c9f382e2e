"""The vendor-neutral call / agent / queue snapshots: frozen, plain values, safe to hand to a broker.

A snapshot is taken when something changed; it never changes afterwards. The model keeps its own
mutable records (``cti.model.records``) and builds these from them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any


class CallState(Enum):
    """Where a call is. The transitions are written at the top of ``cti.model.model``.

    ``ROUTING`` and ``DIALING`` extend the six states of the design:

    * ``ROUTING``: the call runs dialplan with nobody on it yet or any more: a new inbound call
      before its first IVR/queue/dial, after an IVR returns, between a transfer and its
      destination, after the agent left while the customer is still on the line.
    * ``DIALING``: an outbound call ringing the customer (originated, not answered yet); for a
      click-to-dial, the agent answered their device and hears the customer's phone ring.
    """

    ROUTING = "routing"
    DIALING = "dialing"
    IVR = "ivr"
    QUEUED = "queued"
    RINGING = "ringing"
    CONNECTED = "connected"
    HELD = "held"
    ENDED = "ended"


class AgentStatus(Enum):
    LOGGED_OUT = "logged_out"
    READY = "ready"
    PAUSED = "paused"
    RINGING = "ringing"
    ON_CALL = "on_call"
    WRAP_UP = "wrap_up"


@dataclass(frozen=True, slots=True)
class Leg:
    """One channel of a call (Asterisk: one Uniqueid)."""

    uniqueid: str
    channel: str
    device: str
    state: str = ""
    """``ChannelStateDesc``: Down, Ring, Ringing, Up, Busy ..."""
    caller_num: str | None = None
    caller_name: str | None = None
    connected_num: str | None = None
    connected_name: str | None = None
    context: str = ""
    exten: str = ""
    answered: bool = False
    bridge: str | None = None
    local_peer: str | None = None
    """Uniqueid of the other half of a Local channel (``;1`` <-> ``;2``)."""
    agent: str | None = None
    """The agent whose device this leg is, if any."""
    created_at: float = 0.0
    ended_at: float | None = None
    hangup_cause: int | None = None
    hangup_cause_text: str | None = None

    @property
    def ended(self) -> bool:
        return self.ended_at is not None


@dataclass(frozen=True, slots=True)
class Transfer:
    """The call moved from one agent to another destination.

    ``detected_by`` is the event that revealed it: ``BlindTransfer``, ``AttendedTransfer``, or
    ``inferred`` (an AMI ``Redirect`` or a dialplan transfer: no transfer event, but the customer
    left agent A and rang or queued for somebody else).
    """

    kind: str
    """``blind`` or ``attended``."""
    from_agent: str | None
    to_agent: str | None = None
    to_queue: str | None = None
    to_exten: str | None = None
    at: float = 0.0
    detected_by: str = ""


@dataclass(frozen=True, slots=True)
class IvrVisit:
    """An IVR (AGI or AsyncAGI) the call went through; ``left_at`` is None while it is in it."""

    context: str
    exten: str
    application: str
    """``AGI`` (FastAGI or a local script) or ``AsyncAGI``."""
    script: str | None = None
    """``AppData`` of the AGI application, e.g. ``agi://127.0.0.1:4573/ivr?lang=en``."""
    entered_at: float = 0.0
    left_at: float | None = None
    digits: str = ""
    """What the caller keyed in during the visit: the digits of every ``DTMFEnd`` received on the
    IVR's leg, in order (``#`` and ``*`` included), at most ``MAX_IVR_DIGITS``."""
    steps: tuple[str, ...] = ()
    """What the IVR did with the caller, from its AGI commands (``AGIExecStart``): the prompts it
    played, the input it asked for, the applications it ran and the variables it set, as sent
    (``STREAM FILE demo-instruct "123"``, ``GET DATA vm-enter-num-to-call 6000 4``, ``SET VARIABLE
    IVR_CHOICE 2``); at most ``MAX_IVR_STEPS``, each cut at ``MAX_IVR_STEP_CHARS``."""


MAX_IVR_DIGITS = 64
MAX_IVR_STEPS = 50
MAX_IVR_STEP_CHARS = 120


@dataclass(frozen=True, slots=True)
class Call:
    """One call: every channel sharing an Asterisk Linkedid (``id``)."""

    id: str
    state: CallState
    direction: str = "inbound"
    """``inbound``, ``outbound`` (originated towards a customer number, or a click-to-dial from an
    agent's device) or ``internal``."""
    caller_num: str | None = None
    """CallerID of the call's first leg; for an outbound call it is our own presented number."""
    caller_name: str | None = None
    dialed: str | None = None
    """The DID / extension the caller dialed; for an outbound call, the customer's number."""
    remote_num: str | None = None
    """The customer's number whatever the direction: ``caller_num`` inbound, ``dialed`` outbound."""
    remote_name: str | None = None
    queue: str | None = None
    """The queue the call is (or was last) in."""
    queue_position: int | None = None
    agent: str | None = None
    """The agent ringing, connected, or (once the call moved on) last connected."""
    agent_interface: str | None = None
    """Device of that agent's leg, e.g. ``Local/agent1@agents``."""
    ringing_agents: tuple[str, ...] = ()
    agents: tuple[str, ...] = ()
    """Every agent the call was connected to, in order."""
    transfers: tuple[Transfer, ...] = ()
    held: bool = False
    hold_count: int = 0
    ivr: IvrVisit | None = None
    variables: dict[str, str] = field(default_factory=dict, hash=False)
    """Channel variables reported with the events (``manager.conf`` ``channelvars``), non-empty only."""
    legs: tuple[Leg, ...] = ()
    started_at: float = 0.0
    customer_answered_at: float | None = None
    """Outbound only: when the customer picked up (for a click-to-dial, ``answered_at`` too)."""
    queued_at: float | None = None
    ringing_at: float | None = None
    answered_at: float | None = None
    """When the call was first connected to an agent (or other destination)."""
    ended_at: float | None = None
    abandoned: bool = False
    wait_time: float | None = None
    """Seconds in queue: Asterisk's ``HoldTime`` (AgentConnect / QueueCallerAbandon)."""
    talk_time: float | None = None
    """Seconds with the agent: ``TalkTime`` of AgentComplete."""
    dial_status: str | None = None
    """The last ``DialStatus`` of a dial the customer side made or received (BUSY, NOANSWER ...)."""
    hangup_cause: int | None = None
    hangup_cause_text: str | None = None
    ended_by: str | None = None
    """``customer`` or ``agent``: the side whose hangup ended the conversation."""
    end_reason: str | None = None
    """``hangup``, or ``gone after resync`` when a reconnect found the call no longer there."""
    originate_id: str | None = None
    """ActionID of the AMI Originate that placed the call, from ``OriginateResponse``."""

    @property
    def live(self) -> bool:
        return self.state is not CallState.ENDED

    @property
    def customer_id(self) -> str | None:
        return self.variables.get("CUSTOMER_ID")

    @property
    def campaign_id(self) -> str | None:
        return self.variables.get("CAMPAIGN_ID")

    @property
    def answered(self) -> bool:
        return self.answered_at is not None or bool(self.agents)


@dataclass(frozen=True, slots=True)
class Membership:
    """An agent's membership of one queue (one Asterisk queue member)."""

    queue: str
    interface: str
    state_interface: str | None = None
    penalty: int = 0
    paused: bool = False
    paused_reason: str | None = None
    ringinuse: bool | None = None
    membership: str = "static"
    """``static``, ``dynamic`` (QueueAdd) or ``realtime``."""


@dataclass(frozen=True, slots=True)
class Agent:
    id: str
    status: AgentStatus = AgentStatus.LOGGED_OUT
    name: str | None = None
    interfaces: tuple[str, ...] = ()
    """Queue-member interfaces and declared devices, e.g. ``Local/agent1@agents/n``."""
    state_interface: str | None = None
    paused_reason: str | None = None
    paused_queues: tuple[str, ...] = ()
    queues: tuple[str, ...] = ()
    memberships: tuple[Membership, ...] = ()
    call_id: str | None = None
    device_state: str | None = None
    """Asterisk device state from queue member events: ``not_inuse``, ``inuse``, ``ringing`` ..."""
    status_since: float = 0.0
    wrapup_until: float | None = None
    answered_calls: int = 0
    """Calls connected to this agent since the model started (or was resynced)."""


@dataclass(frozen=True, slots=True)
class Queue:
    name: str
    strategy: str | None = None
    members: tuple[str, ...] = ()
    """Agent ids."""
    waiting: tuple[str, ...] = ()
    """Call ids in position order (a call ringing an agent is still waiting)."""
    answered: int = 0
    abandoned: int = 0
    wrapup: float = 0.0


def draft_class(cls: type) -> Any:
    """A mutable class with exactly the slots of the frozen dataclass ``cls``.

    The model builds a snapshot in it and then gives it its frozen class (``freeze``): a
    frozen dataclass's ``__init__`` sets each field through ``object.__setattr__``, and with
    keywords a ``Call`` costs ~6x more that way than plain slot stores (``bench/ami_ingest.py``).
    The layouts are the same (same slots, both from ``object``), so Python allows the class
    change; a field the builder forgets stays unset and fails at the first read (tests build
    every kind of snapshot and read every field).
    """
    return type(
        f"{cls.__name__}Draft", (), {"__slots__": cls.__dict__["__slots__"], "__module__": cls.__module__}
    )


new_draft: Any = object.__new__
freeze: Any = object.__setattr__
"""``freeze(draft, "__class__", cls)``: the draft becomes a frozen ``cls``."""
