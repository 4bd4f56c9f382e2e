#!/usr/bin/env bash
# Install everything the tests need on a fresh Debian machine with Python 3.11+, then run them:
# the real Asterisk 22 lab (built once, cached in ~/.cache/callbridge/asterisk-lab), a virtualenv
# with the test extra, ruff, and pytest with the lab-backed integration tests required.
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

step "Python environment: $VENV"
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q -e ".[test]"

step "ruff"
"$VENV/bin/ruff" check .
"$VENV/bin/ruff" format --check .

step "mypy (strict on cti/ and callbridge/)"
"$VENV/bin/mypy"

step "pytest (the real Asterisk is required: CALLBRIDGE_REQUIRE_LAB=1)"
export CALLBRIDGE_REQUIRE_LAB=1
"$VENV/bin/python" -m pytest "$@"
