"""What the fake PBX knows of its calls and queues, rebuilt from the events it has replayed.

Sans-IO: events in (``apply``), AMI list items out (``core_show_channels``, ``status``,
``queue_status``, ``queue_summary``). Time is passed in as PBX seconds (the replay clock), never
read from a clock here.

Rules:

Rule 1. A channel exists from its ``Newchannel`` to its ``Hangup``. Every event that carries a
        channel snapshot (``Channel``...``Linkedid`` and ``ChanVariable``, also with the ``Dest``,
        ``LocalOne``, ``LocalTwo``, ``Transferer`` and ``Transferee`` prefixes) replaces the stored
        snapshot of a live channel with the same name and Uniqueid; no event but ``Newchannel``
        creates one, so late events (``Cdr``) never resurrect a channel.
Rule 2. The application shown by ``CoreShowChannels``/``Status`` is the one of the channel's last
        ``Newexten``; the bridge is set by ``BridgeEnter`` and cleared by ``BridgeLeave``; ``VarSet``
        feeds ``Getvar`` (inherited ``__NAME`` variables are stored as ``NAME``, as Asterisk reads them).
Rule 3. The queue roster is the lab's ``queues.conf`` as Asterisk loads it after a restart: every
        ``member =>`` static, not paused, device ``NOT_INUSE`` (1). The captures were all recorded on
        a freshly restarted Asterisk, so this is the state each scenario starts from; a QueueStatus
        list inside a capture is taken mid-scenario (calls up, Eve paused) and would not be.
Rule 4. Member events (``QueueMemberAdded``/``Removed``/``Pause``/``Status``/``Penalty``/
        ``Ringinuse``) carry every member field and overwrite the member; caller events
        (``QueueCallerJoin``/``Leave``/``Abandon``) and ``AgentConnect``/``AgentComplete`` update the
        entries and the counters with app_queue's own arithmetic (``recalc_holdtime``,
        ``update_queue``, ``record_abandoned``: exponential averages with a 1/4 weight).
Rule 5. Item layouts (field names and order) are copied from the ``actions`` capture and from
        app_queue.c / manager.c of Asterisk 22. Lists are in creation order (channels) and
        configuration order (queues); Asterisk's own order is its hash containers' and means nothing.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from cti.ami.message import Message

Pairs = list[tuple[str, str]]

SNAPSHOT_KEYS = (
    "Channel",
    "ChannelState",
    "ChannelStateDesc",
    "CallerIDNum",
    "CallerIDName",
    "ConnectedLineNum",
    "ConnectedLineName",
    "Language",
    "AccountCode",
    "Context",
    "Exten",
    "Priority",
    "Uniqueid",
    "Linkedid",
)
_SNAPSHOT_BASES = frozenset((*SNAPSHOT_KEYS, "ChanVariable"))
_SNAPSHOT_PREFIXES = ("", "Dest", "LocalOne", "LocalTwo", "Transferer", "Transferee")

#: Member fields in the order of the QueueMember* events (``QueueMemberAdded`` etc.).
MEMBER_KEYS = (
    "MemberName",
    "Interface",
    "StateInterface",
    "Membership",
    "Penalty",
    "CallsTaken",
    "LastCall",
    "LastPause",
    "LoginTime",
    "InCall",
    "Status",
    "Paused",
    "PausedReason",
    "Ringinuse",
    "Wrapuptime",
)
_MEMBER_EVENTS = frozenset(
    (
        "QueueMemberAdded",
        "QueueMemberPause",
        "QueueMemberStatus",
        "QueueMemberPenalty",
        "QueueMemberRinginuse",
        "QueueMemberRemoved",
    )
)
#: Asterisk device states a member can be counted as logged in / available with (devicestate.h).
_DEVICE_UNKNOWN, _DEVICE_NOT_INUSE, _DEVICE_INVALID, _DEVICE_UNAVAILABLE = "0", "1", "4", "5"

_TRUE = frozenset(("yes", "true", "y", "t", "1", "on"))


def is_true(value: str | None) -> bool:
    """Asterisk's ``ast_true``."""
    return (value or "").strip().lower() in _TRUE


# --- configuration ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MemberConfig:
    interface: str
    penalty: int = 0
    name: str = ""
    state_interface: str = ""


