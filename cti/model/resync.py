"""Rebuilding the model from the PBX's own lists after an AMI reconnect.

Events sent while we were disconnected are lost, so after logging in again the client asks for
``CoreShowChannels`` (every live channel) and ``QueueStatus`` (queues, members, waiting callers)
and hands the list items to ``CallModel.resync``.

Rules:

Rule R1. The lists are the truth. A live call of the model with no channel in the list ended
         while we were away: it is ended with ``end_reason`` "gone after resync" and no cause.
         Legs missing from the list are ended the same way. Queues, memberships and pauses are
         replaced by the ``QueueStatus`` items; a membership not listed is removed.
R2.      Channels are grouped by Linkedid into calls; calls and legs already known keep what
         only the events could tell (timestamps, transfers, IVR visit, hold, originate id).
R3.      A call's state is read from its channels: an agent's dialed leg in the customer's
         bridge -> CONNECTED (HELD stays HELD: the list does not show hold); another leg in
         that bridge -> CONNECTED with no agent; an agent leg ringing -> RINGING; a
         ``QueueEntry`` or the ``Queue`` application -> QUEUED; an AGI application -> IVR; an
         outbound call whose first leg is not up -> DIALING; otherwise ROUTING. A click-to-dial
         the model saw start (its first leg is the agent's device): that leg not up -> RINGING
         at the agent; up and bridged with a leg of the customer's side -> CONNECTED (HELD
         stays HELD), as it stays when the agent's own leg plays the customer and was
         connected; else DIALING. One the model never saw start reads as an ``internal`` call:
         the lists do not tell an Originate from the agent's phone dialling.
R4.      Agents' calls are rebuilt from the derived call states; every snapshot that differs from
         the one before is reported (``resync`` for calls, agents and queues; ``ended`` for
         the calls that are gone).
"""

from __future__ import annotations

from collections.abc import Sequence

from cti.ami.message import Message
from cti.model.changes import CallChanged, ModelChange, QueueChanged
from cti.model.devices import clean, device_of_channel, local_peer_name
from cti.model.handlers import EventHandlers
from cti.model.records import CallRecord, LegRecord
from cti.model.snapshots import CallState, IvrVisit
from cti.model.transitions import CONNECTED_STATES

_AGI_APPLICATIONS = frozenset({"AGI", "EAGI", "DeadAGI"})
GONE_AFTER_RESYNC = "gone after resync"


def duration_seconds(value: str | None) -> float:
    """``Duration: 00:01:05`` -> 65.0 (0 when absent or malformed)."""
    if not value:
        return 0.0
    total = 0.0
    try:
        for part in value.split(":"):
            total = total * 60 + float(part)
    except ValueError:
        return 0.0
    return total


def _is_dialed_half(leg: LegRecord) -> bool:
    """The half of a Local pair the PBX dialed (``;1``); any other channel is its own leg."""
    return not leg.channel.endswith(";2")


def resync(
    model: EventHandlers, channels: Sequence[Message], queue_status: Sequence[Message], now: float
) -> list[ModelChange]:
    # The model's internals are this module's to rebuild: it is the model's other entry point.
    out: list[ModelChange] = []

    # --- queues and members (Rule R1) ---------------------------------------------------------
    listed_queues: set[str] = set()
    listed_members: set[tuple[str, str]] = set()
    entries: dict[str, tuple[str, int, float]] = {}
    for msg in queue_status:
        name = msg.name
        queue_name = msg.get("Queue")
        if not queue_name:
            continue
        if name == "QueueParams":
            listed_queues.add(queue_name)
            model._on_queue_params(msg, now, out)
        elif name == "QueueMember":
            interface = msg.get("Location") or msg.get("Interface")
            if not interface:
                continue
            listed_queues.add(queue_name)
            agent = model._agent_for_member(
                interface, msg.get("Name") or msg.get("MemberName"), msg.get("StateInterface"), now, out
            )
            model._update_member(agent, model._queue(queue_name, out), msg, now, out, kind="member")
            listed_members.add((agent.id, queue_name))
        elif name == "QueueEntry":
            uid = msg.get("Uniqueid")
            if uid:
                position = int(msg.get("Position") or 0)
                entries[uid] = (queue_name, position, float(msg.get("Wait") or 0))
    for agent in model._agents.values():
        for queue_name in list(agent.memberships):
            if (agent.id, queue_name) not in listed_members:
                model._remove_member(agent, model._queue(queue_name, out), now, out)

    # --- calls (Rules R1-R3) ------------------------------------------------------------------
    rows: dict[str, list[Message]] = {}
    for msg in channels:
        if msg.name != "CoreShowChannel":
            continue
        uid = msg.get("Uniqueid")
        if uid:
            rows.setdefault(msg.get("Linkedid") or uid, []).append(msg)

    for call_id, call in list(model._calls.items()):
        if call_id not in rows:
            model._end_call(call, now, GONE_AFTER_RESYNC, out)
    for agent in model._agents.values():
        agent.legs.clear()

    for linkedid, call_rows in rows.items():
        _resync_call(model, linkedid, call_rows, now, out, entries=entries)

    # --- queues' waiting lists, agents (Rule R4) ----------------------------------------------
    call_of_uid = {uid: leg.call.id for uid, leg in model._legs.items()}
    waiting: dict[str, list[tuple[int, str]]] = {}
    for uid, (queue_name, position, _) in entries.items():
        waiting_call = call_of_uid.get(uid)
        if waiting_call is not None:
            waiting.setdefault(queue_name, []).append((position, waiting_call))
    for queue_name, queue in list(model._queues.items()):
        if queue_name not in listed_queues:
            del model._queues[queue_name]
            out.append(QueueChanged(queue.snapshot(), "removed"))
            continue
        queue.waiting = [call for _, call in sorted(waiting.get(queue_name, []))]
        model._refresh_queue(queue, "resync", out)
    for agent in model._agents.values():
        model._refresh_agent(agent, now, "resync", out)
    return out


