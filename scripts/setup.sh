#!/usr/bin/env bash
# Installs everything Postwarden needs on a fresh Debian machine with Python 3.11.
#   scripts/setup.sh          run profile: Python packages + the local broker
#   scripts/setup.sh --test   also the test services (ClickHouse server, helm)
# Idempotent: it installs only what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

profile=run
[ "${1:-}" = "--test" ] && profile=test

apt_packages=()
# bsdtar unpacks compressed RAR members for the attachment policy.
command -v bsdtar >/dev/null 2>&1 || apt_packages+=(libarchive-tools)
if [ "$profile" = test ]; then
    command -v clickhouse-server >/dev/null 2>&1 || [ -x /usr/sbin/clickhouse-server ] \
        || apt_packages+=(clickhouse-server)
fi
if [ ${#apt_packages[@]} -gt 0 ]; then
    echo "setup: installing Debian packages: ${apt_packages[*]}"
    sudo_cmd=""
    [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
    $sudo_cmd apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends "${apt_packages[@]}"
fi

if [ ! -x .venv/bin/python ]; then
    echo "setup: creating .venv"
    python3 -m venv .venv
fi
extra=local
[ "$profile" = test ] && extra=test
echo "setup: installing Python packages (.[$extra])"
.venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[$extra]"

if [ "$profile" = test ]; then
    bash scripts/setup-clamav.sh
    bash scripts/setup-browser.sh
    bash scripts/get-helm.sh
fi
echo "setup: done"
