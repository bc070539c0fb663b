#!/usr/bin/env bash
# Installs Debian's chromium (headless Chromium renders the report page in the tests)
# when no Chromium is on PATH. Needs root or sudo; prints what to do otherwise.
set -euo pipefail
for b in chromium chromium-browser google-chrome; do
    if command -v "$b" >/dev/null; then
        echo "chromium: $(command -v "$b")"
        exit 0
    fi
done
if [ "$(id -u)" -eq 0 ]; then
    SUDO=
elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
    SUDO=sudo
else
    echo "chromium is missing and installing it needs root: apt-get install chromium" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get install -y --no-install-recommends chromium >/dev/null 2>&1 ||
    { $SUDO apt-get update -qq && $SUDO apt-get install -y --no-install-recommends chromium >/dev/null; }
echo "chromium: $(command -v chromium)"
