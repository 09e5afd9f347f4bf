#!/usr/bin/env bash
# Installs the Azure and GCS emulators for the remote-cache tests (tests/remote.rs, `azure::…` and
# `gcs::…`): Azurite, Microsoft's Azure Storage emulator, from npm into $SPO_AZURITE_DIR (default
# ~/.cache/spo-pipe/azurite), and gcp-storage-emulator from PyPI into a virtual environment at
# $SPO_GCS_VENV (default ~/.cache/spo-pipe/gcs-venv), where the tests look for them. Skips what
# is already there. Says why and exits 0 when it cannot install one (no npm, no python3, no
# network), so those tests then skip with their own message. The tests start Azurite with
# --disableTelemetry: it sends nothing anywhere.
set -uo pipefail
az_dir="${SPO_AZURITE_DIR:-$HOME/.cache/spo-pipe/azurite}"
gcs_venv="${SPO_GCS_VENV:-$HOME/.cache/spo-pipe/gcs-venv}"
say() { echo "install-cloud-emulators: $*" >&2; }

if [ -x "$az_dir/node_modules/.bin/azurite-blob" ] || command -v azurite-blob >/dev/null 2>&1; then
    :
elif ! command -v npm >/dev/null 2>&1; then
    say "no npm here; the Azure remote-cache tests will skip"
else
    say "installing azurite (npm) into $az_dir"
    mkdir -p "$az_dir"
    if ! npm install --prefix "$az_dir" --no-audit --no-fund --silent 'azurite@3' >/dev/null; then
        say "npm install azurite failed; the Azure remote-cache tests will skip"
    fi
fi

if [ -x "$gcs_venv/bin/gcp-storage-emulator" ] || command -v gcp-storage-emulator >/dev/null 2>&1; then
    :
elif ! command -v python3 >/dev/null 2>&1; then
    say "no python3 here; the GCS remote-cache tests will skip"
elif ! python3 -m venv "$gcs_venv" >/dev/null 2>&1; then
    say "python3 -m venv failed (Debian: apt-get install python3-venv); the GCS remote-cache tests will skip"
else
    say "installing gcp-storage-emulator (PyPI) into $gcs_venv"
    if ! "$gcs_venv/bin/pip" install -q gcp-storage-emulator; then
        say "pip install gcp-storage-emulator failed; the GCS remote-cache tests will skip"
    fi
fi
exit 0
