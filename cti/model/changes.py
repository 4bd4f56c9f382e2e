"""What ``CallModel.apply`` returns: typed change events carrying a fresh snapshot.

``change`` names what happened, so a subscriber can react without diffing snapshots.

Call changes: ``new``, ``caller``, ``variables``, ``dialing``, ``customer_answered``, ``ivr``,
``ivr_left``, ``queued``, ``left_queue``, ``abandoned``, ``ringing``, ``ringing_agent``,
``agent_identified``, ``ring_no_answer``, ``answered``, ``agent_left``, ``held``, ``unheld``,
``transferred``, ``originate``, ``resync``, ``ended``.

Agent changes: ``new``, ``config`` (``add_agent`` again), ``added``, ``removed``, ``paused``,
``unpaused``, ``penalty``, ``ringinuse``, ``member``, ``device``, ``status``, ``resync``.

Queue changes: ``new``, ``params``, ``joined``, ``left``, ``abandoned``, ``member_added``,
``member_removed``, ``answered``, ``removed``, ``resync``.
"""

from __future__ import annotations

from dataclasses import dataclass

from cti.model.snapshots import Agent, Call, Queue


@dataclass(frozen=True, slots=True)
class CallChanged:
    call: Call
    change: str


@dataclass(frozen=True, slots=True)
class AgentChanged:
    agent: Agent
    change: str


@dataclass(frozen=True, slots=True)
class QueueChanged:
    queue: Queue
    change: str


ModelChange = CallChanged | AgentChanged | QueueChanged
