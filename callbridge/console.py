"""One-line renderings of AMI events and model changes for operators' terminals."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from cti.ami.message import Message
from cti.model import AgentChanged, CallChanged, CallState, QueueChanged

# Events a busy PBX sends by the thousand that say nothing about calls, agents or queues.
NOISY_EVENTS = frozenset(
    {
        "VarSet",
        "Newexten",
        "DeviceStateChange",
        "Cdr",
        "SuccessfulAuth",
        "RTCPSent",
        "RTCPReceived",
        "NewConnectedLine",
        "SoftHangupRequest",
        "HangupRequest",
    }
)

_EVENT_FIELDS = (
    "Channel", "DestChannel", "Linkedid", "CallerIDNum", "CallerIDName", "Exten", "ChannelStateDesc",
    "Queue", "Interface", "MemberName", "Position", "HoldTime", "TalkTime", "RingTime", "Paused",
    "PausedReason", "Reason", "DialStatus", "Cause", "Cause-txt", "Response", "Result", "Extension",
)  # fmt: skip


def stamp(now: float | None = None) -> str:
    now = time.time() if now is None else now
    return time.strftime("%H:%M:%S", time.localtime(now)) + f".{int(now * 1000) % 1000:03d}"


def format_message(message: Message) -> str:
    """``Event  Key=value ...`` with the fields an operator looks at."""
    parts = [f"{message.name:<22}"]
    for key in _EVENT_FIELDS:
        value = message.get(key)
        if value not in (None, "", "<unknown>"):
            parts.append(f"{key}={value}")
    return " ".join(parts)


def format_call(change: CallChanged) -> str:
    call = change.call
    who = " ".join(p for p in (call.caller_num, call.caller_name) if p)
    outbound = call.direction == "outbound"
    if outbound:
        who = f"outbound to {call.remote_num} (as {who or 'no caller id'})"
    parts = [f"call {call.id}", f"{call.state.value:<9}", f"[{change.change}]", who or "(no caller id)"]
    for label, value in (
        ("dialed", None if outbound else call.dialed),
        ("queue", call.queue),
        ("agent", call.agent),
    ):
        if value:
            parts.append(f"{label}={value}")
    if call.state is CallState.ENDED and call.hangup_cause is not None:
        text = call.hangup_cause_text
        parts.append(f"cause={call.hangup_cause}{f' ({text})' if text else ''}")
    return "  ".join(parts)


def format_change(event: object) -> str | None:
    """A model change (``CallChanged``, ``AgentChanged``, ``QueueChanged``) or adapter event."""
    if isinstance(event, CallChanged):
        return format_call(event)
    if isinstance(event, AgentChanged):
        agent = event.agent
        name = f" ({agent.name})" if agent.name and agent.name != agent.id else ""
        reason = f" ({agent.paused_reason})" if agent.paused_reason else ""
        return f"agent {agent.id}{name}  {agent.status.value}{reason}  [{event.change}]"
    if isinstance(event, QueueChanged):
        return f"queue {event.queue.name}  {len(event.queue.waiting)} waiting  [{event.change}]"
    kind = type(event).__name__
    if kind.startswith("PBX"):
        fields = ", ".join(f"{k}={v}" for k, v in vars_of(event).items() if k != "pbx")
        return f"{kind} {fields}"
    return None


def vars_of(obj: object) -> dict[str, Any]:
    """The fields of an adapter event (a dataclass), in order."""
    return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}  # type: ignore[arg-type]


class ChangeLines:
    """Renders changes for a terminal, leaving out agent and queue lines that repeat the last one.

    The model reports every change it makes (a member's ring-in-use flag, a device state); an
    operator watching calls wants a line when what they can see moved.
    """

    def __init__(self) -> None:
        self._last: dict[str, str] = {}

    def __call__(self, event: object) -> str | None:
        line = format_change(event)
        if line is None:
            return None
        kind = type(event).__name__
        if kind in ("AgentChanged", "QueueChanged"):
            key = line.split("  ", 1)[0]
            visible = line.rsplit("  [", 1)[0]
            if self._last.get(key) == visible:
                return None
            self._last[key] = visible
        return line
