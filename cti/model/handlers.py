"""AMI events -> model transitions: one handler per event name, reading only the fields it needs.

``EventHandlers.dispatch_table`` maps event names to handlers; ``CallModel.apply`` looks the name
up before any header is parsed (Rule 10 of ``cti.model.model``).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import replace

from cti.ami.message import Message
from cti.model.devices import device_of_channel, device_of_interface, dialed_number, is_number
from cti.model.records import CallRecord
from cti.model.snapshots import (
    MAX_IVR_DIGITS,
    MAX_IVR_STEP_CHARS,
    MAX_IVR_STEPS,
    CallState,
    Transfer,
)
from cti.model.transitions import (
    CONNECTED_STATES,
    DEAD_UIDS_KEPT,
    MAX_LEGS_PER_CALL,
    ModelState,
    Out,
    parse_int,
)

Handler = Callable[[Message, float, Out], None]

_AGI_APPS = frozenset({"AGI", "EAGI", "DeadAGI"})
_IVR_STEP_COMMANDS = (
    "STREAM FILE",
    "CONTROL STREAM FILE",
    "GET DATA",
    "GET OPTION",
    "WAIT FOR DIGIT",
    "SAY ",
    "RECORD FILE",
    "EXEC ",
    "SET VARIABLE",
    "GOSUB",
    "SPEECH RECOGNIZE",
)
"""AGI commands that make the caller's journey (prompts, input, applications, results); the
rest (ANSWER, GET VARIABLE, VERBOSE, DATABASE, NOOP, CHANNEL STATUS, ...) is the script's own."""
_UNIQUEID_LINE = re.compile(r"\nUniqueid: ([^\r\n]*)")


