"""Asterisk Manager Interface: sans-IO codec and protocol, asyncio client."""

from cti.ami.codec import (
    AMIError,
    Banner,
    LocalProtocolError,
    MessageReader,
    ProtocolViolation,
    format_action,
    format_pairs,
)
from cti.ami.message import Message, MessageKind
from cti.ami.protocol import ActionResult, AMIClientProtocol, AMIEvent, UnmatchedResponse

__all__ = [
    "AMIClientProtocol",
    "AMIError",
    "AMIEvent",
    "ActionResult",
    "Banner",
    "LocalProtocolError",
    "Message",
    "MessageKind",
    "MessageReader",
    "ProtocolViolation",
    "UnmatchedResponse",
    "format_action",
    "format_pairs",
]
