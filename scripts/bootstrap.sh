#!/usr/bin/env bash
# Create ./.venv with the project installed (editable). Usage: scripts/bootstrap.sh [EXTRAS]
#   (none)  the edge runtime: OpenVINO, no torch, no demo broker
#   demo    + the embedded MQTT broker (what scripts/demo.sh installs)
#   train / export / tensorrt / dev   see setup.cfg; several as "train,export"
# Every install is constrained to the recorded working set (scripts/constraints.txt).
# Idempotent: re-running only installs what changed. Works on a fresh Debian/Ubuntu with Python 3.10-3.13.
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
  case ",$EXTRAS," in
    *,dev,*|*,all,*|*,train,*|*,export,*)
      echo "installing .venv with [$EXTRAS]: torch is its CUDA build, ~6.6 GB on disk (the pip cache makes a re-install quicker)" >&2 ;;
  esac
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null
  .venv/bin/python -m pip install -q -c scripts/constraints.txt -e "$SPEC"
  touch "$stamp"
fi
