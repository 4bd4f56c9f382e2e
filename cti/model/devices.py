"""Channel names, devices, agent ids and numbers: the string rules the model relies on.

A *device* is what a phone or an agent is reachable as, without the per-call parts:

* a channel name loses its ``-<sequence>`` suffix and, for Local channels, the ``;1``/``;2`` half
  marker: ``Local/agent1@agents-00000001;1`` and ``PJSIP/1001-0000000a`` give ``Local/agent1@agents``
  and ``PJSIP/1001``;
* a queue member interface loses the Local channel options after the context:
  ``Local/agent1@agents/n`` gives ``Local/agent1@agents`` (its ``StateInterface``).

So a ``DialBegin`` towards ``Local/agent1@agents-00000001;1`` and the queue member
``Local/agent1@agents/n`` name the same device, which is how a direct dial is matched to an agent.
"""

from __future__ import annotations

import re

UNKNOWN = "<unknown>"

# ``-<hex or decimal sequence>`` (PJSIP/SIP: 8 hex digits; IAX2: a call number), then the Local half.
_CHANNEL_SUFFIX = re.compile(r"-[0-9a-fA-F]+(?:;[12])?$")
_NUMBER = re.compile(r"\+?[0-9]{3,}")
# Extensions that are dialplan plumbing, never a number somebody dialed.
SPECIAL_EXTENS = frozenset({"s", "h", "i", "t", "o", "a", "T", "e", "failed", "fax", "talk"})


def clean(value: str | None) -> str | None:
    """Asterisk writes ``<unknown>`` (and sometimes nothing) for an absent caller ID field."""
    if not value or value == UNKNOWN:
        return None
    return value


def device_of_channel(channel: str) -> str:
    """The device a channel is on: its name without the per-call suffix.

    ``Local/agent1@agents-00000001;1`` -> ``Local/agent1@agents``, ``PJSIP/1001-0000000a`` ->
    ``PJSIP/1001``. IAX2 names end in a decimal call number (``IAX2/pstn-in-4321``); that is stripped too.
    """
    return _CHANNEL_SUFFIX.sub("", channel, count=1)


def device_of_interface(interface: str) -> str:
    """``Local/agent1@agents/n`` -> ``Local/agent1@agents``; other interfaces are devices already."""
    if interface[:6].lower() == "local/":
        tech, _, rest = interface.partition("/")
        return f"{tech}/{rest.partition('/')[0]}"
    return interface


def local_parts(channel_or_device: str) -> tuple[str, str] | None:
    """``(exten, context)`` of a Local channel or device, else None."""
    if channel_or_device[:6].lower() != "local/":
        return None
    device = device_of_channel(channel_or_device)
    exten, sep, context = device[6:].partition("@")
    if not sep:
        return None
    return exten, context.partition("/")[0]


def local_peer_name(channel: str) -> str | None:
    """The other half of a Local channel (``;1`` <-> ``;2``), by name, as ``LocalBridge`` pairs them."""
    if channel.endswith(";1"):
        return channel[:-1] + "2"
    if channel.endswith(";2"):
        return channel[:-1] + "1"
    return None


def agent_id_for_device(device: str) -> str:
    """The id an unknown queue member gets: the Local exten or the device resource.

    ``Local/agent1@agents`` -> ``agent1``, ``PJSIP/1001`` -> ``1001``, ``SIP/alice`` -> ``alice``.
    Agents declared in the configuration keep their own ids; this is only the fallback.
    """
    parts = local_parts(device)
    if parts is not None:
        return parts[0]
    return device.partition("/")[2] or device


def dialed_number(dial_string: str | None) -> str | None:
    """The number in a dial string, if it is one: ``+14155550142@customers`` -> ``+14155550142``.

    ``pstn@callers`` (the lab's simulated caller) and ``agent1@agents/n`` are not numbers.
    Handles ``PJSIP/trunk/sip:+1415...@host`` and ``Local/+1415...@ctx/n`` forms as well.
    """
    if not dial_string:
        return None
    target = dial_string.partition("@")[0].rsplit("/", 1)[-1]
    if target.startswith("sip:"):
        target = target[4:]
    return target if _NUMBER.fullmatch(target) else None


def is_number(value: str | None) -> bool:
    return value is not None and _NUMBER.fullmatch(value) is not None
