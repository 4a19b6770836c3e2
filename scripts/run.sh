#!/usr/bin/env bash
# Sets up and runs Postwarden on this machine: local broker, embedded ClickHouse,
# SMTP on 127.0.0.1:2525. Data lives in ./var. Stop with Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/postwarden up "$@"
