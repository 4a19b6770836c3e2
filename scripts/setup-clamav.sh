#!/usr/bin/env bash
# Installs the ClamAV daemon binary. The project never runs the system service
# or freshclam: tests and deployments start clamd with their own config and
# signature databases.
set -euo pipefail
if command -v clamd >/dev/null 2>&1 || [ -x /usr/sbin/clamd ]; then
    echo "clamd already installed"
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq clamav-daemon
