#!/usr/bin/env bash
# Installs headless Chromium and ChromeDriver from the distribution's packages, for the report's
# browser test (tests/report_browser.rs). Does nothing when both are on PATH; says why and exits
# 0 when they cannot be installed here (no apt-get, not root and no passwordless sudo), so the
# test then skips with its own message.
set -uo pipefail
have() { command -v "$1" >/dev/null 2>&1; }
if have chromium && have chromedriver; then exit 0; fi
if ! have apt-get; then
    echo "install-browser: no apt-get here; the browser test will skip" >&2; exit 0
fi
if [ "$(id -u)" = 0 ]; then as_root=(); elif sudo -n true 2>/dev/null; then as_root=(sudo -n); else
    echo "install-browser: not root and no passwordless sudo; the browser test will skip" >&2; exit 0
fi
echo "install-browser: installing chromium and chromium-driver (Debian packages)" >&2
export DEBIAN_FRONTEND=noninteractive
if ! { "${as_root[@]}" apt-get update -qq && "${as_root[@]}" apt-get install -y -qq chromium chromium-driver >/dev/null; }; then
    echo "install-browser: apt-get failed; the browser test will skip" >&2
fi
exit 0
