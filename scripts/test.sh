#!/usr/bin/env bash
# Install everything the tests need on a fresh Debian machine with Python 3.11+, then run them:
# the real Asterisk 22 lab (built once, cached in ~/.cache/callbridge/asterisk-lab), Debian's
# chromium for the agent page tests, a virtualenv with the test extra, ruff, and pytest with the
# lab-backed and browser tests required. Screenshots and other artifacts go to test-artifacts/.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT="$PWD"
LAB_RECIPE="${CALLBRIDGE_LAB_RECIPE:-$ROOT/../shared/asterisk-lab}"
export CALLBRIDGE_LAB_DIR="${CALLBRIDGE_LAB_DIR:-$HOME/.cache/callbridge/asterisk-lab}"
VENV="${CALLBRIDGE_VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3}"

step() { printf '\n== %s (%s)\n' "$*" "$(date +%T)"; }

step "Asterisk lab: build or reuse $CALLBRIDGE_LAB_DIR"
if [ ! -x "$LAB_RECIPE/build.sh" ]; then
    echo "the Asterisk lab recipe is missing: $LAB_RECIPE/build.sh (set CALLBRIDGE_LAB_RECIPE)" >&2
    exit 1
fi
if [ -x "$CALLBRIDGE_LAB_DIR/lab.sh" ] && "$CALLBRIDGE_LAB_DIR/lab.sh" status >/dev/null 2>&1; then
    "$CALLBRIDGE_LAB_DIR/lab.sh" stop
fi
"$LAB_RECIPE/build.sh" "$CALLBRIDGE_LAB_DIR"

step "Chromium for the agent page tests"
if command -v chromium >/dev/null 2>&1; then
    echo "already installed: $(command -v chromium)"
else
    SUDO=""
    if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1; then SUDO="sudo"; fi
    # No recommends (avahi, cups, upower...): headless Chromium needs its Depends and fonts only.
    # A failed install does not stop the run: the browser tests then fail saying chromium is missing.
    if ! { $SUDO apt-get update -q \
        && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
            chromium fonts-liberation fonts-dejavu-core; }; then
        echo "could not install chromium with apt-get; the browser tests will fail" >&2
    fi
fi
export CALLBRIDGE_ARTIFACTS="${CALLBRIDGE_ARTIFACTS:-$ROOT/test-artifacts}"
mkdir -p "$CALLBRIDGE_ARTIFACTS"

step "Python environment: $VENV"
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q -e ".[test]"

step "ruff"
"$VENV/bin/ruff" check .
"$VENV/bin/ruff" format --check .

step "mypy (strict on cti/ and callbridge/)"
"$VENV/bin/mypy"

step "pytest (the real Asterisk and Chromium are required: CALLBRIDGE_REQUIRE_LAB=1, CALLBRIDGE_REQUIRE_BROWSER=1)"
export CALLBRIDGE_REQUIRE_LAB=1
export CALLBRIDGE_REQUIRE_BROWSER=1
"$VENV/bin/python" -m pytest "$@"
