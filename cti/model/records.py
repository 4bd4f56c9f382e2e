"""The model's own mutable records; snapshots (``cti.model.snapshots``) are built from them.

Handlers mutate records in place: building a frozen snapshot for every message would cost more
than parsing it. A record builds its snapshot only when a change is reported or read.
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
)


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
            snap = self.snap = Leg(
                uniqueid=self.uid,
                channel=self.channel,
                device=self.device,
                state=self.state,
                caller_num=self.num,
                caller_name=self.name,
                connected_num=self.connected_num,
                connected_name=self.connected_name,
                context=self.context,
                exten=self.exten,
                answered=self.answered,
                bridge=self.bridge,
                local_peer=self.peer,
                agent=self.agent,
                created_at=self.created_at,
                ended_at=self.ended_at,
                hangup_cause=self.cause,
                hangup_cause_text=self.cause_text,
            )
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

    def snapshot(self, queue_position: int | None = None) -> Call:
        outbound = self.direction == "outbound"
        return Call(
            id=self.id,
            state=self.state,
            direction=self.direction,
            caller_num=self.num,
            caller_name=self.name,
            dialed=self.dialed,
            remote_num=self.dialed if outbound else self.num,
            remote_name=None if outbound else self.name,
            queue=self.queue,
            queue_position=queue_position,
            agent=self.agent,
            agent_interface=self.agent_interface,
            ringing_agents=tuple(leg.agent for leg in self.ringing.values() if leg.agent is not None),
            agents=tuple(self.agents),
            transfers=tuple(self.transfers),
            held=self.held,
            hold_count=self.hold_count,
            ivr=self.ivr,
            variables=dict(self.variables),
            legs=tuple(leg.snapshot() for leg in self.legs.values()),
            started_at=self.started_at,
            customer_answered_at=self.customer_answered_at,
            queued_at=self.queued_at,
            ringing_at=self.ringing_at,
            answered_at=self.answered_at,
            ended_at=self.ended_at,
            abandoned=self.abandoned,
            wait_time=self.wait_time,
            talk_time=self.talk_time,
            dial_status=self.dial_status,
            hangup_cause=self.cause,
            hangup_cause_text=self.cause_text,
            ended_by=self.ended_by,
            end_reason=self.end_reason,
            originate_id=self.originate_id,
        )


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
        paused = tuple(q for q, m in self.memberships.items() if m.paused)
        reason = next(
            (m.paused_reason for m in self.memberships.values() if m.paused and m.paused_reason), None
        )
        return Agent(
            id=self.id,
            status=self.status,
            name=self.name,
            interfaces=tuple(self.interfaces),
            state_interface=self.state_interface,
            paused_reason=reason,
            paused_queues=paused,
            queues=tuple(self.memberships),
            memberships=tuple(self.memberships.values()),
            call_id=self.call_id(),
            device_state=self.device_state,
            status_since=self.status_since,
            wrapup_until=self.wrapup_until,
            answered_calls=self.answered_calls,
        )


class QueueRecord:
    __slots__ = ("abandoned", "answered", "members", "name", "snap", "strategy", "waiting", "wrapup")

    def __init__(self, name: str, wrapup: float = 0.0) -> None:
        self.name = name
        self.strategy: str | None = None
        self.members: dict[str, None] = {}
        self.waiting: list[str] = []
        self.answered = 0
        self.abandoned = 0
        self.wrapup = wrapup
        self.snap: Queue | None = None

    def snapshot(self) -> Queue:
        return Queue(
            name=self.name,
            strategy=self.strategy,
            members=tuple(self.members),
            waiting=tuple(self.waiting),
            answered=self.answered,
            abandoned=self.abandoned,
            wrapup=self.wrapup,
        )
