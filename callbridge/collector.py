"""Python's garbage collector run on the service's schedule, between events.

CPython's automatic collector stops the event loop for as long as a pass walks its objects. In
the screen-pop bench (1,000 agent WebSockets, 100 pops/s; ``bench/README.md``) its passes were
the latency tail: a full pass walks every long-lived object (~60 of aiohttp's per WebSocket, the
model's live calls, the wrap-up desk) and took 80-200 ms two or three times a minute; the young
passes, which it starts by counting allocations net of deallocations, came late when old objects
died at the same pace as new ones were made (ended calls), found 10,000-35,000 young objects and
took 6-60 ms.

So the service turns the automatic collector off and runs it itself:

- a young pass (generation 0) every ``young_every`` seconds: a few hundred objects, well under a
  millisecond;
- a full pass every ``full_every`` seconds, after which the survivors are frozen
  (``gc.freeze()``): the next full pass walks only what came since (in the bench ~2 ms every
  quarter second, ~7 ms every second). Frozen objects still go the moment their last reference
  does; what a frozen object cannot do is be collected as part of a reference cycle (the call
  model's records are freed by reference counting for that reason: ``CallRecord.release``);
- so at most every ``thaw_every`` seconds, when the frozen heap has grown by a quarter since the
  last thaw pass (CPython's own rule for its full passes: a quarter more than the last one left),
  a thaw pass unfreezes everything and walks the whole heap once, collecting the cycles that
  formed among frozen objects (a closed WebSocket's, say). Cyclic garbage the collector cannot
  reach is thus bounded by a quarter of the heap, and a service whose heap holds steady never
  pays for the pass. It is the one long pause left (~260 ms over the bench's 170,000 objects):
  it is logged with its length and what it freed.

The start-up heap (modules, settings, the agents) is frozen at the start.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from dataclasses import dataclass
from types import TracebackType

log = logging.getLogger(__name__)


@dataclass
class CollectorStats:
    young_passes: int = 0
    full_passes: int = 0
    thaw_passes: int = 0
    last_thaw_ms: float = 0.0


class Collector:
    """Owns the process's garbage collection from ``begin`` to ``end`` (or as a context manager)."""

    def __init__(
        self, *, young_every: float = 0.05, full_every: float = 0.1, thaw_every: float = 3600.0
    ) -> None:
        if not 0 < young_every <= full_every <= thaw_every:
            raise ValueError("want 0 < young_every <= full_every <= thaw_every")
        self.young_every = young_every
        self.full_every = full_every
        self.thaw_every = thaw_every
        self.stats = CollectorStats()
        self._full_at = 0.0
        self._thaw_at = 0.0
        self._frozen = 0
        """Frozen objects after the last thaw pass (or the start)."""
        self._was_enabled: bool | None = None
        self._task: asyncio.Task[None] | None = None

    def begin(self, now: float) -> None:
        """Turn the automatic collector off and freeze what start-up made."""
        self._was_enabled = gc.isenabled()
        gc.disable()
        gc.collect()
        gc.freeze()
        self._frozen = gc.get_freeze_count()
        self._full_at = now + self.full_every
        self._thaw_at = now + self.thaw_every

    def step(self, now: float) -> None:
        """The pass that is due at ``now``: a thaw pass, a full pass or a young one."""
        if now >= self._thaw_at:
            self._thaw_at = now + self.thaw_every
            self._full_at = now + self.full_every
            # Counting walks the frozen list (~2 ms for the bench's heap): once per thaw_every.
            self._full(thaw=gc.get_freeze_count() > self._frozen * 1.25)
        elif now >= self._full_at:
            self._full_at = now + self.full_every
            self._full(thaw=False)
        else:
            gc.collect(0)
            self.stats.young_passes += 1

    def end(self) -> None:
        """Give the process its automatic collector back."""
        if self._was_enabled is None:
            return
        gc.unfreeze()
        if self._was_enabled:
            gc.enable()
        self._was_enabled = None

    def _full(self, *, thaw: bool) -> None:
        if not thaw:
            gc.collect()
            gc.freeze()
            self.stats.full_passes += 1
            return
        gc.unfreeze()
        started = time.perf_counter()
        freed = gc.collect()
        elapsed = (time.perf_counter() - started) * 1e3
        gc.freeze()
        self._frozen = gc.get_freeze_count()
        self.stats.thaw_passes += 1
        self.stats.last_thaw_ms = elapsed
        log.info(
            "garbage collector: thaw pass over %d objects in %.0f ms, %d freed", self._frozen, elapsed, freed
        )

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.young_every)
            self.step(loop.time())

    async def __aenter__(self) -> Collector:
        self.begin(asyncio.get_running_loop().time())
        self._task = asyncio.create_task(self._run(), name="garbage-collector")
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self.end()
