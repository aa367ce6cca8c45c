#!/usr/bin/env bash
# Create ./.venv with the project installed. Usage: scripts/bootstrap.sh [EXTRAS]   (e.g. "dev")
# Idempotent: re-running only installs what changed. Works on a fresh Debian/Ubuntu with Python 3.10-3.12.
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS="${1:-}"
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv || { echo "error: '$PY -m venv' failed; install python3-venv (apt-get install python3-venv)" >&2; exit 1; }
fi
SPEC="."
[ -n "$EXTRAS" ] && SPEC=".[$EXTRAS]"
stamp=".venv/.installed-$(cat setup.cfg pyproject.toml scripts/constraints.txt | sha256sum | cut -c1-16)-${EXTRAS:-runtime}"
if [ ! -f "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null
  .venv/bin/python -m pip install -q -c scripts/constraints.txt -e "$SPEC"
  touch "$stamp"
fi
