"""Screen-pop: which agent sees which pop, pushed to the agents' sessions.

``PopTracker`` (``screenpop.tracker``) is the pure core: ``CallChanged`` in, ``ShowPop`` /
``UpdatePop`` / ``RetractPop`` out; its rules are written at the top of that module.
"""

from screenpop.tracker import (
    Facts,
    PopCommand,
    PopState,
    PopTracker,
    RetractPop,
    RetractReason,
    ShowPop,
    UpdatePop,
    UpdateReason,
)

__all__ = [
    "Facts",
    "PopCommand",
    "PopState",
    "PopTracker",
    "RetractPop",
    "RetractReason",
    "ShowPop",
    "UpdatePop",
    "UpdateReason",
]
