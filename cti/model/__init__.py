"""The vendor-neutral call / agent / queue model, fed by AMI events (sans-IO).

``CallModel.apply(message, now)`` turns one AMI event into a list of ``CallChanged`` /
``AgentChanged`` / ``QueueChanged``; ``CallModel.resync`` rebuilds the model from the
``CoreShowChannels`` and ``QueueStatus`` lists after a reconnect. The state rules are written at
the top of ``cti.model.model``.
"""

from cti.model.changes import AgentChanged, CallChanged, ModelChange, QueueChanged
from cti.model.config import AgentConfig, QueueConfig
from cti.model.devices import agent_id_for_device, device_of_channel, device_of_interface
from cti.model.model import CallModel
from cti.model.resync import GONE_AFTER_RESYNC
from cti.model.snapshots import (
    Agent,
    AgentStatus,
    Call,
    CallState,
    IvrVisit,
    Leg,
    Membership,
    Queue,
    Transfer,
)

__all__ = [
    "GONE_AFTER_RESYNC",
    "Agent",
    "AgentChanged",
    "AgentConfig",
    "AgentStatus",
    "Call",
    "CallChanged",
    "CallModel",
    "CallState",
    "IvrVisit",
    "Leg",
    "Membership",
    "ModelChange",
    "Queue",
    "QueueChanged",
    "QueueConfig",
    "Transfer",
    "agent_id_for_device",
    "device_of_channel",
    "device_of_interface",
]
