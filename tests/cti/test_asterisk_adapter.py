"""The Asterisk adapter when the resync after a connect does not get its answers."""

from __future__ import annotations

import logging

import pytest

from callbridge.bus import Bus
from cti.ami import format_pairs
from cti.ami.client import AMIClient, AMIConfig
from cti.asterisk import AsteriskCTI
from cti.model import CallChanged, CallModel, CallState
from tests.ami_peer import SECRET, Peer, peer_server
from tests.support import until

NEWCHANNEL = format_pairs(
    {
        "Event": "Newchannel", "Privilege": "call,all", "Channel": "Local/pstn@callers-00000000;1",
        "ChannelState": "4", "ChannelStateDesc": "Ring", "CallerIDNum": "+14155550123",
        "CallerIDName": "Jane Doe", "ConnectedLineNum": "<unknown>", "ConnectedLineName": "<unknown>",
        "Language": "en", "AccountCode": "", "Context": "from-pstn", "Exten": "8005550100", "Priority": "1",
        "Uniqueid": "1795581569.0", "Linkedid": "1795581569.0",
    }.items()
)  # fmt: skip


async def test_events_held_during_a_failed_resync_are_applied_not_lost(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def handler(peer: Peer) -> None:
        assert await peer.login()
        action = await peer.action()
        assert action.name == "CoreShowChannels"  # never answered: the resync times out
        peer.send(NEWCHANNEL)
        while True:
            await peer.action()

    caplog.set_level(logging.WARNING)
    async with peer_server(handler) as (port, _):
        config = AMIConfig(port=port, username="cb", secret=SECRET, ping_interval=0, action_timeout=0.3)
        bus = Bus()
        sub = bus.subscribe(CallChanged)
        adapter = AsteriskCTI(AMIClient(config), CallModel(), bus.publish)
        await adapter.start()
        try:
            taken = await until(sub, lambda e: e.call.state is not CallState.ENDED, timeout=5)
        finally:
            await adapter.stop()
    call = taken[-1].call
    assert (call.id, call.caller_num, call.caller_name) == ("1795581569.0", "+14155550123", "Jane Doe")
    assert (
        "resync after connect failed: CoreShowChannels (ActionID cb-3): no answer from the PBX" in caplog.text
    )
