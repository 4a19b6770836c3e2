#!/usr/bin/env bash
# Sets up and runs the whole test suite. The tests start the services they use
# (Tansu broker, ClickHouse server, ...) on loopback and stop them by PID; a
# service that cannot start fails the run.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test
# Most of the suite's time is spent waiting (consumer-group joins, restarts,
# outages held for seconds), so two test processes halve it without slowing any
# test. Whole files go to one process: a file's module fixtures (the fault
# pipeline) start once. `scripts/test.sh -n 0` runs in one process.
exec .venv/bin/python -m pytest -n 2 --dist loadfile "$@"
