"""Agent passwords (scrypt, salted, parameters in the string) and the in-memory session store."""

from __future__ import annotations

import base64
import hashlib

from screenpop.sessions import AgentAccount, SessionStore, hash_password, verify_password

FAST = {"n": 2**10}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_hash_verifies_and_is_salted() -> None:
    first = hash_password("correct horse")
    second = hash_password("correct horse")
    assert first != second
    assert verify_password("correct horse", first)
    assert verify_password("correct horse", second)
    assert not verify_password("correct hors", first)
    assert not verify_password("", first)
    assert "correct horse" not in first


def test_hash_carries_its_parameters() -> None:
    cheap = hash_password("pw", n=2**10, r=4, p=2)
    scheme, n, r, p, _salt, _digest = cheap.split("$")
    assert (scheme, n, r, p) == ("scrypt", "1024", "4", "2")
    assert verify_password("pw", cheap)
    default = hash_password("pw")
    assert default.split("$")[1:4] == ["16384", "8", "1"]


def test_hash_is_scrypt_of_the_salt() -> None:
    stored = hash_password("pw", **FAST)
    _, n, r, p, salt, digest = stored.split("$")
    expected = hashlib.scrypt(b"pw", salt=unb64(salt), n=int(n), r=int(r), p=int(p), dklen=32)
    assert unb64(digest) == expected
    assert len(unb64(salt)) == 16


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def test_malformed_hashes_never_match() -> None:
    for bad in (
        "",
        "scrypt$1$2",
        "bcrypt$1024$8$1$AAAA$BBBB",
        "scrypt$x$8$1$AAAA$BBBB",
        "scrypt$3$8$1$!!$??",
    ):
        assert not verify_password("pw", bad)


def store(clock: Clock, **kwargs: float) -> SessionStore:
    accounts = [
        AgentAccount("1001", "Alice", hash_password("alice-pw", **FAST)),
        AgentAccount("1002", "Bob", hash_password("bob-pw", **FAST)),
    ]
    return SessionStore(accounts, clock=clock, **kwargs)  # type: ignore[arg-type]


def test_login_issues_distinct_tokens_for_the_agent() -> None:
    clock = Clock()
    sessions = store(clock)
    a = sessions.login("1001", "alice-pw")
    b = sessions.login("1001", "alice-pw")
    assert a is not None and b is not None and a != b
    assert len(a) >= 43  # 32 random bytes, base64
    assert sessions.agent_for(a) == "1001"
    assert sessions.agent_for(b) == "1001"
    assert sessions.agent_for("forged") is None
    assert len(sessions) == 2


def test_unknown_agent_and_wrong_password_answer_alike() -> None:
    sessions = store(Clock())
    assert sessions.login("1001", "bob-pw") is None
    assert sessions.login("9999", "alice-pw") is None
    assert sessions.login("", "") is None
    assert len(sessions) == 0


def test_sessions_expire() -> None:
    clock = Clock()
    sessions = store(clock, ttl=60)
    token = sessions.login("1002", "bob-pw")
    assert token is not None
    clock.now += 59
    assert sessions.agent_for(token) == "1002"
    clock.now += 1
    assert sessions.agent_for(token) is None
    assert len(sessions) == 0


def test_logout_ends_only_that_session() -> None:
    sessions = store(Clock())
    a = sessions.login("1001", "alice-pw")
    b = sessions.login("1001", "alice-pw")
    assert a is not None and b is not None
    sessions.logout(a)
    sessions.logout(a)
    sessions.logout("never issued")
    assert sessions.agent_for(a) is None
    assert sessions.agent_for(b) == "1001"


def test_failed_logins_throttle_that_agent_only() -> None:
    clock = Clock()
    sessions = store(clock, max_failures=3, failure_window=60, lockout=120)
    for _ in range(3):
        assert sessions.login("1001", "guess") is None
        clock.now += 1
    # Locked: even the right password gets the same refusal.
    assert sessions.login("1001", "alice-pw") is None
    assert sessions.login("1002", "bob-pw") is not None
    clock.now += 120
    assert sessions.login("1001", "alice-pw") is not None


def test_failures_outside_the_window_do_not_add_up() -> None:
    clock = Clock()
    sessions = store(clock, max_failures=3, failure_window=60, lockout=120)
    for _ in range(5):
        assert sessions.login("1001", "guess") is None
        clock.now += 31
    assert sessions.login("1001", "alice-pw") is not None


def test_account_repr_hides_the_hash() -> None:
    account = AgentAccount("1001", "Alice", hash_password("alice-pw", **FAST))
    assert account.password_hash not in repr(account)


def test_removing_an_account_ends_its_sessions_and_its_logins_only() -> None:
    sessions = store(Clock())
    a = sessions.login("1001", "alice-pw")
    other = sessions.login("1002", "bob-pw")
    assert a is not None and other is not None
    assert sessions.remove_account("1001") == 1
    assert sessions.agent_for(a) is None and sessions.login("1001", "alice-pw") is None
    assert sessions.agent_for(other) == "1002"
    assert sessions.remove_account("1001") == 0
