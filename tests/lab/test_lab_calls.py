"""Against the real Asterisk 22 from ../shared/asterisk-lab: the model follows real calls live.

Calls are driven as the fixtures' README says they were captured: AMI ``Originate`` of
``Local/pstn@callers`` into ``from-pstn`` DIDs (queues), into ``direct`` extensions (direct dial,
hold, transfer), and of ``Local/<number>@customers`` for outbound. The service under test is the
one ``callbridge serve`` runs (``callbridge.service.Service``), with the repository's settings.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from callbridge.service import Service
from callbridge.settings import load_settings
from cti.asterisk import PBXDisconnected, PBXResynced
from cti.model import AgentChanged, CallChanged, CallState
from tests.support import call_in, until

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.lab


@pytest.fixture
async def service(lab: Any) -> AsyncIterator[Service]:
    lab.wait_idle()
    settings = load_settings(ROOT / "config" / "callbridge.yaml", environ={})
    svc = Service(dataclasses.replace(settings, ami=lab.ami_config()), web=False)
    ready = svc.bus.subscribe(PBXResynced, name="test-ready")
    async with svc:
        async with asyncio.timeout(15):
            await ready.get()
        ready.close()
        yield svc
    lab.wait_idle()


async def originate(
    svc: Service, channel: str, context: str, exten: str, caller: str, *variables: str
) -> None:
    result = await svc.client.send_action(
        "Originate",
        {
            "Channel": channel,
            "Context": context,
            "Exten": exten,
            "Priority": "1",
            "Timeout": "30000",
            "CallerID": caller,
            "Variable": list(variables),
            "Async": "true",
        },
    )
    assert result.ok, result.message


async def test_queue_call_is_followed_from_queued_to_ended(service: Service) -> None:
    sub = service.bus.subscribe(CallChanged, name="test")
    await originate(
        service, "Local/pstn@callers", "from-pstn", "8005550100", '"Jane Doe" <+14155550123>', "CALLER_HOLD=5"
    )
    queued = (await until(sub, call_in(CallState.QUEUED, queue="support")))[-1].call
    assert queued.caller_num == "+14155550123" and queued.caller_name == "Jane Doe"
    assert queued.dialed == "8005550100"
    ringing = (await until(sub, call_in(CallState.RINGING, id=queued.id)))[-1].call
    assert ringing.agent in ("agent1", "agent2")  # support is rrmemory over agent1, agent2
    connected = (await until(sub, call_in(CallState.CONNECTED, id=queued.id)))[-1].call
    assert connected.agent == ringing.agent and connected.queue == "support"
    agent = service.model.agent(connected.agent)
    assert agent is not None
    assert agent.status.value == "on_call"
    ended = (await until(sub, call_in(CallState.ENDED, id=queued.id)))[-1].call
    assert ended.hangup_cause == 16
    assert queued.id not in {c.id for c in service.model.live_calls()}


async def test_abandoned_call_in_a_queue_with_its_only_agent_paused(service: Service) -> None:
    client = service.client
    pause = await client.send_action(
        "QueuePause",
        {
            "Queue": "billing",
            "Interface": "Local/agent5@agents/n",
            "Paused": "true",
            "Reason": "Lunch break",
        },
    )
    assert pause.ok
    sub = service.bus.subscribe(CallChanged, name="test")
    try:
        await asyncio.sleep(0.2)
        agent5 = service.model.agent("agent5")
        assert agent5 is not None
        assert agent5.status.value == "paused" and agent5.paused_reason == "Lunch break"
        await originate(
            service,
            "Local/pstn@callers",
            "from-pstn",
            "8005550102",
            '"Maria Garcia" <+12125550147>',
            "CALLER_HOLD=3",
        )
        queued = (await until(sub, call_in(CallState.QUEUED, queue="billing")))[-1].call
        ended = (await until(sub, call_in(CallState.ENDED, id=queued.id)))[-1].call
        assert ended.abandoned and ended.agent is None
    finally:
        await client.send_action(
            "QueuePause", {"Queue": "billing", "Interface": "Local/agent5@agents/n", "Paused": "false"}
        )


async def test_hold_and_direct_dial(service: Service) -> None:
    sub = service.bus.subscribe(CallChanged, name="test")
    await originate(service, "Local/pstn@callers", "direct", "2003", '"Reception" <100>', "CALLER_HOLD=12")
    connected = (await until(sub, call_in(CallState.CONNECTED)))[-1].call
    assert connected.agent == "agent1" and connected.caller_num == "4155550123"
    held = (await until(sub, call_in(CallState.HELD, id=connected.id)))[-1].call
    assert held.agent == "agent1"
    await until(sub, call_in(CallState.CONNECTED, id=connected.id))
    ended = (await until(sub, call_in(CallState.ENDED, id=connected.id)))[-1].call
    assert ended.hangup_cause == 16


async def test_redirect_transfers_the_caller_to_another_agent(service: Service) -> None:
    sub = service.bus.subscribe(CallChanged, name="test")
    await originate(
        service, "Local/pstn@callers", "direct", "2000", '"Wei Chen" <+13125550188>', "CALLER_HOLD=12"
    )
    first = (await until(sub, call_in(CallState.CONNECTED, agent="agent1")))[-1].call
    caller_leg = next(
        leg.channel for leg in first.legs if leg.channel.endswith(";1") and "callers" in leg.channel
    )
    redirect = await service.client.send_action(
        "Redirect", {"Channel": caller_leg, "Context": "direct", "Exten": "2002", "Priority": "1"}
    )
    assert redirect.ok, redirect.message
    second = (await until(sub, call_in(CallState.CONNECTED, id=first.id, agent="agent2")))[-1].call
    assert second.transfers and second.transfers[-1].from_agent == "agent1"
    assert second.transfers[-1].to_agent == "agent2"
    await until(sub, call_in(CallState.ENDED, id=first.id))


async def test_outbound_busy_ends_with_cause_17(service: Service) -> None:
    sub = service.bus.subscribe(CallChanged, name="test")
    await originate(
        service,
        "Local/+14155550144@customers",
        "dialer-connect",
        "support",
        '"Acme Insurance" <8005550100>',
        "__CAMPAIGN_ID=renewals-q3",
        "__CUSTOMER_ID=C-100044",
    )
    ended = (await until(sub, call_in(CallState.ENDED)))[-1].call
    assert ended.hangup_cause == 17
    assert ended.variables.get("CAMPAIGN_ID") == "renewals-q3"


async def test_pbx_restart_reconnects_resyncs_and_leaves_no_ghost_calls(service: Service, lab: Any) -> None:
    sub = service.bus.subscribe(name="test")
    await originate(
        service,
        "Local/pstn@callers",
        "from-pstn",
        "8005550100",
        '"Jane Doe" <+14155550123>',
        "CALLER_HOLD=120",
    )
    connected = (await until(sub, call_in(CallState.CONNECTED)))[-1].call
    assert service.model.live_calls()
    session = service.client.session
    await asyncio.to_thread(lab.restart)
    taken = await until(sub, lambda e: isinstance(e, PBXResynced) and e.session > session, timeout=40)
    assert any(isinstance(e, PBXDisconnected) for e in taken)
    resynced = taken[-1]
    ended = [e for e in taken if call_in(CallState.ENDED, id=connected.id)(e)]
    assert ended, "the call that died with the PBX was not ended"
    assert resynced.calls == 0 and service.model.live_calls() == []
    assert resynced.queues >= 4 and service.model.queue("support") is not None
    assert service.client.session == session + 1


def test_ami_tail_prints_events_and_call_states(lab: Any) -> None:
    """The operator's tool, as a subprocess, while a real call goes through a queue."""
    lab.wait_idle()
    env = os.environ | {"PYTHONPATH": str(ROOT)}
    tail = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "callbridge",
            "-c",
            str(ROOT / "config/callbridge.yaml"),
            "ami",
            "tail",
            "--duration",
            "12",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
    )

    async def drive() -> None:
        from cti.ami.client import AMIClient

        await asyncio.sleep(2)
        async with AMIClient(lab.ami_config()) as client:
            async with asyncio.timeout(5):
                await client.wait_connected()
            result = await client.send_action(
                "Originate",
                {
                    "Channel": "Local/pstn@callers",
                    "Context": "from-pstn",
                    "Exten": "8005550101",
                    "Priority": "1",
                    "CallerID": '"John Smith" <4155550123>',
                    "Variable": "CALLER_HOLD=4",
                    "Async": "true",
                },
            )
            assert result.ok

    asyncio.run(drive())
    out, err = tail.communicate(timeout=30)
    assert tail.returncode == 0, err
    assert "QueueCallerJoin" in out and "Queue=sales" in out
    assert "queued" in out and "4155550123" in out
    lab.wait_idle()


