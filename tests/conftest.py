from __future__ import annotations

import os

import pytest

from callbridge.captures import LAB_FIXTURES


def pytest_report_header() -> str:
    return f"captures: {os.environ.get('CALLBRIDGE_CAPTURES') or LAB_FIXTURES / 'ami'}"


@pytest.fixture
def unit() -> float:
    """Timeouts scale with CALLBRIDGE_TEST_TIMEOUT_UNIT on slow machines."""
    return float(os.environ.get("CALLBRIDGE_TEST_TIMEOUT_UNIT", "1"))
