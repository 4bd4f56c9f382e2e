"""The pop pipeline on a real bus, store and hub, fed by the call model replaying load_50 (50 calls
through five agents): concurrent assembly keeps each pop in order, and a pipeline the bus had to
drop changes for rebuilds its pops from the model instead of losing them."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from callbridge.bus import Bus
from callbridge.captures import load_capture, load_messages
from callbridge.pops import PopPipeline
from cti.ami.codec import MessageReader
from cti.ami.message import Message
from cti.model import CallChanged, CallModel, CallState
from customers.sqlite_store import SQLiteStore
from screenpop import PopHub


def load_50() -> list[tuple[Message, float]]:
    return capture_messages("load_50")


def capture_messages(name: str) -> list[tuple[Message, float]]:
    times = [r["t"] for r in load_messages(name) if r["dir"] == "in" and "msg" in r]
    reader = MessageReader()
    messages = []
    for chunk in load_capture(name).chunks:
        if chunk.direction == "in" and chunk.data is not None:
            messages.extend(item for item in reader.feed(chunk.data) if isinstance(item, Message))
    return list(zip(messages, times, strict=True))


def pops_due(model: CallModel) -> set[tuple[str, str]]:
    """(call, agent) for every live call ringing at an agent or connected to one: what must show."""
    due = set()
    for call in model.live_calls():
        due.update((call.id, agent) for agent in call.ringing_agents)
        if call.agent is not None and call.state in (CallState.CONNECTED, CallState.HELD):
            due.add((call.id, call.agent))
    return due


async def test_after_dropped_changes_the_pops_are_rebuilt_from_the_model(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    bus, model, hub = Bus(), CallModel(), PopHub()
    events = load_50()
    async with SQLiteStore(tmp_path / "customers.db") as store:
        pipeline = PopPipeline(bus, store, hub, model=model, queue_size=16)
        await pipeline.start()
        try:
            # Half the traffic at once: far more changes than the pipeline's queue holds.
            half = len(events) // 2
            for msg, t in events[:half]:
                for change in model.apply(msg, t):
                    bus.publish(change)
            assert pops_due(model), "the cut must fall while calls ring or talk"
            with caplog.at_level(logging.WARNING, "callbridge.pops"):
                async with asyncio.timeout(10):
                    while {(c, a) for a in ("agent1", "agent2", "agent3", "agent4", "agent5")
                           for c in (p.split(":")[0] for p in hub.live(a))} != pops_due(model):  # fmt: skip
                        await asyncio.sleep(0.01)
            assert "pops resynced from the call model" in caplog.text
            # The rest at the pace of a live PBX: no more drops, every pop ends retracted.
            for msg, t in events[half:]:
                for change in model.apply(msg, t):
                    bus.publish(change)
                    if isinstance(change, CallChanged):
                        await asyncio.sleep(0)
            async with asyncio.timeout(10):
                while any(hub.live(f"agent{n}") for n in range(1, 6)) or pipeline.tracker.tracked_calls:
                    await asyncio.sleep(0.01)
        finally:
            await pipeline.stop()


async def feed(model: CallModel, bus: Bus, events: list[tuple[Message, float]]) -> None:
    for msg, t in events:
        for change in model.apply(msg, t):
            bus.publish(change)
    await asyncio.sleep(0.05)


async def test_the_caller_is_looked_up_when_the_call_arrives(tmp_path: Path) -> None:
    """Rule 5 wired: the lookup starts on the call's first change, before the queue rings
    anyone; the ring's pop takes it; a call that ends in the IVR, never ringing, lets its go."""
    bus, model, hub = Bus(), CallModel(), PopHub()
    async with SQLiteStore(tmp_path / "customers.db") as store:
        await store.create_customer("Jane Doe", identities=[("phone", "+14155550123")])
        pipeline = PopPipeline(bus, store, hub, model=model)
        await pipeline.start()
        try:
            events = capture_messages("queue_answered")
            ring = next(i for i, (msg, _) in enumerate(events) if msg.name == "AgentCalled")
            await feed(model, bus, events[:ring])
            assert pipeline.assembler.prefetched == 1
            await feed(model, bus, events[ring : ring + 1])
            assert hub.live("agent1")
            assert pipeline.assembler.prefetched == 0
            await feed(model, bus, events[ring + 1 :])
            events = capture_messages("ivr_agi_hangup")
            ended = next(i for i, (msg, _) in enumerate(events) if msg.name == "Hangup")
            await feed(model, bus, events[:ended])
            assert pipeline.assembler.prefetched == 1
            await feed(model, bus, events[ended:])
            assert not model.live_calls()
            assert pipeline.assembler.prefetched == 0
        finally:
            await pipeline.stop()