@dataclass(frozen=True, slots=True)
class QueueConfig:
    name: str
    strategy: str = "ringall"
    maxlen: int = 0
    servicelevel: int = 0
    weight: int = 0
    ringinuse: bool = True
    members: tuple[MemberConfig, ...] = ()


class QueuesConfError(ValueError):
    pass


_SECTION = re.compile(r"^\[([^\]]+)\](?:\(([^)]*)\))?\s*$")


def parse_queues_conf(text: str, source: str = "queues.conf") -> list[QueueConfig]:
    """Queues of a ``queues.conf``: templates (``(!)``) and inheritance (``[q](tpl)``) resolved."""
    sections: dict[str, list[tuple[str, str]]] = {}
    templates: set[str] = set()
    order: list[str] = []
    current: list[tuple[str, str]] | None = None
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split(";", 1)[0].strip()
        if not line:
            continue
        header = _SECTION.match(line)
        if header:
            name, options = header.group(1).strip(), header.group(2) or ""
            current = []
            for option in (o.strip() for o in options.split(",") if o.strip()):
                if option == "!":
                    templates.add(name)
                elif option in sections:
                    current.extend(sections[option])
                else:
                    raise QueuesConfError(f"{source}:{number}: [{name}] inherits unknown [{option}]")
            sections[name] = current
            order.append(name)
            continue
        if current is None:
            raise QueuesConfError(f"{source}:{number}: setting outside a [section]: {raw.strip()!r}")
        key, sep, value = line.partition("=")
        if not sep:
            raise QueuesConfError(f"{source}:{number}: expected 'key = value', got {raw.strip()!r}")
        current.append((key.strip().rstrip(">").strip().lower(), value.lstrip(">").strip()))

    queues = []
    for name in order:
        if name == "general" or name in templates:
            continue
        settings: dict[str, str] = {}
        members: list[MemberConfig] = []
        for key, value in sections[name]:
            if key == "member":
                parts = [p.strip() for p in value.split(",")]
                interface = parts[0]
                penalty = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
                member_name = parts[2] if len(parts) > 2 and parts[2] else interface
                state_interface = parts[3] if len(parts) > 3 and parts[3] else interface
                members.append(MemberConfig(interface, penalty, member_name, state_interface))
            else:
                settings[key] = value
        queues.append(
            QueueConfig(
                name=name,
                strategy=settings.get("strategy", "ringall"),
                maxlen=_int(settings.get("maxlen")),
                servicelevel=_int(settings.get("servicelevel")),
                weight=_int(settings.get("weight")),
                ringinuse=is_true(settings.get("ringinuse", "yes")),
                members=tuple(members),
            )
        )
    return queues


def _int(value: str | None, default: int = 0) -> int:
    try:
        return int(value) if value is not None else default
    except ValueError:
        return default


# --- state -----------------------------------------------------------------------------------------


@dataclass(slots=True)
class Channel:
    snapshot: Pairs
    created: float
    application: str = ""
    app_data: str = ""
    bridge: str = ""
    variables: dict[str, str] = field(default_factory=dict)

    def get(self, key: str) -> str:
        for k, v in self.snapshot:
            if k == key:
                return v
        return ""

    @property
    def name(self) -> str:
        return self.get("Channel")

    @property
    def uniqueid(self) -> str:
        return self.get("Uniqueid")


@dataclass(slots=True)
class Entry:
    channel: str
    uniqueid: str
    caller: dict[str, str]
    joined: float


@dataclass(slots=True)
class Queue:
    config: QueueConfig
    members: dict[str, dict[str, str]] = field(default_factory=dict)
    entries: list[Entry] = field(default_factory=list)
    holdtime: int = 0
    talktime: int = 0
    completed: int = 0
    abandoned: int = 0
    completed_in_sl: int = 0
    abandoned_in_sl: int = 0
    #: interface -> "answered within the service level", decided at AgentConnect, counted at AgentComplete
    connected_in_sl: dict[str, bool] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.config.name


