"""What the service configuration tells the model up front: agents and their devices, queue wrap-up."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class AgentConfig:
    """An agent known before any queue event names it.

    ``interfaces`` are devices or queue-member interfaces (``PJSIP/1001``, ``Local/agent1@agents/n``);
    a call ringing any of them rings this agent. ``wrapup`` (seconds) puts the agent in wrap-up
    after each queue call, unless the queue member reports its own ``Wrapuptime``.
    """

    id: str
    name: str | None = None
    interfaces: Sequence[str] = ()
    wrapup: float = 0.0

    def __post_init__(self) -> None:
        # Accept any iterable (a list from YAML) but keep the snapshot immutable.
        object.__setattr__(self, "interfaces", tuple(self.interfaces))


@dataclass(frozen=True, slots=True)
class QueueConfig:
    """Queue settings AMI does not report: ``wrapup`` is queues.conf ``wrapuptime`` (seconds)."""

    name: str
    wrapup: float = 0.0
