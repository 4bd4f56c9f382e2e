"""The one error shape of the agent page's actions: an HTTP status, a stable kebab-case ``code``,
a message, and the body ``field`` it is about. ``screenpop.actions`` answers every ``Refusal``
as ``{"error": {"code", "message", "field"}}``."""

from __future__ import annotations


class Refusal(Exception):
    def __init__(self, status: int, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field
