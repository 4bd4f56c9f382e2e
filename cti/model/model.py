"""The live call / agent / queue model, fed AMI events; sans-IO (no sockets, no clock).

``CallModel.apply(message, now)`` takes one AMI event and the time it was read, updates the model
and returns what changed as typed events (``cti.model.changes``). ``resync`` rebuilds it from the
``CoreShowChannels`` and ``QueueStatus`` lists after a reconnect.

Where things are: ``snapshots`` (what is reported), ``changes`` (the change events), ``records``
(the mutable records behind the snapshots), ``transitions`` (the rules below, as state changes),
``handlers`` (which AMI event triggers which transition), ``resync``, ``devices`` (channel and
interface names).

Rules:

Rule 1 (identity). A call is every channel sharing an Asterisk ``Linkedid``; the Linkedid is the
        call id. Each channel is a leg, indexed by ``Uniqueid``. The first leg (Uniqueid ==
        Linkedid) is the customer's: its CallerID is the call's caller (``NewCallerid`` updates
        it; ``<unknown>`` means none). A Local channel's two halves (``;1``/``;2``, the pair
        ``LocalBridge`` reports) are paired by name; the first leg and its other half are the
        customer side (in a click-to-dial, the agent's: Rules 4, 6 and 9 say how its customer is
        found).
Rule 2 (direction). A call is ``outbound`` when its first leg was originated towards a number:
        a Local channel named after one (``Local/+14155550142@customers``) or an originate
        ``DialBegin`` (no ``Channel``) whose dial string is one. That number is ``dialed`` and the
        call's ``remote_num``: the CallerID is then our own. A click-to-dial is ``outbound`` too:
        an originate ``DialBegin`` to a first leg on an agent's device (or a device learnt as an
        agent's while it rings, Rule 3) makes the call that agent's; ``dialed`` is the number
        that leg then dials: the ``OriginateResponse`` ``Exten``, the number extension its
        dialplan runs, or the number in the dial string of the ``Dial`` it places. Another first
        leg on an agent's device makes the call ``internal``; anything else is ``inbound`` and
        ``dialed`` is the first extension its first leg runs (the DID), ignoring the Local
        channel's own ``exten@context``.
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
                  Click-to-dial: from the agent answering their device (the originate DialEnd
                  ANSWER; the call has its ``agent`` and the agent is ON_CALL) until the customer
                  answers (-> CONNECTED) or the call ends. The customer is the leg the agent's
                  side dials (DialBegin; its DialEnd ANSWER connects, another status is the
                  ``dial_status``), or the agent's own leg when its dialplan plays the phone: a
                  ``Ringing()`` then ``Answer()`` there is the customer answering, ``Busy()`` /
                  ``Congestion()`` the customer busy / unreachable (Newexten of that one leg,
                  watched only while DIALING: the lab's ``customers`` context).
        IVR       AGI or AsyncAGI runs on the customer side (Newexten AGI, AGIExecStart,
                  AsyncAGIStart) until another application runs there, AsyncAGIEnd, or the call
                  queues or dials.
        QUEUED    QueueCallerJoin, until answered, left or ended; a failed ring returns here.
        RINGING   AgentCalled, or a DialBegin placed by the customer side (to an agent or not);
                  click-to-dial: the agent's device rings (originate DialBegin), and an
                  unanswered ring there (DialEnd other than ANSWER) goes back to ROUTING.
        CONNECTED AgentConnect for queue calls, DialEnd ANSWER for plain dials, the customer's
                  answer for click-to-dial (``answered_at`` = ``customer_answered_at``).
        HELD      Hold, or MusicOnHoldStart, on a leg of a CONNECTED call; Unhold, or the
                  MusicOnHoldStop of that same leg, give CONNECTED back.
        ENDED     the call's last leg hung up, or ``resync`` did not find it.
Rule 5 (queue answer). For a call in a queue, DialEnd ANSWER only notes the answering leg;
        AgentConnect (after QueueCallerLeave, a few ms later) connects the call, with Asterisk's
        HoldTime as ``wait_time``. A QueueCallerLeave with no answering leg and no abandon puts
        the call back to ROUTING.
Rule 6 (dials from the agent side). A dial placed by a leg that is not the customer's (an agent
        consulting a colleague) rings that agent but does not move the call. In a click-to-dial
        call the first leg is the agent's: its dial while DIALING reaches the customer (Rule 4);
        once connected, its dials are the agent side's.
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
        of its Local other half wins (busy, congestion show on ``;2``). Click-to-dial: a non-zero
        cause of the customer's leg wins; a call whose dialplan played ``Busy()`` /
        ``Congestion()`` and ended with cause 0 (Asterisk's cause there) gets 17 / 34.
        ``ended_by`` is the side (customer / agent) of the first hangup request on the
        conversation's legs; in a click-to-dial call the first leg and its Local other half are
        the agent's side, unless the first leg plays the customer (then its other half is the
        agent's handset).
Rule 10 (cost). Messages are dispatched on their name before any header is read; events no
        handler wants (VarSet, Newexten without AGI, DeviceStateChange, Cdr ...) cost a dict
        lookup. Nothing is reported for a message that changed nothing reported.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from cti.ami.message import Message, MessageKind
from cti.model.changes import ModelChange
from cti.model.config import AgentConfig, QueueConfig
from cti.model.devices import device_of_channel, device_of_interface
from cti.model.handlers import EventHandlers
from cti.model.records import AgentRecord
from cti.model.resync import resync as _resync
from cti.model.snapshots import Agent, Call, Queue
from cti.model.transitions import Out

_EVENT = MessageKind.EVENT


class CallModel(EventHandlers):
    """Calls, agents and queues of one Asterisk, kept up to date from its AMI events."""

    def __init__(
        self,
        agents: Iterable[AgentConfig] = (),
        queues: Iterable[QueueConfig] = (),
        *,
        history: int = 1000,
    ) -> None:
        super().__init__(queues, history)
        self._handlers = self.dispatch_table()
        for config in agents:
            self.add_agent(config)

    def apply(self, msg: Message, now: float) -> list[ModelChange]:
        """Take one AMI event read at ``now``; return the changes it caused, in order."""
        handler = self._handlers.get(msg.name)
        if handler is None or msg.kind is not _EVENT:
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

    def set_agent(self, config: AgentConfig, now: float) -> list[ModelChange]:
        """Declare an agent anew: its devices become exactly ``config.interfaces``.

        A device it no longer lists stops making new calls ring this agent; calls already
        ringing or connected there keep the agent they have. A device another agent owns is not
        taken over (``agent_for_device`` tells the caller beforehand)."""
        agent = self._agents.get(config.id)
        if agent is not None:
            keep = {device_of_interface(interface) for interface in config.interfaces}
            for device, owner in list(self._device_agent.items()):
                if owner == config.id and device not in keep:
                    del self._device_agent[device]
            agent.interfaces = [i for i in agent.interfaces if device_of_interface(i) in keep]
        return self.add_agent(config, now)

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
