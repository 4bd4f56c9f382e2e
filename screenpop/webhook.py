"""Signed outbound webhooks: each pop, update, retract and wrap-up POSTed to other systems.

``Webhooks(settings).publish(event, data)`` never awaits: it puts one delivery on the bounded
queue of every hook that subscribes to ``event``. Each hook has its own sender task and so
cannot delay another hook, nor the pop on its way to the agent.

Rules:

Rule 1 (request). ``POST`` of the JSON body ``{"event", "delivery_id", "occurred_at", "data"}``
        with ``Content-Type: application/json`` and the headers ``X-Callbridge-Event``,
        ``X-Callbridge-Delivery`` (the same on every attempt: receivers de-duplicate on it),
        ``X-Callbridge-Timestamp`` (Unix seconds of this attempt) and ``X-Callbridge-Signature``
        (``sha256=`` and the hex HMAC-SHA256 of ``"<timestamp>.<body>"`` keyed with the secret).
        The body bytes are the same on every attempt; the timestamp and signature are not.
Rule 2 (retry). Connection errors, timeouts, 5xx and 429 are retried after
        ``retry_delay(attempt)``: ``backoff_initial * 2 ** (attempt - 1)`` capped at
        ``backoff_max``, then jittered down to between half and all of it. A 429 or 503 with
        ``Retry-After`` waits that long instead, capped at ``backoff_max``. After
        ``max_attempts`` the delivery is logged and dropped. Any other status below 200 or from
        300 up is the receiver refusing it: logged, never retried. 2xx is delivered.
Rule 3 (order and memory). A hook delivers one at a time, in publish order; a delivery being
        retried holds back the ones behind it. The queue holds ``max_queue`` deliveries; a
        full queue drops the oldest and counts it in ``dropped``.
"""

from __future__ import annotations

import asyncio
import email.utils
import hashlib
import hmac
import json
import logging
import random
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol

import aiohttp
from yarl import URL

__all__ = [
    "EVENTS",
    "Delivery",
    "HookConfig",
    "HookStats",
    "Webhooks",
    "parse_retry_after",
    "retry_delay",
    "sign",
    "verify",
]

log = logging.getLogger(__name__)

EVENTS: Final = frozenset({"pop", "update", "retract", "wrapup"})
_USER_AGENT: Final = "callbridge-webhooks/1"


class HookConfig(Protocol):
    """One receiver's settings (``callbridge.settings.WebhookSettings``)."""

    @property
    def url(self) -> str: ...
    @property
    def secret(self) -> str: ...
    @property
    def events(self) -> Sequence[str]: ...
    @property
    def timeout(self) -> float: ...
    @property
    def max_attempts(self) -> int: ...
    @property
    def backoff_initial(self) -> float: ...
    @property
    def backoff_max(self) -> float: ...


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The ``X-Callbridge-Signature`` value for ``body`` sent at ``timestamp`` (Rule 1)."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify(secret: str, timestamp: str, body: bytes, signature: str) -> bool:
    """What a receiver checks (constant-time); docs/webhooks.md has the same for other systems."""
    return hmac.compare_digest(sign(secret, timestamp, body), signature)


def retry_delay(
    attempt: int, initial: float, maximum: float, *, rng: Callable[[], float] = random.random
) -> float:
    """Seconds to wait after failed ``attempt`` (1-based): exponential, capped, jittered (Rule 2)."""
    ceiling = min(maximum, initial * 2.0 ** (attempt - 1))
    return ceiling * (0.5 + 0.5 * rng())


