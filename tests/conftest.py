from __future__ import annotations

import logging
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from callbridge.captures import LAB_FIXTURES
from cti.ami.client import AMIConfig

LAB_DIR = Path(os.environ.get("CALLBRIDGE_LAB_DIR", "~/.cache/callbridge/asterisk-lab")).expanduser()
REQUIRE_LAB = os.environ.get("CALLBRIDGE_REQUIRE_LAB") == "1"


def pytest_report_header() -> str:
    captures = os.environ.get("CALLBRIDGE_CAPTURES") or LAB_FIXTURES / "ami"
    return f"captures: {captures}; Asterisk lab: {LAB_DIR} ({'required' if REQUIRE_LAB else 'optional'})"


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """``callbridge.cli.main`` configures logging, as a program's main should; tests call it
    in-process, so each test gets back the logging it started with."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    levels = {name: logging.getLogger(name).level for name in ("cti.ami.wire", "cti", "callbridge")}
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, saved in levels.items():
        logging.getLogger(name).setLevel(saved)


@pytest.fixture
def unit() -> float:
    """Timeouts scale with CALLBRIDGE_TEST_TIMEOUT_UNIT on slow machines."""
    return float(os.environ.get("CALLBRIDGE_TEST_TIMEOUT_UNIT", "1"))


class Lab:
    """The real Asterisk 22 built by ../shared/asterisk-lab (AMI on 127.0.0.1:5038, lab/lab)."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory

    def sh(self, *args: str, timeout: float = 90) -> str:
        result = subprocess.run(
            [str(self.dir / "lab.sh"), *args], capture_output=True, text=True, timeout=timeout, check=False
        )
        if result.returncode != 0 and args[0] != "status":
            raise RuntimeError(f"lab.sh {' '.join(args)} failed: {result.stdout}{result.stderr}")
        return result.stdout

    def running(self) -> bool:
        return "running (pid" in self.sh("status")

    def cli(self, command: str) -> str:
        return self.sh("cli", command)

    def restart(self) -> None:
        self.sh("restart")

    def active_channels(self) -> int:
        out = self.cli("core show channels count")
        for line in out.splitlines():
            if "active channel" in line:
                return int(line.split()[0])
        return 0

    def wait_idle(self, timeout: float = 60) -> None:
        """Wait until no channel is up, so one test's calls do not leak into the next."""
        deadline = time.monotonic() + timeout
        while self.active_channels():
            if time.monotonic() > deadline:
                self.cli("channel request hangup all")
                time.sleep(1)
                return
            time.sleep(0.2)

    def ami_config(self, **overrides: object) -> AMIConfig:
        base = AMIConfig(
            host="127.0.0.1",
            port=5038,
            username="lab",
            secret="lab",
            auth="md5",
            backoff_initial=0.2,
            backoff_max=2.0,
            ping_interval=5.0,
        )
        return AMIConfig(**{**{f: getattr(base, f) for f in base.__dataclass_fields__}, **overrides})


@pytest.fixture(scope="session")
def lab() -> Iterator[Lab]:
    """The running lab Asterisk; started here if needed and stopped at the end if we started it.

    Missing lab: a failure when CALLBRIDGE_REQUIRE_LAB=1 (CI), a skip with the reason otherwise.
    """
    if not (LAB_DIR / "lab.sh").exists():
        reason = f"no Asterisk lab at {LAB_DIR}: run ../shared/asterisk-lab/build.sh (scripts/test.sh does)"
        if REQUIRE_LAB:
            pytest.fail(reason)
        pytest.skip(reason)
    instance = Lab(LAB_DIR)
    started = False
    if not instance.running():
        instance.sh("start")
        started = True
    instance.wait_idle()
    yield instance
    if started:
        instance.sh("stop")