def _initial_member(queue: QueueConfig, member: MemberConfig, login_time: int) -> dict[str, str]:
    return {
        "MemberName": member.name or member.interface,
        "Interface": member.interface,
        "StateInterface": member.state_interface or member.interface,
        "Membership": "static",
        "Penalty": str(member.penalty),
        "CallsTaken": "0",
        "LastCall": "0",
        "LastPause": "0",
        "LoginTime": str(login_time),
        "InCall": "0",
        "Status": _DEVICE_NOT_INUSE,
        "Paused": "0",
        "PausedReason": "",
        "Ringinuse": "1" if queue.ringinuse else "0",
        "Wrapuptime": "0",
    }


def _ewma(old: int, new: int) -> int:
    """app_queue's exponential average: ``((old << 2) - old + new) >> 2``."""
    return ((old << 2) - old + new) >> 2


def _duration(seconds: float) -> str:
    whole = max(int(seconds), 0)
    return f"{whole // 3600:02d}:{whole % 3600 // 60:02d}:{whole % 60:02d}"


def _with_id(pairs: Pairs, action_id: str | None) -> Pairs:
    return [*pairs, ("ActionID", action_id)] if action_id else pairs


class PBXState:
    """Live channels and queues of the fake PBX."""

    def __init__(self, queues: Sequence[QueueConfig], *, login_time: int) -> None:
        self.login_time = login_time
        self.channels: dict[str, Channel] = {}
        self.channels_created = 0
        self.queues: dict[str, Queue] = {}
        for config in queues:
            queue = Queue(config)
            for member in config.members:
                queue.members[member.interface] = _initial_member(config, member, login_time)
            self.queues[config.name] = queue

    # --- events in -----------------------------------------------------------------------------

    def apply(self, message: Message, now: float) -> None:
        """Update the state with one replayed (or generated) event."""
        name = message.name
        pairs = message.pairs
        if name in _MEMBER_EVENTS:
            self._apply_member(name, dict(pairs))
            return
        snapshots = _snapshots(pairs)
        main = snapshots.get("")
        if name == "Newchannel" and main is not None:
            self.channels[_value(main, "Channel")] = Channel(main, now)
            self.channels_created += 1
            return
        for snapshot in snapshots.values():
            channel = self._live(snapshot)
            if channel is not None:
                channel.snapshot = snapshot
        if main is None:
            return
        fields = dict(pairs)
        if name.startswith(("QueueCaller", "Agent")):
            self._apply_caller(name, fields, main, now)
            return
        channel = self._live(main)
        if channel is None:
            return
        if name == "Hangup":
            del self.channels[channel.name]
        elif name == "Newexten":
            channel.application = fields.get("Application", "")
            channel.app_data = fields.get("AppData", "")
        elif name == "VarSet":
            channel.variables[fields.get("Variable", "").lstrip("_")] = fields.get("Value", "")
        elif name == "BridgeEnter":
            channel.bridge = fields.get("BridgeUniqueid", "")
        elif name == "BridgeLeave":
            channel.bridge = ""
        elif name == "Rename" and fields.get("Newname"):
            del self.channels[channel.name]
            channel.snapshot = [(k, fields["Newname"] if k == "Channel" else v) for k, v in channel.snapshot]
            self.channels[fields["Newname"]] = channel

    def _live(self, snapshot: Pairs) -> Channel | None:
        channel = self.channels.get(_value(snapshot, "Channel"))
        if channel is None or channel.uniqueid != _value(snapshot, "Uniqueid"):
            return None
        return channel

    def _queue(self, name: str) -> Queue:
        queue = self.queues.get(name)
        if queue is None:  # a queue the configuration does not know: learn it from its events
            queue = self.queues[name] = Queue(QueueConfig(name))
        return queue

    def _apply_member(self, name: str, fields: dict[str, str]) -> None:
        queue = self._queue(fields.get("Queue", ""))
        interface = fields.get("Interface", "")
        if name == "QueueMemberRemoved":
            queue.members.pop(interface, None)
            return
        member = queue.members.setdefault(interface, {})
        for key in MEMBER_KEYS:
            if key in fields:
                member[key] = fields[key]

    def _apply_caller(self, name: str, fields: dict[str, str], snapshot: Pairs, now: float) -> None:
        queue = self._queue(fields.get("Queue", ""))
        uniqueid = _value(snapshot, "Uniqueid")
        if name == "QueueCallerJoin":
            caller = {k: _value(snapshot, k) for k in SNAPSHOT_KEYS[3:7]}
            entry = Entry(_value(snapshot, "Channel"), uniqueid, caller, now)
            position = min(max(_int(fields.get("Position"), 1) - 1, 0), len(queue.entries))
            queue.entries.insert(position, entry)
        elif name == "QueueCallerLeave":
            queue.entries = [e for e in queue.entries if e.uniqueid != uniqueid]
        elif name == "QueueCallerAbandon":
            queue.abandoned += 1
            if _int(fields.get("HoldTime")) <= queue.config.servicelevel:
                queue.abandoned_in_sl += 1
        elif name == "AgentConnect":
            hold = _int(fields.get("HoldTime"))
            first = queue.completed + queue.abandoned == 0
            queue.holdtime = hold if first else _ewma(queue.holdtime, hold)
            queue.connected_in_sl[fields.get("Interface", "")] = hold <= queue.config.servicelevel
            # No event says so, but QueueStatus shows the member InCall from here (member->starttime).
            queue.members.get(fields.get("Interface", ""), {})["InCall"] = "1"
        elif name == "AgentComplete":
            queue.members.get(fields.get("Interface", ""), {})["InCall"] = "0"
            queue.completed += 1
            if queue.connected_in_sl.pop(fields.get("Interface", ""), False):
                queue.completed_in_sl += 1
            talk = _int(fields.get("TalkTime"))
            queue.talktime = talk if queue.completed == 1 else _ewma(queue.talktime, talk)

    # --- actions that change queues (the fake PBX turns the result into events) -----------------

    def find_members(self, interface: str, queue: str | None) -> list[tuple[Queue, dict[str, str]]]:
        found = []
        for q in self.queues.values():
            if queue and q.name != queue:
                continue
            member = q.members.get(interface)
            if member is not None:
                found.append((q, member))
        return found

    def member_event(self, event: str, queue: Queue, member: dict[str, str]) -> Pairs:
        """A QueueMember* event in Asterisk's layout (from the ``queue_member_admin`` capture)."""
        return [
            ("Event", event),
            ("Privilege", "agent,all"),
            ("Queue", queue.name),
            *((key, member.get(key, "")) for key in MEMBER_KEYS),
        ]

    # --- list actions out ----------------------------------------------------------------------

    def core_show_channels(self, action_id: str | None, now: float) -> list[Pairs]:
        items = []
        for channel in self.channels.values():
            items.append(
                [
                    ("Event", "CoreShowChannel"),
                    *([("ActionID", action_id)] if action_id else []),
                    *channel.snapshot,
                    ("Application", channel.application),
                    ("ApplicationData", channel.app_data),
                    ("Duration", _duration(now - channel.created)),
                    ("BridgeId", channel.bridge),
                ]
            )
        return items

    def status(self, action_id: str | None, now: float, channel: str | None = None) -> list[Pairs] | None:
        """``Status`` items; None when the one channel asked for does not exist."""
        if channel:
            if channel not in self.channels:
                return None
            selected: Iterable[Channel] = [self.channels[channel]]
        else:
            selected = self.channels.values()
        items = []
        for c in selected:
            items.append(
                _with_id(
                    [
                        ("Event", "Status"),
                        ("Privilege", "Call"),
                        *c.snapshot,
                        ("Type", c.name.partition("/")[0]),
                        ("DNID", ""),
                        ("EffectiveConnectedLineNum", c.get("ConnectedLineNum")),
                        ("EffectiveConnectedLineName", c.get("ConnectedLineName")),
                        ("TimeToHangup", "0"),
                        ("BridgeID", c.bridge),
                        ("Application", c.application),
                        ("Data", c.app_data),
                        # Media formats are not in any event; these are what the lab's Local channels show.
                        ("Nativeformats", "(slin)"),
                        ("Readformat", "slin"),
                        ("Readtrans", ""),
                        ("Writeformat", "slin"),
                        ("Writetrans", ""),
                        ("Callgroup", "0"),
                        ("Pickupgroup", "0"),
                        ("Seconds", str(max(int(now - c.created), 0))),
                    ],
                    action_id,
                )
            )
        return items

    def queue_status(
        self, action_id: str | None, now: float, queue: str | None = None, member: str | None = None
    ) -> list[Pairs]:
        items: list[Pairs] = []
        for q in self.queues.values():
            if queue and q.name.lower() != queue.lower():
                continue
            sl = 100.0 * q.completed_in_sl / q.completed if q.completed else 0.0
            done = q.completed + q.abandoned
            sl2 = 100.0 * (q.completed_in_sl + q.abandoned_in_sl) / done if done else 0.0
            items.append(
                _with_id(
                    [
                        ("Event", "QueueParams"),
                        ("Queue", q.name),
                        ("Max", str(q.config.maxlen)),
                        ("Strategy", q.config.strategy),
                        ("Calls", str(len(q.entries))),
                        ("Holdtime", str(q.holdtime)),
                        ("TalkTime", str(q.talktime)),
                        ("Completed", str(q.completed)),
                        ("Abandoned", str(q.abandoned)),
                        ("ServiceLevel", str(q.config.servicelevel)),
                        ("ServicelevelPerf", f"{sl:2.1f}"),
                        ("ServicelevelPerf2", f"{sl2:2.1f}"),
                        ("Weight", str(q.config.weight)),
                    ],
                    action_id,
                )
            )
            for m in q.members.values():
                if member and member not in (m.get("Interface"), m.get("MemberName")):
                    continue
                items.append(
                    _with_id(
                        [
                            ("Event", "QueueMember"),
                            ("Queue", q.name),
                            ("Name", m.get("MemberName", "")),
                            ("Location", m.get("Interface", "")),
                            *((k, m.get(k, "")) for k in MEMBER_KEYS[2:13]),
                            ("Wrapuptime", m.get("Wrapuptime", "0")),
                        ],
                        action_id,
                    )
                )
            for position, entry in enumerate(q.entries, 1):
                live = self.channels.get(entry.channel)
                caller = {k: live.get(k) for k in entry.caller} if live else entry.caller
                items.append(
                    _with_id(
                        [
                            ("Event", "QueueEntry"),
                            ("Queue", q.name),
                            ("Position", str(position)),
                            ("Channel", entry.channel),
                            ("Uniqueid", entry.uniqueid),
                            *caller.items(),
                            ("Wait", str(max(int(now - entry.joined), 0))),
                            ("Priority", "0"),
                        ],
                        action_id,
                    )
                )
        return items

    def queue_summary(self, action_id: str | None, now: float, queue: str | None = None) -> list[Pairs]:
        items = []
        for q in self.queues.values():
            if queue and q.name.lower() != queue.lower():
                continue
            logged_in = available = 0
            for m in q.members.values():
                status = m.get("Status", _DEVICE_NOT_INUSE)
                if status not in (_DEVICE_UNAVAILABLE, _DEVICE_INVALID):
                    logged_in += 1
                    if status in (_DEVICE_UNKNOWN, _DEVICE_NOT_INUSE) and m.get("Paused") != "1":
                        available += 1
            longest = max((int(now - e.joined) for e in q.entries), default=0)
            items.append(
                _with_id(
                    [
                        ("Event", "QueueSummary"),
                        ("Queue", q.name),
                        ("LoggedIn", str(logged_in)),
                        ("Available", str(available)),
                        ("Callers", str(len(q.entries))),
                        ("HoldTime", str(q.holdtime)),
                        ("TalkTime", str(q.talktime)),
                        ("LongestHoldTime", str(max(longest, 0))),
                    ],
                    action_id,
                )
            )
        return items


def _value(pairs: Pairs, key: str) -> str:
    for k, v in pairs:
        if k == key:
            return v
    return ""


def _snapshots(pairs: Pairs) -> dict[str, Pairs]:
    """Channel snapshots in an event, by key prefix ("" for the event's own ``Channel``)."""
    found: dict[str, Pairs] = {}
    for key, value in pairs:
        for prefix in _SNAPSHOT_PREFIXES:
            if key.startswith(prefix) and key[len(prefix) :] in _SNAPSHOT_BASES:
                found.setdefault(prefix, []).append((key[len(prefix) :], value))
                break
    return {
        prefix: snapshot
        for prefix, snapshot in found.items()
        if _value(snapshot, "Channel") and _value(snapshot, "Uniqueid")
    }