def parse_retry_after(value: str | None, now: float) -> float | None:
    """``Retry-After`` as seconds from ``now``: delta-seconds or an HTTP date; ``None`` if absent
    or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - now)


def retryable(status: int) -> bool:
    return status == 429 or status >= 500


@dataclass(frozen=True, slots=True)
class Delivery:
    event: str
    delivery_id: str
    body: bytes


@dataclass(frozen=True, slots=True)
class HookStats:
    url: str
    queued: int
    delivered: int
    failed: int
    """Given up: refused (4xx) or out of attempts."""
    dropped: int
    """Pushed out of a full queue before they were sent."""
    retries: int


class _Hook:
    """One receiver: its bounded queue and its sender task."""

    def __init__(
        self, settings: HookConfig, max_queue: int, rng: Callable[[], float], clock: Callable[[], float]
    ) -> None:
        self.settings = settings
        self.events = frozenset(settings.events)
        self._queue: deque[Delivery] = deque()
        self._max_queue = max_queue
        self._wakeup = asyncio.Event()
        self._rng = rng
        self._clock = clock
        self._task: asyncio.Task[None] | None = None
        self.delivered = 0
        self.failed = 0
        self.dropped = 0
        self.retries = 0

    def stats(self) -> HookStats:
        return HookStats(
            _redacted_url(self.settings.url),
            len(self._queue),
            self.delivered,
            self.failed,
            self.dropped,
            self.retries,
        )

    def enqueue(self, delivery: Delivery) -> None:
        if len(self._queue) >= self._max_queue:
            lost = self._queue.popleft()
            self.dropped += 1
            log.warning(
                "webhook %s: queue full, %s delivery %s dropped (%d so far)",
                _redacted_url(self.settings.url),
                lost.event,
                lost.delivery_id,
                self.dropped,
            )
        self._queue.append(delivery)
        self._wakeup.set()

    def start(self, session: aiohttp.ClientSession) -> None:
        name = f"webhook {_redacted_url(self.settings.url)}"
        self._task = asyncio.create_task(self._run(session), name=name)

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        if self._queue:
            log.warning(
                "webhook %s: %d deliveries not sent at shutdown",
                _redacted_url(self.settings.url),
                len(self._queue),
            )

    async def _run(self, session: aiohttp.ClientSession) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._queue:
                await self._deliver(session, self._queue.popleft())

    async def _deliver(self, session: aiohttp.ClientSession, delivery: Delivery) -> None:
        hook = self.settings
        url = _redacted_url(hook.url)
        for attempt in range(1, hook.max_attempts + 1):
            timestamp = str(int(self._clock()))
            headers = {
                "Content-Type": "application/json",
                "User-Agent": _USER_AGENT,
                "X-Callbridge-Event": delivery.event,
                "X-Callbridge-Delivery": delivery.delivery_id,
                "X-Callbridge-Timestamp": timestamp,
                "X-Callbridge-Signature": sign(hook.secret, timestamp, delivery.body),
            }
            wait: float | None = None
            try:
                async with session.post(
                    hook.url,
                    data=delivery.body,
                    headers=headers,
                    timeout=aiohttp.ClientTimeout(total=hook.timeout),
                    allow_redirects=False,
                ) as response:
                    status = response.status
                    if 200 <= status < 300:
                        self.delivered += 1
                        return
                    if not retryable(status):
                        self.failed += 1
                        log.warning(
                            "webhook %s: %s delivery %s refused with HTTP %d; not retried",
                            url,
                            delivery.event,
                            delivery.delivery_id,
                            status,
                        )
                        return
                    problem = f"HTTP {status}"
                    if status in (429, 503):
                        wait = parse_retry_after(response.headers.get("Retry-After"), time.time())
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                problem = _describe(exc)
            if attempt == hook.max_attempts:
                break
            if wait is None:
                wait = retry_delay(attempt, hook.backoff_initial, hook.backoff_max, rng=self._rng)
            wait = min(wait, hook.backoff_max)
            self.retries += 1
            log.info(
                "webhook %s: %s delivery %s attempt %d failed (%s); retry in %.2fs",
                url,
                delivery.event,
                delivery.delivery_id,
                attempt,
                problem,
                wait,
            )
            await asyncio.sleep(wait)
        self.failed += 1
        log.error(
            "webhook %s: %s delivery %s dropped after %d attempts (%s)",
            url,
            delivery.event,
            delivery.delivery_id,
            hook.max_attempts,
            problem,
        )


class Webhooks:
    """Every configured hook; ``start``/``stop`` own the HTTP client session and the senders."""

    def __init__(
        self,
        hooks: Sequence[HookConfig],
        *,
        max_queue: int = 1000,
        rng: Callable[[], float] = random.random,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if max_queue < 1:
            raise ValueError(f"max_queue: expected at least 1, got {max_queue}")
        self._hooks = [_Hook(hook, max_queue, rng, clock) for hook in hooks]
        self._clock = clock
        self._session: aiohttp.ClientSession | None = None

    def __len__(self) -> int:
        return len(self._hooks)

    def stats(self) -> list[HookStats]:
        return [hook.stats() for hook in self._hooks]

    def wants(self, event: str) -> bool:
        return any(event in hook.events for hook in self._hooks)

    def publish(self, event: str, data: Mapping[str, Any]) -> str | None:
        """Queue ``data`` for every hook subscribed to ``event``; never waits. Returns the
        delivery id, or ``None`` when no hook wants the event. A body that is not JSON-able
        raises here, in the caller, not in a sender."""
        if event not in EVENTS:
            raise ValueError(f"unknown webhook event {event!r}")
        targets = [hook for hook in self._hooks if event in hook.events]
        if not targets:
            return None
        delivery_id = str(uuid.uuid4())
        body = json.dumps(
            {"event": event, "delivery_id": delivery_id, "occurred_at": self._clock(), "data": data},
            separators=(",", ":"),
            ensure_ascii=False,
            allow_nan=False,
        ).encode()
        delivery = Delivery(event, delivery_id, body)
        for hook in targets:
            hook.enqueue(delivery)
        return delivery_id

    async def start(self) -> None:
        if not self._hooks or self._session is not None:
            return
        self._session = aiohttp.ClientSession()
        for hook in self._hooks:
            hook.start(self._session)

    async def stop(self) -> None:
        for hook in self._hooks:
            await hook.stop()
        session, self._session = self._session, None
        if session is not None:
            await session.close()


def _redacted_url(url: str) -> str:
    """The URL without user info or query: either may carry a token."""
    try:
        parsed = URL(url)
    except ValueError:
        return "<invalid url>"
    return str(parsed.with_user(None).with_query(None))


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
