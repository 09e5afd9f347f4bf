#!/usr/bin/env bash
# The project's test command (CI runs exactly this): every crate's tests, on the release profile.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
# The report's browser test needs headless Chromium; installs it where it can, else that test skips.
bash scripts/install-browser.sh
# The remote-cache tests need an S3 server on loopback (moto); installs it where it can, else they skip.
bash scripts/install-s3.sh
# ... and Azurite (npm) and a GCS emulator (PyPI) for the same tests on Azure and GCS.
bash scripts/install-cloud-emulators.sh
# The Slurm executor's tests need a single-node cluster on this machine; starts one where it can.
bash scripts/install-slurm.sh
cargo test --release --locked --workspace "$@"
