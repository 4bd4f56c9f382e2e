"""The model's own mutable records; snapshots (``cti.model.snapshots``) are built from them.

Handlers mutate records in place: building a frozen snapshot for every message would cost more
than parsing it. A record builds its snapshot only when a change is reported or read, in a
draft of the snapshot's class (``cti.model.snapshots.draft_class``) that then becomes frozen.
"""

from __future__ import annotations

from collections.abc import Iterator

from cti.model.snapshots import (
    Agent,
    AgentStatus,
    Call,
    CallState,
    IvrVisit,
    Leg,
    Membership,
    Queue,
    Transfer,
    draft_class,
    freeze,
    new_draft,
)

_LegDraft = draft_class(Leg)
_CallDraft = draft_class(Call)
_AgentDraft = draft_class(Agent)
_QueueDraft = draft_class(Queue)


class LegRecord:
    __slots__ = (
        "agent",
        "answered",
        "bridge",
        "call",
        "cause",
        "cause_text",
        "channel",
        "connected_name",
        "connected_num",
        "context",
        "created_at",
        "device",
        "ended_at",
        "exten",
        "name",
        "num",
        "peer",
        "snap",
        "state",
        "uid",
    )

    def __init__(self, uid: str, channel: str, device: str, call: CallRecord, now: float) -> None:
        self.uid = uid
        self.channel = channel
        self.device = device
        self.call = call
        self.created_at = now
        self.state = ""
        self.num: str | None = None
        self.name: str | None = None
        self.connected_num: str | None = None
        self.connected_name: str | None = None
        self.context = ""
        self.exten = ""
        self.answered = False
        self.bridge: str | None = None
        self.peer: str | None = None
        self.agent: str | None = None
        self.ended_at: float | None = None
        self.cause: int | None = None
        self.cause_text: str | None = None
        self.snap: Leg | None = None

    def snapshot(self) -> Leg:
        snap = self.snap
        if snap is None:
            draft = new_draft(_LegDraft)
            draft.uniqueid = self.uid
            draft.channel = self.channel
            draft.device = self.device
            draft.state = self.state
            draft.caller_num = self.num
            draft.caller_name = self.name
            draft.connected_num = self.connected_num
            draft.connected_name = self.connected_name
            draft.context = self.context
            draft.exten = self.exten
            draft.answered = self.answered
            draft.bridge = self.bridge
            draft.local_peer = self.peer
            draft.agent = self.agent
            draft.created_at = self.created_at
            draft.ended_at = self.ended_at
            draft.hangup_cause = self.cause
            draft.hangup_cause_text = self.cause_text
            freeze(draft, "__class__", Leg)
            snap = self.snap = draft
        return snap


