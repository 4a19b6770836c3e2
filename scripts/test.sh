#!/usr/bin/env bash
# Sets up and runs the whole test suite. The tests start the services they use
# (Tansu broker, ClickHouse server, ...) on loopback and stop them by PID; a
# service that cannot start fails the run.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test
exec .venv/bin/python -m pytest "$@"