class EventHandlers(ModelState):
    def dispatch_table(self) -> dict[str, Handler]:
        """The AMI events the model follows; every other event is ignored by name."""
        return {
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
            "DTMFEnd": self._on_dtmf_end,
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

    # --- channels ---------------------------------------------------------------------------------

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
        if state == "Up" and call.state is CallState.DIALING and not call.click_to_dial:
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
        if len(self._dead) > DEAD_UIDS_KEPT:
            self._dead.popitem(last=False)
        if self._local_halves.get(leg.channel) == uid:
            del self._local_halves[leg.channel]
        call = leg.call
        if call.hangup_side is None:
            call.hangup_side = self._side(call, leg)
        leg.ended_at = now
        leg.cause = parse_int(msg.get("Cause"), 0)
        leg.cause_text = msg.get("Cause-txt")
        leg.state = msg.get("ChannelStateDesc") or leg.state
        leg.snap = None
        call.live_legs -= 1
        if uid in call.ringing:
            self._ring_ended(call, leg, now, out)
        self._release_agent_leg(leg, now, out)
        if leg is call.agent_leg:
            call.agent_leg = None
            if call.state in CONNECTED_STATES and call.hangup_side != "customer" and call.customer_alive():
                call.state = CallState.ROUTING
                call.held = False
                self._emit(call, "agent_left", out)
        if uid == call.ivr_leg:
            self._leave_ivr(call, now)
        if call.live_legs <= 0:
            self._end_call(call, now, "hangup", out)
        elif len(call.legs) > MAX_LEGS_PER_CALL:
            self._forget_old_legs(call)

    # --- dials ------------------------------------------------------------------------------------

    def _on_dial_begin(self, msg: Message, now: float, out: Out) -> None:
        dest = self._leg(msg, now, out, "Dest")
        if dest is None:
            return
        call = dest.call
        if not msg.get("Uniqueid"):
            # An Originate: Asterisk dials the call's first channel itself (no calling channel).
            if dest is not call.first:
                return
            call.originated = True
            # The Originate's variables are set after Newchannel: the pop of the ring needs them.
            harvested = self._harvest(call, dest, msg, "Dest")
            number = dialed_number(msg.get("DialString"))
            if number is not None and call.direction != "internal":
                call.direction = "outbound"
                call.dialed = call.dialed if call.dialed is not None else number
                if call.state is CallState.ROUTING and not dest.answered:
                    call.state = CallState.DIALING
                    self._emit(call, "dialing", out)
                    return
            elif dest.agent is not None and not call.click_to_dial and call.state is CallState.ROUTING:
                self._start_click_to_dial(call, dest, now, out)
                return
            if harvested:
                self._emit(call, "variables", out)
            return
        src = self._leg(msg, now, out)
        if src is None or src.call is not call:
            return
        if call.click_to_dial and call.is_customer(src):
            if call.state is CallState.DIALING:
                # The agent's side dials the customer (a trunk): that leg is the customer's phone.
                self._stop_watching(call)
                call.customer_leg = dest
                number = dialed_number(msg.get("DialString"))
                if call.dialed is None and number is not None:
                    call.dialed = number
                    self._emit(call, "dialing", out)
            elif dest.agent is not None:
                self._agent_leg_state(dest, call, connected=False, now=now, out=out)
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
            if dest is call.first and call.click_to_dial:
                # The agent's own device: answering it is taking the call, not the customer's answer.
                if status == "ANSWER":
                    self._click_to_dial_taken(call, dest, now, out)
                else:
                    self._ring_ended(call, dest, now, out)
                return
            if dest is call.first and call.direction == "outbound":
                call.dial_status = status
                if status == "ANSWER" and call.state is CallState.DIALING:
                    self._customer_answered(call, now, out)
            return
        src = self._leg(msg, now, out)
        if src is None or src.call is not call:
            return
        if call.click_to_dial and call.is_customer(src) and dest is call.customer_leg:
            if call.state is CallState.DIALING:
                call.dial_status = status
                if status == "ANSWER":
                    self._click_to_dial_connected(call, dest, now, out)
            return
        if not call.is_customer(src) or call.click_to_dial:
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

    def _on_originate_response(self, msg: Message, now: float, out: Out) -> None:
        action_id = msg.get("ActionID")
        if not action_id:
            return
        leg = self._legs.get(msg.get("Uniqueid") or "")
        if leg is not None:
            call = leg.call
            changed = False
            if call.originate_id is None:
                call.originate_id = action_id
                changed = True
            exten = msg.get("Exten")
            if call.click_to_dial and call.dialed is None and is_number(exten):
                # Rule 2: the Originate's Exten is the number the agent's device now dials.
                call.dialed = exten
                changed = True
            if changed:
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

    # --- IVR --------------------------------------------------------------------------------------

    def _on_newexten(self, msg: Message, now: float, out: Out) -> None:
        # Newexten is ~10% of the traffic: look at the raw text before parsing any header. Only
        # an AGI application, or the next application of a leg that is in an IVR, matters.
        text = msg.text
        if "AGI" not in text:
            if not self._ivr_legs and not self._dialing_legs:
                return
            found = _UNIQUEID_LINE.search(text)
            if found is None or (
                found.group(1) not in self._ivr_legs and found.group(1) not in self._dialing_legs
            ):
                return
        application = msg.get("Application") or ""
        uid = msg.get("Uniqueid") or ""
        dialing = self._dialing_legs.get(uid)
        if dialing is not None:
            self._dialplan_far_end(dialing, msg, application, now, out)
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

    def _dialplan_far_end(
        self, call: CallRecord, msg: Message, application: str, now: float, out: Out
    ) -> None:
        """Rule 4: the agent's click-to-dial leg runs the dial context; its dialplan may be the far end.

        A dialplan that indicates ``Ringing()`` and then runs ``Answer()`` on the already-answered
        agent's leg is playing the customer's phone (the lab's ``customers`` context): that
        ``Answer`` is the customer answering. ``Busy()``/``Congestion()`` there is the customer
        busy or unreachable. An ``Answer`` with no ``Ringing`` before it is only dialplan
        housekeeping before a ``Dial``.
        """
        leg = call.first
        if leg is None:
            return
        exten = msg.get("Exten")
        if call.dialed is None and is_number(exten):
            call.dialed = exten
            self._emit(call, "dialing", out)
        if application == "Ringing":
            call.customer_leg = leg
        elif application in ("Busy", "Congestion"):
            call.customer_leg = leg
            call.dial_status = application.upper()
        elif application == "Answer" and call.customer_leg is leg:
            self._click_to_dial_connected(call, leg, now, out)

    def _on_agi_exec(self, msg: Message, now: float, out: Out) -> None:
        leg = self._leg(msg, now, out)
        if leg is None:
            return
        call = leg.call
        if call.state is not CallState.IVR:
            self._enter_ivr(call, leg, msg, now, out, application="AGI")
        visit = call.ivr
        if visit is None or call.ivr_leg != leg.uid or len(visit.steps) >= MAX_IVR_STEPS:
            return
        command = " ".join((msg.get("Command") or "").split())
        if command.upper().startswith(_IVR_STEP_COMMANDS):
            call.ivr = replace(visit, steps=(*visit.steps, command[:MAX_IVR_STEP_CHARS]))

    def _on_dtmf_end(self, msg: Message, now: float, out: Out) -> None:
        """A digit the caller keyed in while in an IVR (``Direction: Received`` on its leg)."""
        call = self._ivr_legs.get(msg.get("Uniqueid") or "")
        if call is None or call.ivr is None or msg.get("Direction") != "Received":
            return
        digit = msg.get("Digit") or ""
        if len(digit) == 1 and len(call.ivr.digits) < MAX_IVR_DIGITS:
            call.ivr = replace(call.ivr, digits=call.ivr.digits + digit)

    def _on_async_agi_start(self, msg: Message, now: float, out: Out) -> None:
        leg = self._leg(msg, now, out)
        if leg is not None:
            self._enter_ivr(leg.call, leg, msg, now, out, application="AsyncAGI", script="agi:async")

    def _on_async_agi_end(self, msg: Message, now: float, out: Out) -> None:
        call = self._ivr_legs.get(msg.get("Uniqueid") or "")
        if call is not None and self._leave_ivr(call, now):
            self._emit(call, "ivr_left", out)

    # --- queues -----------------------------------------------------------------------------------

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
        position = parse_int(msg.get("Position"), len(queue.waiting) + 1)
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
        call.wait_time = float(parse_int(msg.get("HoldTime")))
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
        self._connect(call, dest, dest.agent, now, out, wait=float(parse_int(msg.get("HoldTime"))))
        queue = self._queues.get(call.queue) if call.queue is not None else None
        if queue is not None:
            queue.answered += 1
            self._refresh_queue(queue, "answered", out)

    def _on_agent_complete(self, msg: Message, now: float, out: Out) -> None:
        interface = msg.get("Interface")
        agent_id = self._device_agent.get(device_of_interface(interface)) if interface else None
        queue = msg.get("Queue") or ""
        talk = float(parse_int(msg.get("TalkTime")))
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
                call.wait_time = float(parse_int(msg.get("HoldTime")))
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

    def _on_agent_ring_no_answer(self, msg: Message, now: float, out: Out) -> None:
        dest = self._leg(msg, now, out, "Dest")
        if dest is not None:
            self._ring_ended(dest.call, dest, now, out)

    def _on_queue_params(self, msg: Message, now: float, out: Out) -> None:
        name = msg.get("Queue")
        if not name:
            return
        queue = self._queue(name, out)
        queue.strategy = msg.get("Strategy") or queue.strategy
        queue.answered = parse_int(msg.get("Completed"), queue.answered)
        queue.abandoned = parse_int(msg.get("Abandoned"), queue.abandoned)
        self._refresh_queue(queue, "params", out)

    # --- hold and transfers -----------------------------------------------------------------------

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

    # --- queue members ----------------------------------------------------------------------------

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
