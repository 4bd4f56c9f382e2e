"""The service's log lines: the text format, and the call log's agent and queue lines."""

from __future__ import annotations

import io
import logging

from callbridge.captures import load_capture
from callbridge.cli import TextFormatter, setup_logging
from callbridge.console import ChangeLines, format_change
from callbridge.service import _log_change
from cti.ami.codec import MessageReader
from cti.ami.message import Message
from cti.model import AgentChanged, CallChanged, CallModel, ModelChange, QueueChanged


def record_at(created: float, message: str = "hello %s") -> logging.LogRecord:
    record = logging.LogRecord("callbridge.calls", logging.INFO, __file__, 1, message, ("x",), None)
    record.created = created
    record.msecs = (created - int(created)) * 1000
    return record


def test_the_text_format_is_the_standard_one_made_once_a_second() -> None:
    ours = TextFormatter()
    standard = logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    for created in (1796000000.0, 1796000000.0015, 1796000000.999, 1796000001.25, 1796000001.5, 1796086400.7):
        assert ours.format(record_at(created)) == standard.format(record_at(created))


def changes_of(name: str) -> list[ModelChange]:
    model, reader, changes = CallModel(), MessageReader(), []
    for chunk in load_capture(name).chunks:
        if chunk.direction == "in" and chunk.data is not None:
            for item in reader.feed(chunk.data):
                if isinstance(item, Message):
                    changes += model.apply(item, chunk.t)
    return changes


def test_the_call_log_has_every_call_change_and_no_agent_or_queue_line_twice() -> None:
    stream = io.StringIO()
    setup_logging("INFO", stream=stream)
    try:
        changes = changes_of("load_50")
        lines = ChangeLines()
        for change in changes:
            _log_change(change, lines)
    finally:
        logging.getLogger().handlers.clear()
    logged = [line.split(": ", 1)[1] for line in stream.getvalue().splitlines()]
    calls = [format_change(c) for c in changes if isinstance(c, CallChanged)]
    assert [line for line in logged if line.startswith("call ")] == calls
    others = [c for c in changes if isinstance(c, AgentChanged | QueueChanged)]
    shown = [line for line in logged if not line.startswith("call ")]
    assert 0 < len(shown) < len(others), "repeats are left out, changes are not"
    last: dict[str, str] = {}
    for line in shown:
        who, _, rest = line.partition("  ")
        says = rest.rsplit("  [", 1)[0]
        assert last.get(who) != says, f"{line!r} repeats the line before it"
        last[who] = says
    final = {c.agent.id: c.agent.status.value for c in others if isinstance(c, AgentChanged)}
    for agent, status in final.items():
        (who,) = [key for key in last if key == f"agent {agent}" or key.startswith(f"agent {agent} (")]
        assert last[who] == status, f"the log's last word on {agent} is {last[who]!r}, not {status!r}"