def _resync_call(
    model: EventHandlers,
    linkedid: str,
    call_rows: list[Message],
    now: float,
    out: list[ModelChange],
    *,
    entries: dict[str, tuple[str, int, float]],
) -> None:
    call = model._calls.get(linkedid)
    before = model._snapshot(call) if call is not None else None
    if call is None:
        started = now - max(duration_seconds(row.get("Duration")) for row in call_rows)
        call = model._calls[linkedid] = CallRecord(linkedid, started)

    present: dict[str, Message] = {}
    for row in call_rows:
        uid = row.get("Uniqueid") or ""
        present[uid] = row
        leg = model._legs.get(uid)
        if leg is None or leg.call is not call:
            channel = row.get("Channel") or ""
            leg = LegRecord(
                uid, channel, device_of_channel(channel), call, now - duration_seconds(row.get("Duration"))
            )
            model._legs[uid] = leg
            call.legs[uid] = leg
            call.live_legs += 1
            peer_name = local_peer_name(channel)
            if peer_name is not None:
                model._local_halves[channel] = uid
        state = row.get("ChannelStateDesc") or ""
        leg.state = state
        leg.answered = leg.answered or state == "Up"
        leg.num = clean(row.get("CallerIDNum"))
        leg.name = clean(row.get("CallerIDName"))
        leg.connected_num = clean(row.get("ConnectedLineNum"))
        leg.connected_name = clean(row.get("ConnectedLineName"))
        leg.context = row.get("Context") or ""
        leg.exten = row.get("Exten") or ""
        leg.bridge = row.get("BridgeId") or None
        leg.agent = model._device_agent.get(leg.device, leg.agent)
        leg.snap = None
    for leg in call.legs.values():
        peer_name = local_peer_name(leg.channel)
        peer_uid = model._local_halves.get(peer_name) if peer_name is not None else None
        if peer_uid is not None and peer_uid in call.legs:
            leg.peer = peer_uid
        if leg.ended_at is None and leg.uid not in present:
            leg.ended_at = now
            leg.snap = None
            model._legs.pop(leg.uid, None)
            model._local_halves.pop(leg.channel, None)
            call.live_legs -= 1

    first = call.legs.get(linkedid)
    if first is None or first.ended_at is not None:
        first = call.first if call.first is not None and call.first.ended_at is None else None
    if first is None:
        first = next((leg for leg in call.legs.values() if leg.ended_at is None and leg.agent is None), None)
    if first is not None and call.first is not first:
        model._set_first_leg(call, first)
    if first is None:
        model._end_call(call, now, GONE_AFTER_RESYNC, out)
        return
    call.num = first.num
    call.name = first.name
    first_row = present.get(first.uid)
    if first_row is not None:
        model._harvest(call, first, first_row)
    model._note_dialed(call, first, first.context, first.exten)

    if call.click_to_dial and first.agent is not None:
        _click_to_dial_state(model, call, first, now)
        after_resync = model._snapshot(call)
        if after_resync != before:
            out.append(CallChanged(after_resync, "resync"))
        return

    # Rule R3: the state the channels show.
    customer = [leg for leg in call.customer_legs() if leg.ended_at is None]
    bridges = {leg.bridge for leg in customer if leg.bridge}
    live = [leg for leg in call.legs.values() if leg.ended_at is None and not call.is_customer(leg)]
    connected = next(
        (leg for leg in live if leg.agent and leg.bridge in bridges and _is_dialed_half(leg)), None
    )
    other = (
        next((leg for leg in live if leg.bridge in bridges and _is_dialed_half(leg)), None)
        if bridges
        else None
    )
    ringing = [
        leg
        for leg in live
        if leg.agent and not leg.bridge and _is_dialed_half(leg) and leg.state in ("Ring", "Ringing", "Down")
    ]
    application = first_row.get("Application") if first_row is not None else None
    entry = entries.get(first.uid)
    queue_name = entry[0] if entry is not None else None
    if queue_name is None and application == "Queue" and first_row is not None:
        queue_name = (first_row.get("ApplicationData") or "").split(",")[0] or None

    call.ringing = {}
    destination = connected or other
    if destination is not None:
        held = call.state is CallState.HELD and call.agent_leg is destination
        call.state = CallState.HELD if held else CallState.CONNECTED
        call.held = held
        if call.agent_leg is not destination:
            call.agent_leg = destination
            call.agent = destination.agent
            call.agent_interface = destination.device
            call.last_agent = destination.agent
            call.last_agent_interface = destination.device
            if destination.agent is not None and (not call.agents or call.agents[-1] != destination.agent):
                call.agents.append(destination.agent)
        call.in_queue = False
    elif ringing:
        call.state = CallState.RINGING
        for leg in ringing:
            call.ringing[leg.uid] = leg
        call.agent = ringing[-1].agent
        call.agent_interface = ringing[-1].device
        call.in_queue = queue_name is not None
    elif queue_name is not None:
        call.state = CallState.QUEUED
        call.in_queue = True
    elif application in _AGI_APPLICATIONS:
        call.state = CallState.IVR
    elif call.direction == "outbound" and not first.answered:
        call.state = CallState.DIALING
    else:
        call.state = CallState.ROUTING
        call.in_queue = False
    if destination is None:
        call.agent_leg = None
        call.held = False
    if queue_name is not None:
        call.queue = queue_name
        if call.queued_at is None:
            call.queued_at = now - entry[2] if entry is not None else now

    if call.state is CallState.IVR:
        if call.ivr_leg is None:
            script = first_row.get("ApplicationData") if first_row is not None else None
            call.ivr = IvrVisit(first.context, first.exten, "AGI", script, now)
            call.ivr_leg = first.uid
            model._ivr_legs[first.uid] = call
    elif call.ivr_leg is not None:
        model._leave_ivr(call, now)

    for leg, is_connected in [(leg, False) for leg in ringing] + ([(connected, True)] if connected else []):
        agent = model._agents.get(leg.agent or "")
        if agent is not None:
            agent.legs[leg.uid] = (call.id, is_connected)

    after = model._snapshot(call)
    if after != before:
        out.append(CallChanged(after, "resync"))


