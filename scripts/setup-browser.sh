#!/usr/bin/env bash
# Installs Debian's chromium for the browser tests (playwright drives
# /usr/bin/chromium; it never downloads a browser of its own).
# Idempotent: does nothing when chromium is present.
set -euo pipefail
if [ -x /usr/bin/chromium ]; then
    exit 0
fi
sudo_cmd=""
[ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
echo "setup-browser: installing chromium"
$sudo_cmd apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core
