#!/usr/bin/env bash
# Install the Debian packages named as arguments when root; otherwise say in one line what is missing.
set -euo pipefail
missing=()
for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
    echo "mailbridge: missing system packages: ${missing[*]} (run: sudo apt-get install -y ${missing[*]})" >&2
    exit 1
fi
# Postfix is wanted for its tools (smtp-sink, smtp-source) and for the throwaway instances that
# tests/test_postfix.py starts itself: no configuration, no system daemon started.
echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
fi
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
