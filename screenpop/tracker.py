"""Which agent sees which pop, and when it changes or goes: a pure state machine (sans-IO).

``PopTracker.apply(change, now)`` takes one ``CallChanged`` of ``cti.model`` and returns the pop
commands it causes (``ShowPop``, ``UpdatePop``, ``RetractPop``); ``live_pops(agent_id)`` gives an
agent's live pops again, for a second tab or a reload. No sockets, no clock: ``now`` is passed in.
Only the call snapshot is read, never the AMI events, so any adapter feeding the model (AMI,
Twilio) gets the same pops.

Rules:

Rule 1 (identity). A pop belongs to one (call, agent, ring attempt). Its id is
        ``"{call_id}:{agent_id}:{n}"``, ``n`` counting that agent's pops on that call from 1: an
        agent rung again after a ring-no-answer gets a new pop, never an old id back.
Rule 2 (show). A pop is shown (``ShowPop``) when the agent first appears in the call's
        ``ringing_agents`` (AMI ``AgentCalled``, a ``DialBegin`` to the agent's device, the model
        learning late that a ringing device is an agent's, a Twilio child call ringing). An agent
        the call is connected to without a pop (an attended-transfer target, a call found
        connected by a resync) gets one shown already answered. While the call is connected to
        one agent, the others it still lists as ringing (the few ms of a ringall before their
        rings are cancelled) get no pop; nor does an agent the call's last transfer moved away
        from (``BlindTransfer`` comes while that agent is still connected). A click-to-dial is
        the agent's own outbound call: its pop is shown while the agent's device rings (the
        model lists the agent in ``ringing_agents``), like any call ringing the agent.
Rule 3 (answer). A ringing pop becomes answered (``UpdatePop`` ``answered``) when the call is
        connected (``CONNECTED`` or ``HELD``) to its agent, or when the call is ``DIALING`` with
        that agent on it (a click-to-dial whose agent answered their device: the agent has taken
        the call, so it can be wrapped up even if the customer never answers); ``HELD`` and
        back update it (``held``, ``unheld``). The customer answering an outbound call the agent
        is on already (``customer_answered_at`` set) is an ``answered`` update too.
Rule 4 (ring ends). A ringing pop whose agent is neither ringing nor connected any more is
        retracted; the reason is the first of these that holds:
        1. ``caller_hung_up``: the call was abandoned (``QueueCallerAbandon``) or a leg of its
           customer side hung up;
        2. ``answered_elsewhere``: the call is connected to another agent or destination, or
           another agent it rings has answered (ringall: the losers' ``DialEnd CANCEL`` comes
           before ``AgentConnect``, while the winner's leg is already up);
        3. ``caller_hung_up``: the ring was cancelled by the caller. Outside a queue that is any
           ``DialStatus`` CANCEL (``Dial()`` cancels a ring only when the caller goes or another
           destination answered: 2.). In a queue (the call still has a position), a timed-out
           ring gets ``AgentRingNoAnswer`` before its CANCEL, and a caller who hangs up gets
           every ring cancelled before ``QueueCallerAbandon``: so only a CANCEL new since the
           previous change, or another ring ending in that same cancelled round, counts;
        4. ``ring_no_answer``: anything else (``AgentRingNoAnswer``, ``DialEnd`` NOANSWER or
           BUSY, the agent's leg hung up).
        A call that ends while the pop still rings gives ``caller_hung_up`` after a hangup,
        ``call_ended`` when a resync found the call gone. The ring of an outbound call no
        customer answered yet (a click-to-dial ringing the agent's own device: nobody calls,
        nobody can hang up) always ends with ``ring_no_answer``.
Rule 5 (answered pops). An answered pop stays live, updated, while the call is connected to its
        agent. It is retracted with ``transferred_away`` when the call records a transfer from
        that agent made after the pop was answered (``BlindTransfer``/``AttendedTransfer`` at
        once; a transfer the model infers when the customer rings or queues elsewhere), or when
        the call, no longer with that agent, rings or queues elsewhere; with ``call_ended`` when
        the call ends or goes on without the agent (the agent hung up, the customer stays in the
        dialplan): the agent page moves it to wrap-up.
Rule 6 (updates). A live pop gets an ``UpdatePop`` only when its facts changed; the reason says
        what changed most: its own state (``answered``, ``held``, ``unheld``), the customer
        answering an outbound call the agent is on (``answered``), a transfer, the
        caller id, the queue or wait facts, else ``details`` (variables, IVR).
Rule 7 (memory). The tracker keeps records only for calls with a pop; a call's record, and
        with it every pop and attempt counter, is dropped on its ``ended`` change. Nothing else
        is kept: an agent's live pops are found through the records.
Rule 8 (facts). ``facts`` is a JSON-able dict copied into each command: what the pop shows of
        the call (see ``_facts``). Times are the ``now`` values given to the model; the page
        counts on from them, so the tracker never updates a pop only because time passed.
Rule 9 (IVR input). ``facts["ivr"]`` carries the IVR visit with what the caller keyed in
        (``digits``) and what the IVR did (``steps``: its prompts, questions, applications and
        the variables it set). A tracker made with ``mask_ivr_input`` sends each digit as ``•``
        and leaves out the values of ``SET VARIABLE`` and ``SAY`` steps, for IVRs that take card
        numbers or PINs: what leaves the tracker (pops, updates, replays, webhooks) never has them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum, StrEnum
from typing import TypeAlias

from cti.model import Call, CallChanged, CallState, IvrVisit

JsonValue: TypeAlias = "str | int | float | bool | list[JsonValue] | dict[str, JsonValue] | None"
Facts: TypeAlias = dict[str, JsonValue]

_CONNECTED = (CallState.CONNECTED, CallState.HELD)
_CUSTOMER_ANSWERED = "customer_answered_at"
_CALLER_KEYS = ("caller_num", "caller_name", "remote_num", "remote_name")
_QUEUE_KEYS = ("queue", "queue_position", "queued_at", "wait_time")


class UpdateReason(StrEnum):
    ANSWERED = "answered"
    HELD = "held"
    UNHELD = "unheld"
    TRANSFERRED = "transferred"
    CALLER_ID = "caller_id"
    QUEUE = "queue"
    DETAILS = "details"
    CUSTOMER = "customer"
    """Not the tracker's: the agent created or linked the caller's customer from the pop, and the
    pop was assembled again (``screenpop.actions``)."""


class RetractReason(StrEnum):
    ANSWERED_ELSEWHERE = "answered_elsewhere"
    CALLER_HUNG_UP = "caller_hung_up"
    RING_NO_ANSWER = "ring_no_answer"
    CALL_ENDED = "call_ended"
    TRANSFERRED_AWAY = "transferred_away"


class PopState(Enum):
    RINGING = "ringing"
    ANSWERED = "answered"
    HELD = "held"


@dataclass(frozen=True, slots=True)
class ShowPop:
    pop_id: str
    agent_id: str
    call_id: str
    facts: Facts


@dataclass(frozen=True, slots=True)
class UpdatePop:
    pop_id: str
    agent_id: str
    facts: Facts
    reason: UpdateReason


@dataclass(frozen=True, slots=True)
class RetractPop:
    pop_id: str
    agent_id: str
    reason: RetractReason


PopCommand: TypeAlias = ShowPop | UpdatePop | RetractPop


@dataclass(slots=True)
class _Pop:
    pop_id: str
    agent_id: str
    call_id: str
    state: PopState
    ringing_since: float | None
    answered_at: float | None
    facts: Facts = field(default_factory=dict)


@dataclass(slots=True)
class _CallPops:
    live: dict[str, _Pop] = field(default_factory=dict)
    """Live pops by agent id: one at most per agent (Rule 1)."""
    attempts: dict[str, int] = field(default_factory=dict)
    dial_status: str | None = None
    """The call's ``dial_status`` in the previous change seen: tells a fresh CANCEL from an old one."""
    caller_cancelled: bool = False
    """A ring of this call was cancelled by the caller; its other rings go with it (Rule 4)."""


