"""Agent credentials and login sessions (in memory).

Passwords are kept only as ``hash_password`` strings: scrypt with a random 16-byte salt, the cost
parameters written into the string (``scrypt$n$r$p$salt$hash``, base64 without padding) so they
can be raised later without invalidating old hashes. ``verify_password`` compares in constant time.

``SessionStore.login`` gives the same answer (``None``) for an unknown agent, a wrong password and
a throttled agent, and spends the same scrypt work on each, so a caller cannot tell which agent
ids exist. After ``max_failures`` failed logins within ``failure_window`` seconds an agent id is
refused for ``lockout`` seconds, even with the right password. Tokens are
``secrets.token_urlsafe(32)`` and expire ``ttl`` seconds after login.

The store is thread-safe, so that ``login`` (tens of ms of scrypt) can run in a worker thread
while the event loop keeps looking sessions up: the hashing is done outside the lock.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import secrets
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

__all__ = ["AgentAccount", "SessionStore", "hash_password", "verify_password"]

logger = logging.getLogger(__name__)

_SCHEME = "scrypt"
_N, _R, _P = 2**14, 8, 1
_DKLEN = 32
_SALT_BYTES = 16
# OpenSSL refuses scrypt above its default 32 MiB limit; n=2**14, r=8 needs 16 MiB.
_MAXMEM = 64 * 1024 * 1024


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def hash_password(password: str, *, n: int = _N, r: int = _R, p: int = _P) -> str:
    """A salted scrypt hash of ``password``, with its parameters: ``scrypt$n$r$p$salt$hash``."""
    salt = secrets.token_bytes(_SALT_BYTES)
    digest = hashlib.scrypt(password.encode("utf-8"), salt=salt, n=n, r=r, p=p, maxmem=_MAXMEM, dklen=_DKLEN)
    return f"{_SCHEME}${n}${r}${p}${_b64(salt)}${_b64(digest)}"


def verify_password(password: str, password_hash: str) -> bool:
    """Whether ``password`` matches ``password_hash``; a malformed hash never matches."""
    try:
        scheme, n, r, p, salt, expected = password_hash.split("$")
        if scheme != _SCHEME:
            return False
        want = _unb64(expected)
        got = hashlib.scrypt(
            password.encode("utf-8"),
            salt=_unb64(salt),
            n=int(n),
            r=int(r),
            p=int(p),
            maxmem=_MAXMEM,
            dklen=len(want),
        )
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, want)


@dataclass(frozen=True, slots=True)
class AgentAccount:
    id: str
    name: str
    password_hash: str

    def __repr__(self) -> str:
        return f"AgentAccount(id={self.id!r}, name={self.name!r})"


@dataclass(slots=True)
class _Session:
    agent_id: str
    expires_at: float


@dataclass(slots=True)
class _Failures:
    times: list[float] = field(default_factory=list)
    locked_until: float = 0.0


class SessionStore:
    """Agents' login sessions: tokens issued by ``login``, looked up by ``agent_for``."""

    def __init__(
        self,
        accounts: Iterable[AgentAccount] = (),
        *,
        ttl: float = 12 * 3600,
        max_failures: int = 5,
        failure_window: float = 300.0,
        lockout: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._accounts = {account.id: account for account in accounts}
        self._sessions: dict[str, _Session] = {}
        self._failures: dict[str, _Failures] = {}
        self._ttl = ttl
        self._max_failures = max_failures
        self._failure_window = failure_window
        self._lockout = lockout
        self._clock = clock
        self._lock = threading.Lock()
        # Unknown agents are checked against this, so they cost the same scrypt work as known ones.
        self._decoy_hash = hash_password(secrets.token_urlsafe(16))

    def add_account(self, account: AgentAccount) -> None:
        """Add an agent or replace its account (a new password); live sessions stay."""
        self._accounts[account.id] = account

    def remove_account(self, agent_id: str) -> int:
        """The agent can no longer log in, and its sessions end now (the hub closes their
        sockets at its next session check). Returns the number of sessions ended."""
        with self._lock:
            self._accounts.pop(agent_id, None)
            tokens = [token for token, s in self._sessions.items() if s.agent_id == agent_id]
            for token in tokens:
                del self._sessions[token]
        if tokens:
            logger.info("agent sessions ended: account removed", extra={"agent_id": agent_id})
        return len(tokens)

    def account(self, agent_id: str) -> AgentAccount | None:
        return self._accounts.get(agent_id)

    def __len__(self) -> int:
        """Sessions not yet expired."""
        with self._lock:
            self._prune()
            return len(self._sessions)

    def login(self, agent_id: str, password: str) -> str | None:
        """A new session token, or ``None`` (unknown agent, wrong password, or throttled)."""
        account = self._accounts.get(agent_id)
        ok = verify_password(password, account.password_hash if account else self._decoy_hash)
        with self._lock:
            now = self._clock()
            failures = self._failures.get(agent_id)
            if failures is not None and failures.locked_until > now:
                logger.info("agent login refused: throttled", extra={"agent_id": agent_id})
                return None
            if not ok or account is None:
                self._record_failure(agent_id, now)
                logger.info("agent login failed", extra={"agent_id": agent_id})
                return None
            self._failures.pop(agent_id, None)
            self._prune()
            token = secrets.token_urlsafe(32)
            self._sessions[token] = _Session(agent_id, now + self._ttl)
        logger.info("agent logged in", extra={"agent_id": agent_id})
        return token

    def agent_for(self, token: str) -> str | None:
        """The agent a live session token belongs to, else ``None``."""
        with self._lock:
            session = self._sessions.get(token)
            if session is None:
                return None
            if session.expires_at <= self._clock():
                del self._sessions[token]
                return None
            return session.agent_id

    def logout(self, token: str) -> None:
        with self._lock:
            session = self._sessions.pop(token, None)
        if session is not None:
            logger.info("agent logged out", extra={"agent_id": session.agent_id})

    def _record_failure(self, agent_id: str, now: float) -> None:
        failures = self._failures.setdefault(agent_id, _Failures())
        failures.times = [t for t in failures.times if t > now - self._failure_window]
        failures.times.append(now)
        if len(failures.times) >= self._max_failures:
            failures.locked_until = now + self._lockout
            failures.times.clear()
        # Failures are recorded for any id tried, known or not; drop the stale ones so guessed
        # ids cannot grow this without bound.
        if len(self._failures) > 10_000:
            self._failures = {
                key: f
                for key, f in self._failures.items()
                if f.locked_until > now or any(t > now - self._failure_window for t in f.times)
            }

    def _prune(self) -> None:
        """Drop expired sessions; the caller holds the lock."""
        now = self._clock()
        expired = [token for token, s in self._sessions.items() if s.expires_at <= now]
        for token in expired:
            del self._sessions[token]
