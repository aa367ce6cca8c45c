#!/usr/bin/env bash
# The glass-line demo of README.md: simulated rig, bundled demo model, embedded MQTT broker.
# Extra arguments go to `rtvp-edge run`, e.g.  scripts/demo.sh --parts 50
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh demo  # the runtime + the embedded broker (no torch)
args=("$@")
[ ${#args[@]} -eq 0 ] && args=(--parts 20)
exec .venv/bin/rtvp-edge run --line line_config/glass.yaml "${args[@]}"