class PopTracker:
    """The live pops of every agent, kept up to date from the call model's ``CallChanged``."""

    def __init__(self, *, mask_ivr_input: bool = False) -> None:
        self.mask_ivr_input = mask_ivr_input
        """Rule 9."""
        self._calls: dict[str, _CallPops] = {}
        # agent id -> call ids with a live pop for that agent, in the order they were shown.
        self._by_agent: dict[str, dict[str, None]] = {}

    def __len__(self) -> int:
        """The number of live pops."""
        return sum(len(record.live) for record in self._calls.values())

    @property
    def tracked_calls(self) -> int:
        """Calls the tracker keeps a record of (Rule 7)."""
        return len(self._calls)

    def live_pops(self, agent_id: str) -> list[ShowPop]:
        """The agent's live pops with their current facts, oldest first: replay to a new session."""
        pops = []
        for call_id in self._by_agent.get(agent_id, ()):
            pop = self._calls[call_id].live[agent_id]
            pops.append(ShowPop(pop.pop_id, agent_id, call_id, dict(pop.facts)))
        return pops

    def apply(self, change: CallChanged, now: float) -> list[PopCommand]:
        """Take one call change seen at ``now``; return the pop commands it causes, in order."""
        call = change.call
        record = self._calls.get(call.id)
        if call.state is CallState.ENDED:
            return self._end(call, record)
        connected = call.state in _CONNECTED or _dialing_out(call)
        connected_agent = call.agent if connected else None
        if record is None:
            if not call.ringing_agents and connected_agent is None:
                return []
            record = self._calls[call.id] = _CallPops()

        retracts: list[PopCommand] = []
        updates: list[PopCommand] = []
        for agent_id, pop in list(record.live.items()):
            reason = _retract_reason(call, record, pop, connected_agent)
            if reason is not None:
                self._drop(record, pop)
                retracts.append(RetractPop(pop.pop_id, agent_id, reason))
                continue
            if pop.agent_id == connected_agent and pop.state is PopState.RINGING:
                pop.answered_at = now
            state = _pop_state(call, pop, connected_agent)
            facts = _facts(call, pop, state, self.mask_ivr_input)
            if facts != pop.facts:
                update_reason = _update_reason(change.change, pop, state, facts)
                pop.state = state
                pop.facts = facts
                updates.append(UpdatePop(pop.pop_id, agent_id, dict(facts), update_reason))

        shows: list[PopCommand] = []
        if connected:
            new_agents: tuple[str, ...] = (connected_agent,) if connected_agent is not None else ()
        else:
            new_agents = call.ringing_agents
        for agent_id in new_agents:
            if agent_id in record.live or (connected and _transferred_away(call, agent_id)):
                continue
            n = record.attempts[agent_id] = record.attempts.get(agent_id, 0) + 1
            answered = agent_id == connected_agent
            pop = _Pop(
                f"{call.id}:{agent_id}:{n}",
                agent_id,
                call.id,
                PopState.RINGING,
                ringing_since=None if answered else now,
                answered_at=now if answered else None,
            )
            pop.state = _pop_state(call, pop, connected_agent)
            pop.facts = _facts(call, pop, pop.state, self.mask_ivr_input)
            record.live[agent_id] = pop
            self._by_agent.setdefault(agent_id, {})[call.id] = None
            shows.append(ShowPop(pop.pop_id, agent_id, call.id, dict(pop.facts)))
            # Somebody rings again: the caller is still there.
            record.caller_cancelled = False
        record.dial_status = call.dial_status
        if not record.live and not record.attempts:
            del self._calls[call.id]
        return retracts + updates + shows

    def _end(self, call: Call, record: _CallPops | None) -> list[PopCommand]:
        """Rule 7: the call's record goes with its last change."""
        if record is None:
            return []
        del self._calls[call.id]
        out: list[PopCommand] = []
        for agent_id, pop in list(record.live.items()):
            self._drop(record, pop)
            if pop.state is PopState.RINGING and call.end_reason == "hangup":
                unanswered = _outbound_unanswered(call)
                reason = RetractReason.RING_NO_ANSWER if unanswered else RetractReason.CALLER_HUNG_UP
            else:
                reason = RetractReason.CALL_ENDED
            out.append(RetractPop(pop.pop_id, agent_id, reason))
        return out

    def _drop(self, record: _CallPops, pop: _Pop) -> None:
        del record.live[pop.agent_id]
        calls = self._by_agent.get(pop.agent_id)
        if calls is not None:
            calls.pop(pop.call_id, None)
            if not calls:
                del self._by_agent[pop.agent_id]


