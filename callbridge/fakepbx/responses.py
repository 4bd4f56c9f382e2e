"""Asterisk's answers to the actions the fake PBX does not model: taken from the captures.

Every capture holds the actions its client sent and Asterisk's responses to them. For an action
the fake PBX has no handler for, the response to the most similar captured action of the same
name is given back (most parameters equal; the first such one on a tie), with the client's
ActionID and with the client's values for the parameters Asterisk echoes (``ExtensionState``
echoes ``Exten`` and ``Context``): a header of the response is an echo when the captured action
had the same header with the same value.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from callbridge.captures import available_captures, load_capture
from cti.ami.codec import MessageReader
from cti.ami.message import Message, MessageKind

Pairs = list[tuple[str, str]]


class CapturedResponses:
    """Captured (action, response) pairs by lower-cased action name."""

    def __init__(self, pairs: Iterable[tuple[Message, Message]] = ()) -> None:
        self._by_name: dict[str, list[tuple[Message, Message]]] = {}
        for action, response in pairs:
            self._by_name.setdefault(action.name.lower(), []).append((action, response))

    @classmethod
    def from_captures(cls, names: Iterable[str] | None = None) -> CapturedResponses:
        """Read every capture found (``available_captures()``), or the ``names`` given."""
        found: list[tuple[Message, Message]] = []
        for name in available_captures() if names is None else names:
            capture = load_capture(name)
            actions: dict[str, Message] = {}
            for item in MessageReader(expect_banner=False).feed(capture.stream_out()):
                if isinstance(item, Message) and item.kind is MessageKind.ACTION and item.action_id:
                    actions[item.action_id] = item
            for item in MessageReader(expect_banner=True).feed(capture.stream_in()):
                if isinstance(item, Message) and item.kind is MessageKind.RESPONSE and item.action_id:
                    action = actions.get(item.action_id)
                    if action is not None and not _refusal(item):
                        found.append((action, item))
        return cls(found)

    def names(self) -> set[str]:
        return set(self._by_name)

    def answer(self, action: Message, *, require: Sequence[str] = ()) -> Pairs | None:
        """The response for ``action`` in Asterisk's layout, or None if no capture has one;
        ``require`` names parameters whose values must be the same in the captured action."""
        candidates = [
            (captured, response)
            for captured, response in self._by_name.get(action.name.lower(), [])
            if all((captured.get(key) or "").strip() == (action.get(key) or "").strip() for key in require)
        ]
        if not candidates:
            return None
        asked = {(k.lower(), v) for k, v in action.pairs if k.lower() not in ("action", "actionid")}
        best_action, best_response = max(
            candidates,
            key=lambda pair: len(asked & {(k.lower(), v) for k, v in pair[0].pairs}),
        )
        captured_params = {k.lower(): v for k, v in best_action.pairs}
        client_params = {k.lower(): v for k, v in action.pairs}
        action_id = action.action_id
        out: Pairs = []
        for key, value in best_response.pairs:
            lower = key.lower()
            if lower == "actionid":
                continue
            echoed = lower in client_params and captured_params.get(lower) == value
            out.append((key, client_params[lower] if echoed else value))
            if lower == "response" and action_id:
                out.append(("ActionID", action_id))
        return out


def _refusal(response: Message) -> bool:
    """Answers that say nothing about the action itself: it was unknown, or asked before login."""
    message = response.get("Message") or ""
    return message.startswith("Invalid/unknown command") or message == "Permission denied"