class CallRecord:
    __slots__ = (
        "abandoned",
        "agent",
        "agent_interface",
        "agent_leg",
        "agents",
        "answer_leg",
        "answered_at",
        "cause",
        "cause_text",
        "click_to_dial",
        "customer_answered_at",
        "customer_leg",
        "dial_status",
        "dialed",
        "direction",
        "end_reason",
        "ended_at",
        "ended_by",
        "first",
        "hangup_side",
        "held",
        "hold_count",
        "hold_leg",
        "id",
        "in_queue",
        "ivr",
        "ivr_leg",
        "last_agent",
        "last_agent_interface",
        "legs",
        "live_legs",
        "name",
        "num",
        "originate_id",
        "originated",
        "queue",
        "queued_at",
        "ringing",
        "ringing_at",
        "started_at",
        "state",
        "talk_time",
        "transfer_open",
        "transfers",
        "variables",
        "wait_time",
    )

    def __init__(self, call_id: str, now: float) -> None:
        self.id = call_id
        self.state = CallState.ROUTING
        self.direction = "inbound"
        self.num: str | None = None
        self.name: str | None = None
        self.dialed: str | None = None
        self.queue: str | None = None
        self.in_queue = False
        self.agent: str | None = None
        self.agent_interface: str | None = None
        self.agent_leg: LegRecord | None = None
        self.answer_leg: LegRecord | None = None
        self.last_agent: str | None = None
        self.last_agent_interface: str | None = None
        self.ringing: dict[str, LegRecord] = {}
        self.agents: list[str] = []
        self.transfers: list[Transfer] = []
        self.transfer_open = False
        self.held = False
        self.hold_leg: str | None = None
        self.hold_count = 0
        self.ivr: IvrVisit | None = None
        self.ivr_leg: str | None = None
        self.variables: dict[str, str] = {}
        self.legs: dict[str, LegRecord] = {}
        self.live_legs = 0
        self.first: LegRecord | None = None
        self.started_at = now
        self.customer_answered_at: float | None = None
        self.queued_at: float | None = None
        self.ringing_at: float | None = None
        self.answered_at: float | None = None
        self.ended_at: float | None = None
        self.abandoned = False
        self.wait_time: float | None = None
        self.talk_time: float | None = None
        self.dial_status: str | None = None
        self.cause: int | None = None
        self.cause_text: str | None = None
        self.hangup_side: str | None = None
        self.ended_by: str | None = None
        self.end_reason: str | None = None
        self.originate_id: str | None = None
        # The first leg was dialed by an Originate (a DialBegin with no calling channel).
        self.originated = False
        # Rule 2: that first leg is an agent's device: the agent's own outbound call.
        self.click_to_dial = False
        # Click-to-dial: the customer's phone, i.e. the leg the agent's side dialed, or the
        # agent's own leg when its dialplan plays the phone (Rule 4).
        self.customer_leg: LegRecord | None = None

    def is_customer(self, leg: LegRecord) -> bool:
        """The first leg and its Local other half are the customer's side of the call."""
        first = self.first
        return first is not None and (leg is first or leg.uid == first.peer)

    def customer_legs(self) -> Iterator[LegRecord]:
        first = self.first
        if first is None:
            return
        yield first
        if first.peer is not None and first.peer in self.legs:
            yield self.legs[first.peer]

    def customer_alive(self) -> bool:
        """Both halves of a Local pair go when one goes: one ended half means the customer left."""
        return self.first is not None and all(leg.ended_at is None for leg in self.customer_legs())

    def release(self) -> None:
        """Drop the ended call's references to its legs.

        Each leg points back at its call: left linked, an ended call is a reference cycle that
        only the garbage collector's full passes free, and those passes stop the event loop for
        hundreds of milliseconds once a busy service has piled up thousands of them. Unlinked,
        the call and its legs go by reference counting as soon as the model forgets them."""
        self.legs = {}
        self.ringing = {}
        self.first = None
        self.agent_leg = None
        self.answer_leg = None
        self.customer_leg = None

    def snapshot(self, queue_position: int | None = None) -> Call:
        outbound = self.direction == "outbound"
        draft = new_draft(_CallDraft)
        draft.id = self.id
        draft.state = self.state
        draft.direction = self.direction
        draft.caller_num = self.num
        draft.caller_name = self.name
        draft.dialed = self.dialed
        draft.remote_num = self.dialed if outbound else self.num
        draft.remote_name = None if outbound else self.name
        draft.queue = self.queue
        draft.queue_position = queue_position
        draft.agent = self.agent
        draft.agent_interface = self.agent_interface
        draft.ringing_agents = tuple([leg.agent for leg in self.ringing.values() if leg.agent is not None])
        draft.agents = tuple(self.agents)
        draft.transfers = tuple(self.transfers)
        draft.held = self.held
        draft.hold_count = self.hold_count
        draft.ivr = self.ivr
        draft.variables = dict(self.variables)
        draft.legs = tuple([leg.snapshot() for leg in self.legs.values()])
        draft.started_at = self.started_at
        draft.customer_answered_at = self.customer_answered_at
        draft.queued_at = self.queued_at
        draft.ringing_at = self.ringing_at
        draft.answered_at = self.answered_at
        draft.ended_at = self.ended_at
        draft.abandoned = self.abandoned
        draft.wait_time = self.wait_time
        draft.talk_time = self.talk_time
        draft.dial_status = self.dial_status
        draft.hangup_cause = self.cause
        draft.hangup_cause_text = self.cause_text
        draft.ended_by = self.ended_by
        draft.end_reason = self.end_reason
        draft.originate_id = self.originate_id
        freeze(draft, "__class__", Call)
        snap: Call = draft
        return snap


