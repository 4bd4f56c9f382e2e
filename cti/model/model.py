"""The live call / agent / queue model, fed AMI events; sans-IO (no sockets, no clock).

``CallModel.apply(message, now)`` takes one AMI event and the time it was read, updates the model
and returns what changed as typed events (``cti.model.changes``). ``resync`` rebuilds it from the
``CoreShowChannels`` and ``QueueStatus`` lists after a reconnect.

Rules:

Rule 1 (identity). A call is every channel sharing an Asterisk ``Linkedid``; the Linkedid is the
        call id. Each channel is a leg, indexed by ``Uniqueid``. The first leg (Uniqueid ==
        Linkedid) is the customer's: its CallerID is the call's caller (``NewCallerid`` updates
        it; ``<unknown>`` means none). A Local channel's two halves (``;1``/``;2``, the pair
        ``LocalBridge`` reports) are paired by name; the first leg and its other half are the
        customer side.
Rule 2 (direction). A call is ``outbound`` when its first leg was originated towards a number:
        a Local channel named after one (``Local/+14155550142@customers``) or an originate
        ``DialBegin`` (no ``Channel``) whose dial string is one. That number is ``dialed`` and the
        call's ``remote_num``: the CallerID is then our own. A first leg on an agent's device makes
        it ``internal``; anything else is ``inbound`` and ``dialed`` is the first extension its
        first leg runs (the DID), ignoring the Local channel's own ``exten@context``.
Rule 3 (agents). A device is a channel name without its per-call suffix or a member interface
        without Local options (see ``cti.model.devices``). Agents own devices: declared with
        ``AgentConfig``, or learnt from queue member events (``Interface`` and ``StateInterface``).
        An unknown member becomes an agent with the device's Local exten (``agent1``) or resource
        (``1001``) as id. A device learnt late binds the live legs already on it: a direct dial
        that rang ``Local/agent1@agents`` before any queue event named agent1 gets its agent then.
Rule 4 (call states).
        ROUTING   a new inbound call; the call back in the dialplan with nobody (after an IVR,
                  after leaving a queue unanswered, after a ring nobody answered outside a
                  queue, after the agent hung up while the customer stays).
        DIALING   outbound, from the originate DialBegin until the customer answers (-> ROUTING).
        IVR       AGI or AsyncAGI runs on the customer side (Newexten AGI, AGIExecStart,
                  AsyncAGIStart) until another application runs there, AsyncAGIEnd, or the call
                  queues or dials.
        QUEUED    QueueCallerJoin, until answered, left or ended; a failed ring returns here.
        RINGING   AgentCalled, or a DialBegin placed by the customer side (to an agent or not).
        CONNECTED AgentConnect for queue calls, DialEnd ANSWER for plain dials.
        HELD      Hold, or MusicOnHoldStart, on a leg of a CONNECTED call; Unhold, or the
                  MusicOnHoldStop of that same leg, give CONNECTED back.
        ENDED     the call's last leg hung up, or ``resync`` did not find it.
Rule 5 (queue answer). For a call in a queue, DialEnd ANSWER only notes the answering leg;
        AgentConnect (after QueueCallerLeave, a few ms later) connects the call, with Asterisk's
        HoldTime as ``wait_time``. A QueueCallerLeave with no answering leg and no abandon puts
        the call back to ROUTING.
Rule 6 (dials from the agent side). A dial placed by a leg that is not the customer's (an agent
        consulting a colleague) rings that agent but does not move the call.
Rule 7 (transfers). BlindTransfer and AttendedTransfer record a transfer. Without one (AMI
        Redirect, a dialplan transfer) a transfer is inferred when a call that was connected to
        agent A rings or queues for another destination from the customer side: the customer
        runs dialplan, so it has left A's bridge. A transfer stays open until the call is
        connected again; rings in between complete its target.
Rule 8 (agent status). ON_CALL if one of its legs is connected, RINGING if one rings, WRAP_UP
        until the wrap-up deadline after a queue call, LOGGED_OUT if it is in no queue or its
        device is unavailable/invalid, PAUSED if paused in at least one of its queues (Asterisk
        pauses per queue; a supervisor wants to see any pause, ``paused_queues`` says where),
        else READY.
Rule 9 (hangup). The call's cause is its first leg's; when that is 0 (Unknown) a non-zero cause
        of its Local other half wins (busy, congestion show on ``;2``). ``ended_by`` is the side
        (customer / agent) of the first hangup request on the conversation's legs.
Rule 10 (cost). Messages are dispatched on their name before any header is read; events no
        handler wants (VarSet, Newexten without AGI, DeviceStateChange, Cdr ...) cost a dict
        lookup. Nothing is reported for a message that changed nothing reported.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace

from cti.ami.message import Message, MessageKind
from cti.model.changes import AgentChanged, CallChanged, ModelChange, QueueChanged
from cti.model.config import AgentConfig, QueueConfig
from cti.model.devices import (
    SPECIAL_EXTENS,
    agent_id_for_device,
    clean,
    device_of_channel,
    device_of_interface,
    dialed_number,
    is_number,
    local_parts,
    local_peer_name,
)
from cti.model.records import AgentRecord, CallRecord, LegRecord, QueueRecord
from cti.model.resync import resync as _resync
from cti.model.snapshots import Agent, Call, CallState, IvrVisit, Membership, Queue, Transfer

Out = list[ModelChange]
Handler = Callable[[Message, float, Out], None]

_AGI_APPS = frozenset({"AGI", "EAGI", "DeadAGI"})
_UNIQUEID_LINE = re.compile(r"\nUniqueid: ([^\r\n]*)")
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
_CONNECTED = (CallState.CONNECTED, CallState.HELD)
_MOVABLE = (CallState.CONNECTED, CallState.HELD, CallState.ROUTING)
_MAX_LEGS = 40
_DEAD_UIDS = 4096


def _int(value: str | None, default: int = 0) -> int:
    try:
        return int(value) if value else default
    except ValueError:
        return default


class CallModel:
    """Calls, agents and queues of one Asterisk, kept up to date from its AMI events."""

    def __init__(
        self,
        agents: Iterable[AgentConfig] = (),
        queues: Iterable[QueueConfig] = (),
        *,
        history: int = 1000,
    ) -> None:
        self._calls: dict[str, CallRecord] = {}
        self._legs: dict[str, LegRecord] = {}
        self._local_halves: dict[str, str] = {}
        self._dead: OrderedDict[str, None] = OrderedDict()
        self._ivr_legs: dict[str, CallRecord] = {}
        self._agents: dict[str, AgentRecord] = {}
        self._device_agent: dict[str, str] = {}
        self._queues: dict[str, QueueRecord] = {}
        self._queue_wrapup = {q.name: q.wrapup for q in queues}
        self._ended: OrderedDict[str, Call] = OrderedDict()
        self._history = history
        for config in agents:
            self.add_agent(config)
        self._handlers: dict[str, Handler] = {
            "Newchannel": self._on_newchannel,
            "Newstate": self._on_newstate,
            "NewCallerid": self._on_newcallerid,
            "Rename": self._on_rename,
            "Hangup": self._on_hangup,
            "HangupRequest": self._on_hangup_request,
            "SoftHangupRequest": self._on_hangup_request,
            "DialBegin": self._on_dial_begin,
            "DialEnd": self._on_dial_end,
            "BridgeEnter": self._on_bridge_enter,
            "BridgeLeave": self._on_bridge_leave,
            "Newexten": self._on_newexten,
            "AGIExecStart": self._on_agi_exec,
            "AsyncAGIStart": self._on_async_agi_start,
            "AsyncAGIEnd": self._on_async_agi_end,
            "QueueCallerJoin": self._on_queue_join,
            "QueueCallerLeave": self._on_queue_leave,
            "QueueCallerAbandon": self._on_queue_abandon,
            "AgentCalled": self._on_agent_called,
            "AgentConnect": self._on_agent_connect,
            "AgentComplete": self._on_agent_complete,
            "AgentRingNoAnswer": self._on_agent_ring_no_answer,
            "AgentDump": self._on_agent_ring_no_answer,
            "Hold": self._on_hold,
            "Unhold": self._on_unhold,
            "MusicOnHoldStart": self._on_moh_start,
            "MusicOnHoldStop": self._on_moh_stop,
            "BlindTransfer": self._on_blind_transfer,
            "AttendedTransfer": self._on_attended_transfer,
            "OriginateResponse": self._on_originate_response,
            "QueueMemberAdded": self._member_handler("added"),
            "QueueMemberRemoved": self._member_handler("removed"),
            "QueueMemberPause": self._member_handler("pause"),
            "QueueMemberPaused": self._member_handler("pause"),
            "QueueMemberPenalty": self._member_handler("penalty"),
            "QueueMemberRinginuse": self._member_handler("ringinuse"),
            "QueueMemberStatus": self._member_handler("member"),
            "QueueMember": self._member_handler("member"),
            "QueueParams": self._on_queue_params,
        }

    # --- public surface -----------------------------------------------------------------------

    def apply(self, msg: Message, now: float) -> list[ModelChange]:
        """Take one AMI event read at ``now``; return the changes it caused, in order."""
        handler = self._handlers.get(msg.name)
        if handler is None or msg.kind is not MessageKind.EVENT:
            return []
        out: Out = []
        handler(msg, now, out)
        return out

    def resync(
        self, channels: Sequence[Message], queue_status: Sequence[Message], now: float
    ) -> list[ModelChange]:
        """Reconcile with the PBX after a reconnect (see ``cti.model.resync``)."""
        return _resync(self, channels, queue_status, now)

    def tick(self, now: float) -> list[ModelChange]:
        """Let time pass: agents whose wrap-up is over become ready. Call it every second or so."""
        out: Out = []
        for agent in self._agents.values():
            if agent.wrapup_until is not None and now >= agent.wrapup_until:
                self._refresh_agent(agent, now, "status", out)
        return out

    def add_agent(self, config: AgentConfig, now: float = 0.0) -> list[ModelChange]:
        """Declare an agent and its devices (the service configuration's mapping)."""
        out: Out = []
        agent = self._agents.get(config.id)
        if agent is None:
            agent = self._agents[config.id] = AgentRecord(config.id, config.name, now)
        elif config.name:
            agent.name = config.name
        agent.config_wrapup = config.wrapup
        for interface in config.interfaces:
            if interface not in agent.interfaces:
                agent.interfaces.append(interface)
            self._bind_device(device_of_interface(interface), agent, now, out)
        self._refresh_agent(agent, now, "new" if agent.snap is None else "config", out)
        return out

    def get_call(self, call_id: str) -> Call | None:
        """A live call, or one of the recently ended ones."""
        record = self._calls.get(call_id)
        if record is not None:
            return self._snapshot(record)
        return self._ended.get(call_id)

    def live_calls(self) -> list[Call]:
        return [self._snapshot(record) for record in self._calls.values()]

    def ended_calls(self) -> list[Call]:
        """The last ``history`` ended calls, oldest first."""
        return list(self._ended.values())

    def agent(self, agent_id: str) -> Agent | None:
        record = self._agents.get(agent_id)
        return record.snapshot() if record is not None else None

    def agents(self) -> list[Agent]:
        return [record.snapshot() for record in self._agents.values()]

    def agent_for_device(self, device_or_channel: str) -> str | None:
        """The agent id owning a channel, a device or an interface, if any."""
        device = device_of_interface(device_or_channel)
        return self._device_agent.get(device) or self._device_agent.get(device_of_channel(device))

    def queue(self, name: str) -> Queue | None:
        record = self._queues.get(name)
        return record.snapshot() if record is not None else None

    def queues(self) -> list[Queue]:
        return [record.snapshot() for record in self._queues.values()]

    # --- snapshots and reporting -------------------------------------------------------------

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

    # --- legs ---------------------------------------------------------------------------------

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

    def _harvest(self, call: CallRecord, leg: LegRecord, msg: Message) -> bool:
        """Channel variables of the customer side; the first leg's values win."""
        values = msg.get_all("ChanVariable")
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

    # --- channel events -----------------------------------------------------------------------

    def _on_newchannel(self, msg: Message, now: float, out: Out) -> None:
        uid = msg.get("Uniqueid")
        if not uid or uid in self._legs:
            return
        linkedid = msg.get("Linkedid") or uid
        leg = self._new_leg(uid, linkedid, msg.get("Channel") or "", msg, now=now, out=out)
        call = leg.call
        if call.is_customer(leg) and self._harvest(call, leg, msg):
            self._emit(call, "variables", out)

    def _on_newstate(self, msg: Message, now: float, out: Out) -> None:
        leg = self._leg(msg, now, out)
        if leg is None:
            return
        state = msg.get("ChannelStateDesc") or ""
        if state != leg.state:
            leg.state = state
            leg.answered = leg.answered or state == "Up"
            leg.snap = None
        call = leg.call
        if leg is not call.first:
            return
        self._note_dialed(call, leg, msg.get("Context"), msg.get("Exten"))
        changed = self._harvest(call, leg, msg)
        if state == "Up" and call.state is CallState.DIALING:
            self._customer_answered(call, now, out)
        elif changed:
            self._emit(call, "variables", out)

    def _on_newcallerid(self, msg: Message, now: float, out: Out) -> None:
        leg = self._leg(msg, now, out)
        if leg is None:
            return
        self._update_caller(leg, msg)
        call = leg.call
        if not call.is_customer(leg):
            return
        changed = self._harvest(call, leg, msg)
        if leg is call.first:
            self._note_dialed(call, leg, msg.get("Context"), msg.get("Exten"))
            if leg.num != call.num or leg.name != call.name:
                call.num = leg.num
                call.name = leg.name
                self._emit(call, "caller", out)
                return
        if changed:
            self._emit(call, "variables", out)

    def _on_rename(self, msg: Message, now: float, out: Out) -> None:
        leg = self._legs.get(msg.get("Uniqueid") or "")
        new_name = msg.get("Newname")
        if leg is not None and new_name:
            leg.channel = new_name
            leg.device = device_of_channel(new_name)
            leg.snap = None

    def _on_bridge_enter(self, msg: Message, now: float, out: Out) -> None:
        leg = self._leg(msg, now, out)
        if leg is not None:
            leg.bridge = msg.get("BridgeUniqueid")
            leg.snap = None

    def _on_bridge_leave(self, msg: Message, now: float, out: Out) -> None:
        leg = self._legs.get(msg.get("Uniqueid") or "")
        if leg is not None:
            leg.bridge = None
            leg.snap = None

    def _side(self, call: CallRecord, leg: LegRecord) -> str | None:
        if call.is_customer(leg):
            return "customer"
        agent_leg = call.agent_leg
        if (
            agent_leg is not None
            and call.state in _CONNECTED
            and (leg is agent_leg or leg.uid == agent_leg.peer)
        ):
            return "agent"
        return None

    def _on_hangup_request(self, msg: Message, now: float, out: Out) -> None:
        leg = self._leg(msg, now, out, known_call=True)
        if leg is None:
            return
        call = leg.call
        if call.hangup_side is None:
            call.hangup_side = self._side(call, leg)

    def _on_hangup(self, msg: Message, now: float, out: Out) -> None:
        leg = self._leg(msg, now, out, known_call=True)
        if leg is None:
            return
        uid = leg.uid
        del self._legs[uid]
        self._dead[uid] = None
        if len(self._dead) > _DEAD_UIDS:
            self._dead.popitem(last=False)
        if self._local_halves.get(leg.channel) == uid:
            del self._local_halves[leg.channel]
        call = leg.call
        if call.hangup_side is None:
            call.hangup_side = self._side(call, leg)
        leg.ended_at = now
        leg.cause = _int(msg.get("Cause"), 0)
        leg.cause_text = msg.get("Cause-txt")
        leg.state = msg.get("ChannelStateDesc") or leg.state
        leg.snap = None
        call.live_legs -= 1
        if uid in call.ringing:
            self._ring_ended(call, leg, now, out)
        self._release_agent_leg(leg, now, out)
        if leg is call.agent_leg:
            call.agent_leg = None
            if call.state in _CONNECTED and call.hangup_side != "customer" and call.customer_alive():
                call.state = CallState.ROUTING
                call.held = False
                self._emit(call, "agent_left", out)
        if uid == call.ivr_leg:
            self._leave_ivr(call, now)
        if call.live_legs <= 0:
            self._end_call(call, now, "hangup", out)
        elif len(call.legs) > _MAX_LEGS:
            self._forget_old_legs(call)

    def _forget_old_legs(self, call: CallRecord) -> None:
        """Keep a long call's record bounded: drop the oldest ended legs outside the customer side."""
        for uid, leg in list(call.legs.items()):
            if len(call.legs) <= _MAX_LEGS:
                break
            if leg.ended_at is not None and not call.is_customer(leg):
                del call.legs[uid]

    def _release_agent_leg(self, leg: LegRecord, now: float, out: Out) -> None:
        if leg.agent is None:
            return
        agent = self._agents.get(leg.agent)
        if agent is not None and agent.legs.pop(leg.uid, None) is not None:
            self._refresh_agent(agent, now, "status", out)

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
        self._ended[call.id] = snap
        self._ended.move_to_end(call.id)
        while len(self._ended) > self._history:
            self._ended.popitem(last=False)
        out.append(CallChanged(snap, "ended"))

    def _pick_cause(self, call: CallRecord) -> None:
        """Rule 9: the first informative cause on the customer side."""
        chosen: LegRecord | None = None
        for leg in call.customer_legs():
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

    # --- dials --------------------------------------------------------------------------------

    def _on_dial_begin(self, msg: Message, now: float, out: Out) -> None:
        dest = self._leg(msg, now, out, "Dest")
        if dest is None:
            return
        call = dest.call
        if not msg.get("Uniqueid"):
            # An Originate: Asterisk dials the call's first channel itself (no calling channel).
            number = dialed_number(msg.get("DialString"))
            if dest is call.first and number is not None and call.direction != "internal":
                call.direction = "outbound"
                call.dialed = call.dialed if call.dialed is not None else number
                if call.state is CallState.ROUTING and not dest.answered:
                    call.state = CallState.DIALING
                    self._emit(call, "dialing", out)
            return
        src = self._leg(msg, now, out)
        if src is None or src.call is not call:
            return
        if call.is_customer(src):
            if src is call.first:
                self._note_dialed(call, src, msg.get("Context"), msg.get("Exten"))
                self._harvest(call, src, msg)
            self._ring(call, dest, dest.agent, exten=msg.get("Exten"), now=now, out=out)
        elif dest.agent is not None:
            self._agent_leg_state(dest, call, connected=False, now=now, out=out)

    def _on_dial_end(self, msg: Message, now: float, out: Out) -> None:
        dest = self._leg(msg, now, out, "Dest")
        if dest is None:
            return
        call = dest.call
        status = msg.get("DialStatus") or ""
        if not msg.get("Uniqueid"):
            if dest is call.first and call.direction == "outbound":
                call.dial_status = status
                if status == "ANSWER" and call.state is CallState.DIALING:
                    self._customer_answered(call, now, out)
            return
        src = self._leg(msg, now, out)
        if src is None or src.call is not call:
            return
        if not call.is_customer(src):
            if dest.agent is not None:
                if status == "ANSWER":
                    self._agent_leg_state(dest, call, connected=True, now=now, out=out)
                else:
                    self._release_agent_leg(dest, now, out)
            return
        call.dial_status = status
        if status == "ANSWER":
            if call.in_queue:
                call.answer_leg = dest
            else:
                self._connect(call, dest, dest.agent, now, out)
        else:
            self._ring_ended(call, dest, now, out)

    def _customer_answered(self, call: CallRecord, now: float, out: Out) -> None:
        call.state = CallState.ROUTING
        call.customer_answered_at = now
        self._emit(call, "customer_answered", out)

    def _agent_leg_state(
        self, leg: LegRecord, call: CallRecord, *, connected: bool, now: float, out: Out
    ) -> None:
        agent = self._agents.get(leg.agent) if leg.agent is not None else None
        if agent is None:
            return
        agent.legs[leg.uid] = (call.id, connected)
        self._refresh_agent(agent, now, "status", out)

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
        if call.agent_leg is dest and call.state in _CONNECTED:
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
        if call.last_agent is None or call.state not in _MOVABLE:
            return
        if to_agent is not None and to_agent == call.last_agent:
            return
        call.transfers.append(
            Transfer("blind", call.last_agent, to_agent, to_queue, to_exten, now, "inferred")
        )
        call.transfer_open = True

    # --- IVR ----------------------------------------------------------------------------------

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
        if not call.is_customer(leg) or call.state in _CONNECTED or call.state is CallState.ENDED:
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

    def _on_newexten(self, msg: Message, now: float, out: Out) -> None:
        # Newexten is ~10% of the traffic: look at the raw text before parsing any header. Only
        # an AGI application, or the next application of a leg that is in an IVR, matters.
        text = msg.text
        if "AGI" not in text:
            if not self._ivr_legs:
                return
            found = _UNIQUEID_LINE.search(text)
            if found is None or found.group(1) not in self._ivr_legs:
                return
        application = msg.get("Application") or ""
        uid = msg.get("Uniqueid") or ""
        if application in _AGI_APPS:
            leg = self._legs.get(uid)
            if leg is not None:
                script = msg.get("AppData")
                kind = "AsyncAGI" if script and script.startswith("agi:async") else "AGI"
                self._enter_ivr(leg.call, leg, msg, now, out, application=kind, script=script)
            return
        call = self._ivr_legs.get(uid)
        if call is not None and self._leave_ivr(call, now):
            self._emit(call, "ivr_left", out)

    def _on_agi_exec(self, msg: Message, now: float, out: Out) -> None:
        leg = self._leg(msg, now, out)
        if leg is not None and leg.call.state is not CallState.IVR:
            self._enter_ivr(leg.call, leg, msg, now, out, application="AGI")

    def _on_async_agi_start(self, msg: Message, now: float, out: Out) -> None:
        leg = self._leg(msg, now, out)
        if leg is not None:
            self._enter_ivr(leg.call, leg, msg, now, out, application="AsyncAGI", script="agi:async")

    def _on_async_agi_end(self, msg: Message, now: float, out: Out) -> None:
        call = self._ivr_legs.get(msg.get("Uniqueid") or "")
        if call is not None and self._leave_ivr(call, now):
            self._emit(call, "ivr_left", out)

    # --- queues -------------------------------------------------------------------------------

    def _queue(self, name: str, out: Out) -> QueueRecord:
        queue = self._queues.get(name)
        if queue is None:
            queue = self._queues[name] = QueueRecord(name, self._queue_wrapup.get(name, 0.0))
            self._refresh_queue(queue, "new", out)
        return queue

    def _on_queue_join(self, msg: Message, now: float, out: Out) -> None:
        leg = self._leg(msg, now, out)
        name = msg.get("Queue")
        if leg is None or not name:
            return
        call = leg.call
        if leg is call.first:
            self._note_dialed(call, leg, msg.get("Context"), msg.get("Exten"))
            self._harvest(call, leg, msg)
        self._leave_ivr(call, now)
        self._note_transfer(call, None, name, None, now)
        queue = self._queue(name, out)
        call.queue = name
        call.in_queue = True
        call.answer_leg = None
        call.state = CallState.QUEUED
        call.queued_at = now
        if call.id in queue.waiting:
            queue.waiting.remove(call.id)
        position = _int(msg.get("Position"), len(queue.waiting) + 1)
        queue.waiting.insert(max(0, min(position - 1, len(queue.waiting))), call.id)
        self._emit(call, "queued", out)
        self._refresh_queue(queue, "joined", out)

    def _on_queue_leave(self, msg: Message, now: float, out: Out) -> None:
        leg = self._leg(msg, now, out)
        if leg is None:
            return
        call = leg.call
        call.in_queue = False
        queue = self._queues.get(msg.get("Queue") or "")
        if queue is not None and call.id in queue.waiting:
            queue.waiting.remove(call.id)
            self._refresh_queue(queue, "left", out)
        if (
            call.answer_leg is None
            and not call.abandoned
            and call.state in (CallState.QUEUED, CallState.RINGING)
        ):
            call.state = CallState.ROUTING
            self._emit(call, "left_queue", out)

    def _on_queue_abandon(self, msg: Message, now: float, out: Out) -> None:
        leg = self._leg(msg, now, out)
        if leg is None:
            return
        call = leg.call
        call.abandoned = True
        call.wait_time = float(_int(msg.get("HoldTime")))
        self._emit(call, "abandoned", out)
        queue = self._queues.get(msg.get("Queue") or "")
        if queue is not None:
            queue.abandoned += 1
            self._refresh_queue(queue, "abandoned", out)

    def _on_agent_called(self, msg: Message, now: float, out: Out) -> None:
        src = self._leg(msg, now, out)
        dest = self._leg(msg, now, out, "Dest")
        interface = msg.get("Interface")
        if src is None or dest is None or dest.call is not src.call or not interface:
            return
        agent = self._agent_for_member(interface, msg.get("MemberName"), None, now, out)
        self._bind_device(dest.device, agent, now, out)
        if dest.agent is None:
            dest.agent = agent.id
            dest.snap = None
        self._ring(src.call, dest, dest.agent, queue=msg.get("Queue"), now=now, out=out)

    def _on_agent_connect(self, msg: Message, now: float, out: Out) -> None:
        self._leg(msg, now, out)
        dest = self._leg(msg, now, out, "Dest")
        if dest is None:
            return
        call = dest.call
        interface = msg.get("Interface")
        if dest.agent is None and interface:
            agent = self._agent_for_member(interface, msg.get("MemberName"), None, now, out)
            dest.agent = agent.id
            dest.snap = None
        if msg.get("Queue"):
            call.queue = msg.get("Queue")
        self._connect(call, dest, dest.agent, now, out, wait=float(_int(msg.get("HoldTime"))))
        queue = self._queues.get(call.queue) if call.queue is not None else None
        if queue is not None:
            queue.answered += 1
            self._refresh_queue(queue, "answered", out)

    def _on_agent_complete(self, msg: Message, now: float, out: Out) -> None:
        interface = msg.get("Interface")
        agent_id = self._device_agent.get(device_of_interface(interface)) if interface else None
        queue = msg.get("Queue") or ""
        talk = float(_int(msg.get("TalkTime")))
        leg = self._legs.get(msg.get("Uniqueid") or "") or self._legs.get(msg.get("DestUniqueid") or "")
        call = leg.call if leg is not None else None
        if call is None and not msg.get("Linkedid") and agent_id is not None:
            # Seen in load_50: an AgentComplete with no channel fields at all, built after the
            # caller's channel was gone. It belongs to the agent's latest call from that queue.
            call = next(
                (c for c in reversed(self._calls.values()) if c.last_agent == agent_id and c.queue == queue),
                None,
            )
        if call is not None:
            call.talk_time = talk
            if call.wait_time is None:
                call.wait_time = float(_int(msg.get("HoldTime")))
            if call.hangup_side is None:
                call.hangup_side = {"caller": "customer", "agent": "agent"}.get(msg.get("Reason") or "")
        else:
            # AgentComplete can trail the call's last Hangup: complete the ended snapshot quietly
            # (its "ended" was reported already, and nothing is reported after that).
            self._complete_ended(msg.get("Linkedid"), agent_id, queue, talk)
        agent = self._agents.get(agent_id) if agent_id is not None else None
        if agent is None:
            return
        wrapup = agent.member_wrapup.get(queue) or self._queue_wrapup.get(queue) or agent.config_wrapup
        if wrapup > 0:
            agent.wrapup_until = now + wrapup
            self._refresh_agent(agent, now, "status", out)

    def _complete_ended(self, linkedid: str | None, agent_id: str | None, queue: str, talk: float) -> None:
        ended = self._ended.get(linkedid) if linkedid else None
        if ended is None and not linkedid and agent_id is not None:
            for _, snap in zip(range(50), reversed(self._ended.values()), strict=False):
                if snap.agent == agent_id and snap.queue == queue:
                    ended = snap
                    break
        if ended is not None and ended.talk_time is None:
            self._ended[ended.id] = replace(ended, talk_time=talk)

    def _on_agent_ring_no_answer(self, msg: Message, now: float, out: Out) -> None:
        dest = self._leg(msg, now, out, "Dest")
        if dest is not None:
            self._ring_ended(dest.call, dest, now, out)

    # --- hold ---------------------------------------------------------------------------------

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

    def _on_hold(self, msg: Message, now: float, out: Out) -> None:
        leg = self._leg(msg, now, out)
        if leg is not None and leg.call.state is CallState.CONNECTED:
            self._hold(leg.call, None, out)

    def _on_unhold(self, msg: Message, now: float, out: Out) -> None:
        leg = self._legs.get(msg.get("Uniqueid") or "")
        if leg is not None and leg.call.state is CallState.HELD:
            self._unhold(leg.call, out)

    def _on_moh_start(self, msg: Message, now: float, out: Out) -> None:
        """Music on a leg of a connected call is hold, whether or not a ``Hold`` event says so.

        ``MusicOnHold``/``StartMusicOnHold`` in the dialplan, a ``Hold`` key handled by features
        or a phone that plays its own music raise no ``Hold`` event (see the hold_moh capture),
        yet the customer is waiting on music with the agent away: what a supervisor and the
        hold-time counters mean by "on hold". Music before the call is connected (the queue's,
        a MusicOnHold() prompt) is waiting, not hold, so it is ignored.
        """
        leg = self._leg(msg, now, out)
        if leg is not None and leg.call.state is CallState.CONNECTED:
            self._hold(leg.call, leg.uid, out)

    def _on_moh_stop(self, msg: Message, now: float, out: Out) -> None:
        leg = self._legs.get(msg.get("Uniqueid") or "")
        if leg is None:
            return
        call = leg.call
        if call.state is CallState.HELD and call.hold_leg == leg.uid:
            self._unhold(call, out)

    # --- transfers ----------------------------------------------------------------------------

    def _on_blind_transfer(self, msg: Message, now: float, out: Out) -> None:
        if (msg.get("Result") or "").lower() != "success":
            return
        transferee = self._legs.get(msg.get("TransfereeUniqueid") or "")
        transferer = self._legs.get(msg.get("TransfererUniqueid") or "")
        leg = transferee or transferer
        if leg is None:
            return
        call = leg.call
        from_agent = transferer.agent if transferer is not None and transferer.agent else call.last_agent
        call.transfers.append(
            Transfer("blind", from_agent, None, None, msg.get("Extension"), now, "BlindTransfer")
        )
        call.transfer_open = True
        if call.state is CallState.HELD:
            call.state = CallState.CONNECTED
            call.held = False
        self._emit(call, "transferred", out)

    def _on_attended_transfer(self, msg: Message, now: float, out: Out) -> None:
        if (msg.get("Result") or "").lower() != "success":
            return
        transferee = self._legs.get(msg.get("TransfereeUniqueid") or "")
        if transferee is None:
            return
        call = transferee.call
        origin = self._legs.get(msg.get("OrigTransfererUniqueid") or "")
        target = self._legs.get(msg.get("TransferTargetUniqueid") or "")
        from_agent = origin.agent if origin is not None and origin.agent else call.last_agent
        to_agent = target.agent if target is not None else None
        call.transfers.append(Transfer("attended", from_agent, to_agent, None, None, now, "AttendedTransfer"))
        call.transfer_open = False
        if target is not None and target.call is call:
            # The transferer's leg hanging up next is not "the agent left": the target stays.
            call.agent_leg = target
            call.agent_interface = call.last_agent_interface = target.device
        elif call.agent_leg is not None and call.agent_leg is origin:
            call.agent_leg = None
        if to_agent is not None:
            call.agent = to_agent
            call.last_agent = to_agent
            call.agents.append(to_agent)
        if call.state is CallState.HELD:
            call.state = CallState.CONNECTED
            call.held = False
        self._emit(call, "transferred", out)

    def _on_originate_response(self, msg: Message, now: float, out: Out) -> None:
        action_id = msg.get("ActionID")
        if not action_id:
            return
        leg = self._legs.get(msg.get("Uniqueid") or "")
        if leg is not None:
            call = leg.call
            if call.originate_id is None:
                call.originate_id = action_id
                self._emit(call, "originate", out)
            return
        # A failed Originate names the dial string, not the channel: ``Local/+1415...@customers``.
        prefix = (msg.get("Channel") or "") + "-"
        if prefix == "-":
            return
        for call in reversed(self._calls.values()):
            if call.first is not None and call.first.channel.startswith(prefix) and call.originate_id is None:
                call.originate_id = action_id
                self._emit(call, "originate", out)
                return
        for call_id, snap in reversed(self._ended.items()):
            if snap.originate_id is None and snap.legs and snap.legs[0].channel.startswith(prefix):
                self._ended[call_id] = replace(snap, originate_id=action_id)
                return

    # --- agents and queue members -------------------------------------------------------------

    def _bind_device(self, device: str, agent: AgentRecord, now: float, out: Out) -> None:
        """Rule 3: a device now known as an agent's; the live legs on it become that agent's."""
        owner = self._device_agent.get(device)
        if owner is not None:
            return
        self._device_agent[device] = agent.id
        for leg in self._legs.values():
            if leg.device != device or leg.agent is not None:
                continue
            leg.agent = agent.id
            leg.snap = None
            call = leg.call
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

    def _member_handler(self, kind: str) -> Handler:
        def handler(msg: Message, now: float, out: Out) -> None:
            self._on_member(msg, now, out, kind)

        return handler

    def _on_member(self, msg: Message, now: float, out: Out, kind: str) -> None:
        queue_name = msg.get("Queue")
        interface = msg.get("Interface") or msg.get("Location")
        if not queue_name or not interface:
            return
        agent = self._agent_for_member(
            interface, msg.get("MemberName") or msg.get("Name"), msg.get("StateInterface"), now, out
        )
        queue = self._queue(queue_name, out)
        self._update_member(agent, queue, msg, now, out, kind=kind)

    def _remove_member(self, agent: AgentRecord, queue: QueueRecord, now: float, out: Out) -> None:
        agent.memberships.pop(queue.name, None)
        agent.member_wrapup.pop(queue.name, None)
        queue.members.pop(agent.id, None)
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
        membership = Membership(
            queue=queue.name,
            interface=msg.get("Interface") or msg.get("Location") or "",
            state_interface=msg.get("StateInterface"),
            penalty=_int(msg.get("Penalty")),
            paused=paused,
            paused_reason=reason if paused else None,
            ringinuse=(ringinuse == "1") if ringinuse is not None else (old.ringinuse if old else None),
            membership=msg.get("Membership") or (old.membership if old else "static"),
        )
        agent.memberships[queue.name] = membership
        status = msg.get("Status")
        device_state = _DEVICE_STATES.get(status, agent.device_state) if status else agent.device_state
        device_changed = device_state != agent.device_state
        agent.device_state = device_state
        wrapup = msg.get("Wrapuptime")
        if wrapup is not None:
            agent.member_wrapup[queue.name] = float(_int(wrapup))
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
        if agent.id not in queue.members:
            queue.members[agent.id] = None
            self._refresh_queue(queue, "member_added", out)

    def _on_queue_params(self, msg: Message, now: float, out: Out) -> None:
        name = msg.get("Queue")
        if not name:
            return
        queue = self._queue(name, out)
        queue.strategy = msg.get("Strategy") or queue.strategy
        queue.answered = _int(msg.get("Completed"), queue.answered)
        queue.abandoned = _int(msg.get("Abandoned"), queue.abandoned)
        self._refresh_queue(queue, "params", out)
