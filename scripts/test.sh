#!/usr/bin/env bash
# The project's test command (CI runs exactly this): every crate's tests, on the release profile.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
cargo test --release --locked --workspace "$@"