def _dialing_out(call: Call) -> bool:
    """Rule 3: an agent on an outbound call whose customer is still being dialed (click-to-dial)."""
    return call.state is CallState.DIALING and call.agent is not None


def _retract_reason(
    call: Call, record: _CallPops, pop: _Pop, connected_agent: str | None
) -> RetractReason | None:
    agent_id = pop.agent_id
    if pop.state is PopState.RINGING:
        if agent_id == connected_agent:
            return None
        if agent_id in call.ringing_agents and call.state not in _CONNECTED:
            return None
        return _ring_end_reason(call, record, agent_id)
    # Rule 5: an answered pop.
    if _transferred_from(call, agent_id, pop.answered_at):
        return RetractReason.TRANSFERRED_AWAY
    if agent_id == connected_agent:
        return None
    if call.state in (CallState.RINGING, CallState.QUEUED) or call.state in _CONNECTED:
        return RetractReason.TRANSFERRED_AWAY
    return RetractReason.CALL_ENDED


def _ring_end_reason(call: Call, record: _CallPops, agent_id: str) -> RetractReason:
    """Rule 4."""
    if _outbound_unanswered(call):
        return RetractReason.RING_NO_ANSWER
    if call.abandoned or _customer_left(call):
        return RetractReason.CALLER_HUNG_UP
    if call.state in _CONNECTED:
        return RetractReason.ANSWERED_ELSEWHERE
    ringing = set(call.ringing_agents)
    ringing.discard(agent_id)
    if any(leg.agent in ringing and leg.answered and not leg.ended for leg in call.legs):
        return RetractReason.ANSWERED_ELSEWHERE
    if call.dial_status == "CANCEL":
        # app_queue: a ring that times out gets AgentRingNoAnswer first (its DialEnd CANCEL
        # comes after and changes nothing here); a caller who hangs up cancels every ring with
        # DialEnd CANCEL before QueueCallerAbandon. So in a queue (a position: still waiting)
        # only a CANCEL new in this change, or one of the same cancelled round, is the caller's.
        in_queue = call.queue_position is not None
        if not in_queue or record.dial_status != "CANCEL" or record.caller_cancelled:
            record.caller_cancelled = True
            return RetractReason.CALLER_HUNG_UP
    return RetractReason.RING_NO_ANSWER


