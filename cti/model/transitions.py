"""The model's indexes and the state changes several AMI events share.

``ModelState`` holds the records (calls by Linkedid, legs by Uniqueid, agents, queues, the
history of ended calls) and the transitions of the rules in ``cti.model.model``: a leg adopted,
a call ringing, connected, held, transferred, ended, an agent bound to a device, a queue
membership changed. Each transition reports what it changed into ``out``. The event handlers
(``cti.model.handlers``) read the messages and call these.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import replace

from cti.ami.message import Message
from cti.model.changes import AgentChanged, CallChanged, ModelChange, QueueChanged
from cti.model.config import QueueConfig
from cti.model.devices import (
    SPECIAL_EXTENS,
    agent_id_for_device,
    clean,
    device_of_channel,
    device_of_interface,
    is_number,
    local_parts,
    local_peer_name,
)
from cti.model.records import AgentRecord, CallRecord, LegRecord, QueueRecord
from cti.model.snapshots import (
    Call,
    CallState,
    IvrVisit,
    Membership,
    Transfer,
    draft_class,
    freeze,
    new_draft,
)

Out = list[ModelChange]
_MembershipDraft = draft_class(Membership)
_DEVICE_STATES = {
    "0": "unknown",
    "1": "not_inuse",
    "2": "inuse",
    "3": "busy",
    "4": "invalid",
    "5": "unavailable",
    "6": "ringing",
    "7": "ringinuse",
    "8": "onhold",
}
CONNECTED_STATES = (CallState.CONNECTED, CallState.HELD)
MOVABLE_STATES = (CallState.CONNECTED, CallState.HELD, CallState.ROUTING)
MAX_LEGS_PER_CALL = 40
DEAD_UIDS_KEPT = 4096
# Rule 9: the cause a far end played by the dialplan (Busy(), Congestion()) stands for.
FAR_END_CAUSES = {"BUSY": (17, "User busy"), "CONGESTION": (34, "Circuit/channel congestion")}


def parse_int(value: str | None, default: int = 0) -> int:
    try:
        return int(value) if value else default
    except ValueError:
        return default


class ModelState:
    """Records and transitions; no AMI parsing beyond the fields a transition needs."""

    def __init__(self, queues: Iterable[QueueConfig] = (), history: int = 1000) -> None:
        self._calls: dict[str, CallRecord] = {}
        self._legs: dict[str, LegRecord] = {}
        self._local_halves: dict[str, str] = {}
        # Uniqueids hung up lately: a late event about one must not bring its call back.
        self._dead: OrderedDict[str, None] = OrderedDict()
        self._ivr_legs: dict[str, CallRecord] = {}
        # Click-to-dial legs whose dialplan may play the customer's phone (Rule 4): watched in Newexten.
        self._dialing_legs: dict[str, CallRecord] = {}
        self._agents: dict[str, AgentRecord] = {}
        self._device_agent: dict[str, str] = {}
        self._queues: dict[str, QueueRecord] = {}
        self._queue_wrapup = {q.name: q.wrapup for q in queues}
        self._ended: OrderedDict[str, Call] = OrderedDict()
        self._history = history

    # --- snapshots and reporting ------------------------------------------------------------------

    def _snapshot(self, call: CallRecord) -> Call:
        position = None
        if call.in_queue and call.queue is not None:
            queue = self._queues.get(call.queue)
            if queue is not None and call.id in queue.waiting:
                position = queue.waiting.index(call.id) + 1
        return call.snapshot(position)

    def _emit(self, call: CallRecord, change: str, out: Out) -> None:
        out.append(CallChanged(self._snapshot(call), change))

    def _refresh_agent(self, agent: AgentRecord, now: float, change: str, out: Out) -> None:
        """Re-derive the agent's status; report it only if its snapshot changed."""
        if agent.wrapup_until is not None and now >= agent.wrapup_until:
            agent.wrapup_until = None
        status = agent.derive_status(now)
        if status is not agent.status:
            agent.status = status
            agent.status_since = now
        snap = agent.snapshot()
        if snap != agent.snap:
            agent.snap = snap
            out.append(AgentChanged(snap, change))

    def _refresh_queue(self, queue: QueueRecord, change: str, out: Out) -> None:
        snap = queue.snapshot()
        if snap != queue.snap:
            queue.snap = snap
            out.append(QueueChanged(snap, change))

    # --- legs -------------------------------------------------------------------------------------

    def _leg(
        self, msg: Message, now: float, out: Out, prefix: str = "", *, known_call: bool = False
    ) -> LegRecord | None:
        """The leg an event is about; a channel never seen (we started mid-call) is adopted.

        ``known_call``: adopt only into a call already known (a hangup of a call we never saw
        is nothing to report).
        """
        uid = msg.get(prefix + "Uniqueid")
        if not uid:
            return None
        leg = self._legs.get(uid)
        if leg is not None:
            return leg
        if uid in self._dead:
            return None
        linkedid = msg.get(prefix + "Linkedid")
        channel = msg.get(prefix + "Channel")
        if not linkedid or not channel or (known_call and linkedid not in self._calls):
            return None
        return self._new_leg(uid, linkedid, channel, msg, prefix=prefix, now=now, out=out)

    def _new_leg(
        self, uid: str, linkedid: str, channel: str, msg: Message, *, prefix: str = "", now: float, out: Out
    ) -> LegRecord:
        call = self._calls.get(linkedid)
        created = call is None
        if call is None:
            call = self._calls[linkedid] = CallRecord(linkedid, now)
        leg = LegRecord(uid, channel, device_of_channel(channel), call, now)
        leg.state = msg.get(prefix + "ChannelStateDesc") or ""
        leg.num = clean(msg.get(prefix + "CallerIDNum"))
        leg.name = clean(msg.get(prefix + "CallerIDName"))
        leg.connected_num = clean(msg.get(prefix + "ConnectedLineNum"))
        leg.connected_name = clean(msg.get(prefix + "ConnectedLineName"))
        leg.context = msg.get(prefix + "Context") or ""
        leg.exten = msg.get(prefix + "Exten") or ""
        leg.answered = leg.state == "Up"
        leg.agent = self._device_agent.get(leg.device)
        peer_name = local_peer_name(channel)
        if peer_name is not None:
            peer_uid = self._local_halves.get(peer_name)
            peer = self._legs.get(peer_uid) if peer_uid is not None else None
            if peer is not None:
                leg.peer = peer.uid
                peer.peer = uid
                peer.snap = None
            self._local_halves[channel] = uid
        self._legs[uid] = leg
        call.legs[uid] = leg
        call.live_legs += 1
        if call.first is None and (uid == linkedid or (leg.agent is None and peer_name is None)):
            self._set_first_leg(call, leg)
            if not created and (call.num or call.name):
                self._emit(call, "caller", out)
        if created:
            self._emit(call, "new", out)
        return leg

    def _set_first_leg(self, call: CallRecord, leg: LegRecord) -> None:
        call.first = leg
        call.num = leg.num
        call.name = leg.name
        if leg.agent is not None:
            call.direction = "internal"
            return
        parts = local_parts(leg.channel)
        if parts is not None and is_number(parts[0]) and leg.uid == call.id:
            call.direction = "outbound"
            call.dialed = parts[0]
            return
        self._note_dialed(call, leg, leg.context, leg.exten)

    def _note_dialed(self, call: CallRecord, leg: LegRecord, context: str | None, exten: str | None) -> None:
        """Rule 2: the first extension the first leg runs is the number the caller dialed."""
        if call.dialed is not None or leg is not call.first or call.direction != "inbound":
            return
        if not exten or exten in SPECIAL_EXTENS:
            return
        if local_parts(leg.channel) == (exten, context):
            return
        call.dialed = exten

    def _harvest(self, call: CallRecord, leg: LegRecord, msg: Message, prefix: str = "") -> bool:
        """Channel variables of the customer side; the first leg's values win."""
        values = msg.get_all(prefix + "ChanVariable")
        if not values:
            return False
        primary = leg is call.first
        variables = call.variables
        changed = False
        for item in values:
            name, _, value = item.partition("=")
            if not value:
                continue
            if primary:
                if variables.get(name) != value:
                    variables[name] = value
                    changed = True
            elif name not in variables:
                variables[name] = value
                changed = True
        return changed

    def _update_caller(self, leg: LegRecord, msg: Message) -> None:
        num = clean(msg.get("CallerIDNum"))
        name = clean(msg.get("CallerIDName"))
        if num != leg.num or name != leg.name:
            leg.num = num
            leg.name = name
            leg.snap = None

    def _side(self, call: CallRecord, leg: LegRecord) -> str | None:
        if call.click_to_dial:
            # Rule 9: the agent's device is the first leg; the customer is the leg it reached.
            customer = call.customer_leg
            if customer is not None and (
                leg is customer or (customer is not call.first and leg.uid == customer.peer)
            ):
                return "customer"
            return "agent" if call.is_customer(leg) else None
        if call.is_customer(leg):
            return "customer"
        agent_leg = call.agent_leg
        if (
            agent_leg is not None
            and call.state in CONNECTED_STATES
            and (leg is agent_leg or leg.uid == agent_leg.peer)
        ):
            return "agent"
        return None

    def _forget_old_legs(self, call: CallRecord) -> None:
        """Keep a long call's record bounded: drop the oldest ended legs outside the customer side."""
        for uid, leg in list(call.legs.items()):
            if len(call.legs) <= MAX_LEGS_PER_CALL:
                break
            if leg.ended_at is not None and not call.is_customer(leg):
                del call.legs[uid]

    # --- calls ------------------------------------------------------------------------------------

    def _customer_answered(self, call: CallRecord, now: float, out: Out) -> None:
        call.state = CallState.ROUTING
        call.customer_answered_at = now
        self._emit(call, "customer_answered", out)

    def _ring(
        self,
        call: CallRecord,
        dest: LegRecord,
        agent_id: str | None,
        *,
        queue: str | None = None,
        exten: str | None = None,
        now: float,
        out: Out,
    ) -> None:
        if dest.uid in call.ringing or dest is call.agent_leg:
            return
        self._leave_ivr(call, now)
        self._note_transfer(call, agent_id, None, exten, now)
        call.ringing[dest.uid] = dest
        call.state = CallState.RINGING
        call.ringing_at = now
        call.agent = agent_id
        call.agent_interface = dest.device
        if queue is not None:
            call.queue = queue
        self._emit(call, "ringing_agent" if agent_id is not None else "ringing", out)
        if agent_id is not None:
            self._agent_leg_state(dest, call, connected=False, now=now, out=out)

    def _start_click_to_dial(self, call: CallRecord, leg: LegRecord, now: float, out: Out) -> None:
        """Rule 2: an Originate rings an agent's device first: the agent's own outbound call."""
        call.click_to_dial = True
        call.direction = "outbound"
        # A number read from the Originate's dial string named the agent's device (PJSIP/1001).
        call.dialed = None
        self._ring(call, leg, leg.agent, now=now, out=out)
        if leg.answered:
            self._click_to_dial_taken(call, leg, now, out)

    def _click_to_dial_taken(self, call: CallRecord, leg: LegRecord, now: float, out: Out) -> None:
        """Rule 4: the agent answered their device; the dialplan now dials the customer."""
        if call.state is not CallState.RINGING or leg.uid not in call.ringing:
            return
        del call.ringing[leg.uid]
        call.state = CallState.DIALING
        call.agent_leg = leg
        call.agent = leg.agent
        call.agent_interface = leg.device
        call.last_agent = leg.agent
        call.last_agent_interface = leg.device
        self._dialing_legs[leg.uid] = call
        self._emit(call, "dialing", out)
        self._agent_leg_state(leg, call, connected=True, now=now, out=out)

    def _click_to_dial_connected(self, call: CallRecord, customer: LegRecord, now: float, out: Out) -> None:
        """Rule 4: the customer answered the agent's click-to-dial call."""
        if call.state is not CallState.DIALING:
            return
        call.customer_leg = customer
        call.state = CallState.CONNECTED
        call.customer_answered_at = now
        call.answered_at = now
        call.hangup_side = None
        self._stop_watching(call)
        agent_id = call.agent
        agent = self._agents.get(agent_id) if agent_id is not None else None
        if agent_id is not None:
            call.agents.append(agent_id)
        self._emit(call, "answered", out)
        if agent is not None:
            agent.answered_calls += 1
            self._refresh_agent(agent, now, "status", out)

    def _stop_watching(self, call: CallRecord) -> None:
        if call.first is not None:
            self._dialing_legs.pop(call.first.uid, None)

    def _ring_ended(self, call: CallRecord, dest: LegRecord, now: float, out: Out) -> None:
        """A ring that was not answered: AgentRingNoAnswer, DialEnd other than ANSWER, hangup."""
        if call.ringing.pop(dest.uid, None) is None:
            return
        if call.state is CallState.RINGING:
            if call.ringing:
                # ringall: the others still ring; the call shows the latest of them.
                latest = next(reversed(call.ringing.values()))
                call.agent = latest.agent
                call.agent_interface = latest.device
            else:
                call.state = CallState.QUEUED if call.in_queue else CallState.ROUTING
                call.agent = call.last_agent
                call.agent_interface = call.last_agent_interface
        self._emit(call, "ring_no_answer", out)
        self._release_agent_leg(dest, now, out)

    def _connect(
        self,
        call: CallRecord,
        dest: LegRecord,
        agent_id: str | None,
        now: float,
        out: Out,
        *,
        wait: float | None = None,
    ) -> None:
        if wait is not None:
            call.wait_time = wait
        if call.agent_leg is dest and call.state in CONNECTED_STATES:
            return
        call.ringing.pop(dest.uid, None)
        call.state = CallState.CONNECTED
        call.held = False
        call.agent_leg = dest
        call.answer_leg = None
        call.agent = agent_id
        call.agent_interface = dest.device
        call.last_agent = agent_id
        call.last_agent_interface = dest.device
        call.transfer_open = False
        call.hangup_side = None
        if call.answered_at is None:
            call.answered_at = now
        if agent_id is not None:
            call.agents.append(agent_id)
        self._emit(call, "answered", out)
        agent = self._agents.get(agent_id) if agent_id is not None else None
        if agent is not None:
            agent.answered_calls += 1
            self._agent_leg_state(dest, call, connected=True, now=now, out=out)

    def _note_transfer(
        self, call: CallRecord, to_agent: str | None, to_queue: str | None, to_exten: str | None, now: float
    ) -> None:
        """Rule 7: infer a transfer when the customer moves on from the agent it talked to."""
        if call.transfer_open and call.transfers:
            last = call.transfers[-1]
            call.transfers[-1] = replace(
                last,
                to_agent=to_agent,
                to_queue=to_queue or last.to_queue,
                to_exten=last.to_exten or to_exten,
            )
            return
        if call.last_agent is None or call.state not in MOVABLE_STATES:
            return
        if to_agent is not None and to_agent == call.last_agent:
            return
        call.transfers.append(
            Transfer("blind", call.last_agent, to_agent, to_queue, to_exten, now, "inferred")
        )
        call.transfer_open = True

    def _enter_ivr(
        self,
        call: CallRecord,
        leg: LegRecord,
        msg: Message,
        now: float,
        out: Out,
        *,
        application: str,
        script: str | None = None,
    ) -> None:
        if not call.is_customer(leg) or call.state in CONNECTED_STATES or call.state is CallState.ENDED:
            return
        if call.state is CallState.IVR:
            return
        call.ivr = IvrVisit(msg.get("Context") or "", msg.get("Exten") or "", application, script, now)
        call.ivr_leg = leg.uid
        self._ivr_legs[leg.uid] = call
        call.state = CallState.IVR
        self._emit(call, "ivr", out)

    def _leave_ivr(self, call: CallRecord, now: float) -> bool:
        if call.ivr_leg is None:
            return False
        self._ivr_legs.pop(call.ivr_leg, None)
        call.ivr_leg = None
        if call.ivr is not None and call.ivr.left_at is None:
            call.ivr = replace(call.ivr, left_at=now)
        if call.state is CallState.IVR:
            call.state = CallState.ROUTING
        return True

    def _hold(self, call: CallRecord, hold_leg: str | None, out: Out) -> None:
        call.state = CallState.HELD
        call.held = True
        call.hold_leg = hold_leg
        call.hold_count += 1
        self._emit(call, "held", out)

    def _unhold(self, call: CallRecord, out: Out) -> None:
        call.state = CallState.CONNECTED
        call.held = False
        call.hold_leg = None
        self._emit(call, "unheld", out)

    def _end_call(self, call: CallRecord, now: float, reason: str, out: Out) -> None:
        call.state = CallState.ENDED
        call.ended_at = now
        call.end_reason = reason
        call.held = False
        call.ringing.clear()
        self._pick_cause(call)
        call.ended_by = call.hangup_side
        if call.ivr_leg is not None:
            self._leave_ivr(call, now)
        self._stop_watching(call)
        for leg in call.legs.values():
            if leg.ended_at is None:
                # Only on resync: the PBX no longer has it, whatever we last heard.
                leg.ended_at = now
                leg.snap = None
                self._legs.pop(leg.uid, None)
                self._local_halves.pop(leg.channel, None)
            self._release_agent_leg(leg, now, out)
        queue = self._queues.get(call.queue) if call.queue is not None else None
        if queue is not None and call.id in queue.waiting:
            queue.waiting.remove(call.id)
            self._refresh_queue(queue, "left", out)
        call.in_queue = False
        self._calls.pop(call.id, None)
        snap = self._snapshot(call)
        call.release()
        self._ended[call.id] = snap
        self._ended.move_to_end(call.id)
        while len(self._ended) > self._history:
            self._ended.popitem(last=False)
        out.append(CallChanged(snap, "ended"))

    def _pick_cause(self, call: CallRecord) -> None:
        """Rule 9: the first informative cause on the customer side."""
        chosen: LegRecord | None = None
        customer = call.customer_leg
        if call.click_to_dial and customer is not None and customer is not call.first and customer.cause:
            chosen = customer
        for leg in call.customer_legs():
            if chosen is not None and chosen.cause:
                break
            if leg.cause is None:
                continue
            if chosen is None or (chosen.cause == 0 and leg.cause != 0):
                chosen = leg
        if chosen is None:
            for leg in call.legs.values():
                if leg.cause:
                    chosen = leg
                    break
        if chosen is not None:
            call.cause = chosen.cause
            call.cause_text = chosen.cause_text
        if call.click_to_dial and not call.cause and call.dial_status in FAR_END_CAUSES:
            call.cause, call.cause_text = FAR_END_CAUSES[call.dial_status]

    def _complete_ended(self, linkedid: str | None, agent_id: str | None, queue: str, talk: float) -> None:
        ended = self._ended.get(linkedid) if linkedid else None
        if ended is None and not linkedid and agent_id is not None:
            for _, snap in zip(range(50), reversed(self._ended.values()), strict=False):
                if snap.agent == agent_id and snap.queue == queue:
                    ended = snap
                    break
        if ended is not None and ended.talk_time is None:
            self._ended[ended.id] = replace(ended, talk_time=talk)

    # --- agents and queues ------------------------------------------------------------------------

    def _agent_leg_state(
        self, leg: LegRecord, call: CallRecord, *, connected: bool, now: float, out: Out
    ) -> None:
        agent = self._agents.get(leg.agent) if leg.agent is not None else None
        if agent is None:
            return
        agent.legs[leg.uid] = (call.id, connected)
        self._refresh_agent(agent, now, "status", out)

    def _release_agent_leg(self, leg: LegRecord, now: float, out: Out) -> None:
        if leg.agent is None:
            return
        agent = self._agents.get(leg.agent)
        if agent is not None and agent.legs.pop(leg.uid, None) is not None:
            self._refresh_agent(agent, now, "status", out)

    def _queue(self, name: str, out: Out) -> QueueRecord:
        queue = self._queues.get(name)
        if queue is None:
            queue = self._queues[name] = QueueRecord(name, self._queue_wrapup.get(name, 0.0))
            self._refresh_queue(queue, "new", out)
        return queue

    def _bind_device(self, device: str, agent: AgentRecord, now: float, out: Out) -> None:
        """Rule 3: a device now known as an agent's; the live legs on it become that agent's."""
        owner = self._device_agent.get(device)
        if owner is not None:
            return
        self._device_agent[device] = agent.id
        for leg in list(self._legs.values()):
            if leg.device != device or leg.agent is not None:
                continue
            leg.agent = agent.id
            leg.snap = None
            call = leg.call
            if leg is call.first and call.originated and not call.click_to_dial:
                if call.state in (CallState.ROUTING, CallState.DIALING) and call.customer_answered_at is None:
                    self._start_click_to_dial(call, leg, now, out)
                continue
            connected = leg is call.agent_leg
            if connected or leg.uid in call.ringing:
                agent.legs[leg.uid] = (call.id, connected)
                if call.agent is None:
                    call.agent = agent.id
                    if call.transfer_open and call.transfers and call.transfers[-1].to_agent is None:
                        call.transfers[-1] = replace(call.transfers[-1], to_agent=agent.id)
                    if connected:
                        call.last_agent = agent.id
                        call.agents.append(agent.id)
                    # For a ringing call this is the first sign it rings at an agent (screen-pop).
                    self._emit(call, "agent_identified" if connected else "ringing_agent", out)

    def _agent_for_member(
        self, interface: str, name: str | None, state_interface: str | None, now: float, out: Out
    ) -> AgentRecord:
        devices = [device_of_interface(interface)]
        if state_interface:
            devices.append(device_of_interface(state_interface))
        agent_id = None
        for device in devices:
            agent_id = self._device_agent.get(device)
            if agent_id is not None:
                break
        if agent_id is None:
            agent_id = agent_id_for_device(devices[-1])
        agent = self._agents.get(agent_id)
        if agent is None:
            agent = self._agents[agent_id] = AgentRecord(agent_id, clean(name), now)
            self._refresh_agent(agent, now, "new", out)
        elif agent.name is None and clean(name):
            agent.name = clean(name)
        if interface not in agent.interfaces:
            agent.interfaces.append(interface)
        if state_interface:
            agent.state_interface = state_interface
        for device in devices:
            self._bind_device(device, agent, now, out)
        return agent

    def _remove_member(self, agent: AgentRecord, queue: QueueRecord, now: float, out: Out) -> None:
        agent.memberships.pop(queue.name, None)
        agent.member_wrapup.pop(queue.name, None)
        queue.remove_member(agent.id)
        self._refresh_agent(agent, now, "removed", out)
        self._refresh_queue(queue, "member_removed", out)

    def _update_member(
        self, agent: AgentRecord, queue: QueueRecord, msg: Message, now: float, out: Out, *, kind: str
    ) -> None:
        """Apply one queue-member message (event or ``QueueMember`` list item) to agent and queue."""
        if kind == "removed":
            self._remove_member(agent, queue, now, out)
            return
        old = agent.memberships.get(queue.name)
        paused = msg.get("Paused") == "1"
        reason = msg.get("PausedReason") or None
        ringinuse = msg.get("Ringinuse")
        draft = new_draft(_MembershipDraft)
        draft.queue = queue.name
        draft.interface = msg.get("Interface") or msg.get("Location") or ""
        draft.state_interface = msg.get("StateInterface")
        draft.penalty = parse_int(msg.get("Penalty"))
        draft.paused = paused
        draft.paused_reason = reason if paused else None
        draft.ringinuse = (ringinuse == "1") if ringinuse is not None else (old.ringinuse if old else None)
        draft.membership = msg.get("Membership") or (old.membership if old else "static")
        freeze(draft, "__class__", Membership)
        membership: Membership = draft
        agent.memberships[queue.name] = membership
        status = msg.get("Status")
        device_state = _DEVICE_STATES.get(status, agent.device_state) if status else agent.device_state
        device_changed = device_state != agent.device_state
        agent.device_state = device_state
        wrapup = msg.get("Wrapuptime")
        if wrapup is not None:
            agent.member_wrapup[queue.name] = float(parse_int(wrapup))
        if old is None:
            change = "added"
        elif old.paused != paused:
            change = "paused" if paused else "unpaused"
        elif old.penalty != membership.penalty:
            change = "penalty"
        elif old.ringinuse != membership.ringinuse:
            change = "ringinuse"
        elif old == membership and device_changed:
            change = "device"
        else:
            change = "member"
        self._refresh_agent(agent, now, change, out)
        if queue.add_member(agent.id):
            self._refresh_queue(queue, "member_added", out)
