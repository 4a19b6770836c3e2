#!/usr/bin/env bash
# Installs bsdtar (Debian's libarchive-tools). The attachment policy lists RAR
# archives in pure Python (rarfile) and needs bsdtar only to decompress packed
# RAR members when it looks inside them for nested archives; without it such
# members are treated as opaque (see streams/attachment_policy.py).
set -euo pipefail
if command -v bsdtar >/dev/null 2>&1; then
    echo "bsdtar already installed"
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq libarchive-tools