def test_ami_tail_says_when_the_login_is_refused(lab: Any) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "callbridge",
            "ami",
            "tail",
            "--secret",
            "wrong-secret",
            "--auth",
            "plain",
            "--duration",
            "5",
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
        env=os.environ | {"PYTHONPATH": str(ROOT)},
    )
    assert result.returncode == 3
    assert "login refused by 127.0.0.1:5038: Authentication failed" in result.stderr
    assert "wrong-secret" not in result.stderr + result.stdout


async def test_wrap_up_after_a_queue_call_then_ready(service: Service) -> None:
    """callcenter has wrapuptime=1 in the lab's queues.conf, declared in config/callbridge.yaml."""
    sub = service.bus.subscribe(name="test")
    await originate(
        service, "Local/pstn@callers", "from-pstn", "8005550103", '"Jane Doe" <+14155550123>', "CALLER_HOLD=4"
    )
    connected = (await until(sub, call_in(CallState.CONNECTED, queue="callcenter")))[-1].call
    agent_id = connected.agent
    assert agent_id in {"agent1", "agent2", "agent3", "agent4", "agent5"}

    def agent_is(status: str) -> Callable[[Any], bool]:
        return lambda e: (
            isinstance(e, AgentChanged) and e.agent.id == agent_id and e.agent.status.value == status
        )

    wrap = (await until(sub, agent_is("wrap_up")))[-1].agent
    ready = (await until(sub, agent_is("ready"), timeout=5))[-1]
    assert wrap.status.value == "wrap_up" and ready.agent.status.value == "ready"


