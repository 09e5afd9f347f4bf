#!/usr/bin/env bash
# Installs an S3 server for the remote-cache tests (tests/remote.rs): moto's server from PyPI
# (`moto[server]`), plus awscli for the push/pull benchmark. Does nothing when `moto_server` already
# runs here; otherwise installs into a virtual environment at $SPO_S3_VENV (default
# ~/.cache/spo-pipe/s3-venv), where the tests look for it. Says why and exits 0 when it cannot
# install (no python3, no pip or no network), so the tests then skip with their own message.
set -uo pipefail
venv="${SPO_S3_VENV:-$HOME/.cache/spo-pipe/s3-venv}"
works() { "$1" --help >/dev/null 2>&1; }
if command -v moto_server >/dev/null 2>&1 && works moto_server; then exit 0; fi
if [ -x "$venv/bin/moto_server" ] && works "$venv/bin/moto_server"; then exit 0; fi
if ! command -v python3 >/dev/null 2>&1; then
    echo "install-s3: no python3 here; the remote-cache tests will skip" >&2; exit 0
fi
echo "install-s3: installing moto[server] into $venv" >&2
if ! python3 -m venv "$venv" >/dev/null 2>&1; then
    echo "install-s3: python3 -m venv failed (Debian: apt-get install python3-venv); the remote-cache tests will skip" >&2
    exit 0
fi
if ! "$venv/bin/pip" install -q 'moto[server]' awscli; then
    echo "install-s3: pip install 'moto[server]' failed; the remote-cache tests will skip" >&2
fi
exit 0
