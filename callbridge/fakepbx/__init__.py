"""A fake Asterisk for tests and the demo: an AMI server on loopback replaying real captures.

``FakePBX`` is the server (``server.py``); ``script.py`` turns a capture into timed writes,
``state.py`` keeps the channels and queues those writes describe, ``responses.py`` answers the
actions it does not model with what Asterisk answered in the captures.
"""

from callbridge.fakepbx.server import BANNER, FakePBX, parse_event_mask
from callbridge.fakepbx.state import PBXState, QueueConfig, parse_queues_conf

__all__ = ["BANNER", "FakePBX", "PBXState", "QueueConfig", "parse_event_mask", "parse_queues_conf"]
