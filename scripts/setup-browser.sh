#!/usr/bin/env bash
# Debian's chromium for the browser tests (driven by the playwright Python package with
# executable_path=/usr/bin/chromium; no browser download). Idempotent.
set -euo pipefail
if [ ! -x /usr/bin/chromium ]; then
    sudo_cmd=""
    [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
    $sudo_cmd apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends chromium
fi