def _outbound_unanswered(call: Call) -> bool:
    """An outbound call no customer answered yet: a ring there is the click-to-dial agent's own
    device, and nobody was calling who could hang up."""
    return call.direction == "outbound" and call.customer_answered_at is None


def _customer_left(call: Call) -> bool:
    """A leg of the customer side (the first leg and its Local other half) hung up."""
    first = next((leg for leg in call.legs if leg.uniqueid == call.id), None)
    if first is None:
        return False
    if first.ended:
        return True
    peer = first.local_peer
    return peer is not None and any(leg.uniqueid == peer and leg.ended for leg in call.legs)


def _transferred_from(call: Call, agent_id: str, since: float | None) -> bool:
    return since is not None and any(t.from_agent == agent_id and t.at >= since for t in call.transfers)


def _transferred_away(call: Call, agent_id: str) -> bool:
    """The call's last transfer left this agent, who may still be connected for a moment."""
    last = call.transfers[-1] if call.transfers else None
    return last is not None and last.from_agent == agent_id and last.to_agent != agent_id


def _pop_state(call: Call, pop: _Pop, connected_agent: str | None) -> PopState:
    if pop.agent_id != connected_agent:
        return pop.state
    return PopState.HELD if call.state is CallState.HELD else PopState.ANSWERED