def _click_to_dial_state(model: EventHandlers, call: CallRecord, first: LegRecord, now: float) -> None:
    """Rule R3 for a click-to-dial: the first leg is the agent's device, the customer is reached
    from it."""
    agent_id = first.agent
    call.ringing = {}
    call.in_queue = False
    call.agent = call.last_agent = agent_id
    call.agent_interface = call.last_agent_interface = first.device
    model._dialing_legs.pop(first.uid, None)
    if not first.answered:
        call.state = CallState.RINGING
        call.ringing[first.uid] = first
        call.agent_leg = None
        taken = False
    else:
        bridged = next(
            (
                leg
                for leg in call.legs.values()
                if leg.ended_at is None
                and not call.is_customer(leg)
                and leg.bridge
                and leg.bridge == first.bridge
            ),
            None,
        )
        if bridged is not None:
            call.customer_leg = bridged
        plays_customer = call.customer_leg is first and call.state in CONNECTED_STATES
        if bridged is not None or plays_customer:
            if call.state not in CONNECTED_STATES:
                call.state = CallState.CONNECTED
                call.answered_at = call.answered_at if call.answered_at is not None else now
                call.customer_answered_at = call.answered_at
                if agent_id is not None:
                    call.agents.append(agent_id)
        else:
            call.state = CallState.DIALING
            call.held = False
            model._dialing_legs[first.uid] = call
        call.agent_leg = first
        taken = True
    agent = model._agents.get(agent_id or "")
    if agent is not None:
        agent.legs[first.uid] = (call.id, taken)
