#!/usr/bin/env bash
# The test command of README.md (and of CI): installs what the tests need, lints, runs the suite.
# Extra arguments go to pytest, e.g.  scripts/test.sh -k bundle
set -euo pipefail
cd "$(dirname "$0")/.."
# A real MQTT broker for the runtime tests (Debian's mosquitto; the tests start it on a free port).
if ! command -v mosquitto >/dev/null 2>&1 && ! [ -x /usr/sbin/mosquitto ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  echo "installing mosquitto (Debian package) for the broker tests..."
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq mosquitto >/dev/null
fi
scripts/bootstrap.sh dev
.venv/bin/ruff check .
.venv/bin/ruff format --check .
# The broker tests must run here, not skip: a missing mosquitto fails them.
export RTVP_REQUIRE_MOSQUITTO=1
exec .venv/bin/python -m pytest "$@"