def _update_reason(change: str, pop: _Pop, state: PopState, facts: Facts) -> UpdateReason:
    """Rule 6: the most telling of what changed."""
    if state is not pop.state:
        if state is PopState.HELD:
            return UpdateReason.HELD
        if pop.state is PopState.HELD:
            return UpdateReason.UNHELD
        return UpdateReason.ANSWERED
    old = pop.facts
    if old.get(_CUSTOMER_ANSWERED) != facts.get(_CUSTOMER_ANSWERED):
        return UpdateReason.ANSWERED
    if change == "transferred":
        return UpdateReason.TRANSFERRED
    if change == "caller" or any(old.get(key) != facts.get(key) for key in _CALLER_KEYS):
        return UpdateReason.CALLER_ID
    if any(old.get(key) != facts.get(key) for key in _QUEUE_KEYS):
        return UpdateReason.QUEUE
    return UpdateReason.DETAILS


_MASK = "\u2022"
_VALUE_STEPS = (("SET VARIABLE ", 3), ("SAY ", 2))
"""Steps whose words after the first N are what the caller gave (Rule 9)."""


def _masked_step(step: str) -> str:
    upper = step.upper()
    for prefix, keep in _VALUE_STEPS:
        if upper.startswith(prefix):
            words = step.split(" ")
            return " ".join(words[:keep]) + (f" {_MASK * 3}" if len(words) > keep else "")
    return step


def _ivr_facts(visit: IvrVisit | None, mask: bool) -> JsonValue:
    if visit is None:
        return None
    return {
        "context": visit.context,
        "exten": visit.exten,
        "application": visit.application,
        "script": visit.script,
        "entered_at": visit.entered_at,
        "left_at": visit.left_at,
        "digits": _MASK * len(visit.digits) if mask else visit.digits,
        "steps": [_masked_step(step) for step in visit.steps] if mask else list(visit.steps),
    }


def _facts(call: Call, pop: _Pop, state: PopState, mask_ivr_input: bool) -> Facts:
    """What the pop shows of the call (Rule 8): plain values only, safe to send as JSON."""
    wait: float | None = call.wait_time
    if state is PopState.RINGING and pop.ringing_since is not None and call.queued_at is not None:
        # Seconds in queue until this ring; Asterisk's HoldTime replaces it once answered.
        wait = round(max(0.0, pop.ringing_since - call.queued_at), 3)
    last_transfer = call.transfers[-1] if call.transfers else None
    transferred_from = (
        last_transfer.from_agent
        if last_transfer is not None and last_transfer.from_agent != pop.agent_id
        else None
    )
    return {
        "call_id": call.id,
        "state": state.value,
        "direction": call.direction,
        "caller_num": call.caller_num,
        "caller_name": call.caller_name,
        "dialed": call.dialed,
        "remote_num": call.remote_num,
        "remote_name": call.remote_name,
        "queue": call.queue,
        "queue_position": call.queue_position if state is PopState.RINGING else None,
        "queued_at": call.queued_at,
        "wait_time": wait,
        "ivr": _ivr_facts(call.ivr, mask_ivr_input),
        "customer_id": call.customer_id,
        "campaign_id": call.campaign_id,
        "variables": dict(call.variables),
        "transferred_from": transferred_from,
        "started_at": call.started_at,
        "ringing_since": pop.ringing_since,
        "answered_at": pop.answered_at,
        _CUSTOMER_ANSWERED: call.customer_answered_at,
    }