class AgentRecord:
    __slots__ = (
        "answered_calls",
        "config_wrapup",
        "device_state",
        "id",
        "interfaces",
        "legs",
        "member_wrapup",
        "memberships",
        "name",
        "snap",
        "state_interface",
        "status",
        "status_since",
        "wrapup_until",
    )

    def __init__(self, agent_id: str, name: str | None, now: float) -> None:
        self.id = agent_id
        self.name = name
        self.interfaces: list[str] = []
        self.state_interface: str | None = None
        self.memberships: dict[str, Membership] = {}
        self.member_wrapup: dict[str, float] = {}
        self.config_wrapup = 0.0
        self.device_state: str | None = None
        # uniqueid of the agent's dialed leg -> (call id, connected?)
        self.legs: dict[str, tuple[str, bool]] = {}
        self.wrapup_until: float | None = None
        self.answered_calls = 0
        self.status = AgentStatus.LOGGED_OUT
        self.status_since = now
        self.snap: Agent | None = None

    def derive_status(self, now: float) -> AgentStatus:
        """Rule 8 of ``cti.model.model``."""
        legs = self.legs
        if legs:
            for _, connected in legs.values():
                if connected:
                    return AgentStatus.ON_CALL
            return AgentStatus.RINGING
        if self.wrapup_until is not None and now < self.wrapup_until:
            return AgentStatus.WRAP_UP
        if not self.memberships or self.device_state in ("unavailable", "invalid"):
            return AgentStatus.LOGGED_OUT
        for membership in self.memberships.values():
            if membership.paused:
                return AgentStatus.PAUSED
        return AgentStatus.READY

    def call_id(self) -> str | None:
        ringing = None
        for call_id, connected in self.legs.values():
            if connected:
                return call_id
            ringing = call_id
        return ringing

    def snapshot(self) -> Agent:
        memberships = self.memberships
        draft = new_draft(_AgentDraft)
        draft.id = self.id
        draft.status = self.status
        draft.name = self.name
        draft.interfaces = tuple(self.interfaces)
        draft.state_interface = self.state_interface
        paused: list[str] = []
        reason = None
        for queue, membership in memberships.items():
            if membership.paused:
                paused.append(queue)
                if reason is None and membership.paused_reason:
                    reason = membership.paused_reason
        draft.paused_reason = reason
        draft.paused_queues = tuple(paused)
        draft.queues = tuple(memberships)
        draft.memberships = tuple(memberships.values())
        draft.call_id = self.call_id()
        draft.device_state = self.device_state
        draft.status_since = self.status_since
        draft.wrapup_until = self.wrapup_until
        draft.answered_calls = self.answered_calls
        freeze(draft, "__class__", Agent)
        snap: Agent = draft
        return snap


class QueueRecord:
    __slots__ = (
        "_members",
        "abandoned",
        "answered",
        "members",
        "name",
        "snap",
        "strategy",
        "waiting",
        "wrapup",
    )

    def __init__(self, name: str, wrapup: float = 0.0) -> None:
        self.name = name
        self.strategy: str | None = None
        # Change it with add_member / remove_member only: the snapshot reuses the tuple of its
        # members until then (a queue of 1,000 agents is refreshed several times a call).
        self.members: dict[str, None] = {}
        self._members: tuple[str, ...] = ()
        self.waiting: list[str] = []
        self.answered = 0
        self.abandoned = 0
        self.wrapup = wrapup
        self.snap: Queue | None = None

    def add_member(self, agent_id: str) -> bool:
        """Add an agent; False if it is a member already."""
        if agent_id in self.members:
            return False
        self.members[agent_id] = None
        self._members = tuple(self.members)
        return True

    def remove_member(self, agent_id: str) -> None:
        if self.members.pop(agent_id, 0) is None:
            self._members = tuple(self.members)

    def snapshot(self) -> Queue:
        draft = new_draft(_QueueDraft)
        draft.name = self.name
        draft.strategy = self.strategy
        draft.members = self._members
        draft.waiting = tuple(self.waiting)
        draft.answered = self.answered
        draft.abandoned = self.abandoned
        draft.wrapup = self.wrapup
        freeze(draft, "__class__", Queue)
        snap: Queue = draft
        return snap