async def test_the_shipped_event_filter_keeps_varset_away_and_the_call_model_whole(lab: Any) -> None:
    """The settings' ``ami.event_filters`` (``!Event: VarSet``) on the real Asterisk: the PBX stops
    sending VarSet, and a queue call is still followed from queued to ended."""
    from cti.ami.message import Message

    lab.wait_idle()
    settings = load_settings(ROOT / "config" / "callbridge.yaml", environ={})
    assert settings.ami.event_filters == ("!Event: VarSet",)
    ami = lab.ami_config(event_filters=settings.ami.event_filters)
    svc = Service(dataclasses.replace(settings, ami=ami), web=False)
    names: list[str] = []
    svc.client.add_listener(lambda m: names.append(m.name) if isinstance(m, Message) else None)
    ready = svc.bus.subscribe(PBXResynced, name="test-ready")
    sub = svc.bus.subscribe(CallChanged, name="test")
    async with svc:
        async with asyncio.timeout(15):
            await ready.get()
        await originate(
            svc, "Local/pstn@callers", "from-pstn", "8005550100", '"Jane Doe" <+14155550123>', "CALLER_HOLD=3"
        )
        queued = (await until(sub, call_in(CallState.QUEUED, queue="support")))[-1].call
        await until(sub, call_in(CallState.CONNECTED, id=queued.id))
        ended = (await until(sub, call_in(CallState.ENDED, id=queued.id), timeout=20))[-1].call
    lab.wait_idle()
    assert ended.hangup_cause == 16
    assert "VarSet" not in names and {"AgentCalled", "Newchannel", "Hangup"} <= set(names)
