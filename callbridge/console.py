"""One-line renderings of AMI events and model changes for operators' terminals."""

from __future__ import annotations

import dataclasses
import time
from enum import Enum
from typing import Any

from cti.ami.message import Message

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


def _value(obj: Any, name: str) -> Any:
    value = getattr(obj, name, None)
    return value.value if isinstance(value, Enum) else value


def format_change(event: object) -> str | None:
    """A model change (``CallChanged``, ``AgentChanged``, ``QueueChanged``) or adapter event."""
    kind = type(event).__name__
    if kind == "CallChanged":
        call = event.call  # type: ignore[attr-defined]
        who = " ".join(str(p) for p in (_value(call, "caller_num"), _value(call, "caller_name")) if p)
        if _value(call, "direction") == "outbound":
            who = f"outbound to {_value(call, 'remote_num')} (as {who or 'no caller id'})"
        parts = [
            f"call {call.id}",
            f"{_value(call, 'state'):<9}",
            f"[{event.change}]",
            who or "(no caller id)",
        ]  # type: ignore[attr-defined]
        for label, attr in (("dialed", "dialed"), ("queue", "queue"), ("agent", "agent")):
            if attr == "dialed" and _value(call, "direction") == "outbound":
                continue
            value = _value(call, attr)
            if value:
                parts.append(f"{label}={value}")
        if _value(call, "state") == "ended":
            cause = _value(call, "hangup_cause")
            text = _value(call, "hangup_cause_text")
            if cause is not None:
                parts.append(f"cause={cause}{f' ({text})' if text else ''}")
        return "  ".join(parts)
    if kind == "AgentChanged":
        agent = event.agent  # type: ignore[attr-defined]
        reason = _value(agent, "paused_reason")
        name = _value(agent, "name")
        return (
            f"agent {agent.id}{f' ({name})' if name and name != agent.id else ''}  {_value(agent, 'status')}"
            f"{f' ({reason})' if reason else ''}  [{event.change}]"  # type: ignore[attr-defined]
        )
    if kind == "QueueChanged":
        queue = event.queue  # type: ignore[attr-defined]
        waiting = _value(queue, "waiting") or ()
        return f"queue {queue.name}  {len(waiting)} waiting  [{event.change}]"  # type: ignore[attr-defined]
    if kind.startswith("PBX"):
        fields = ", ".join(f"{k}={v}" for k, v in vars_of(event).items() if k != "pbx")
        return f"{kind} {fields}"
    return None


def vars_of(obj: object) -> dict[str, Any]:
    if dataclasses.is_dataclass(obj):
        return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
    return dict(vars(obj))


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
