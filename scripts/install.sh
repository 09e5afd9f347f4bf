#!/usr/bin/env bash
# Builds and installs spo-pipe, then runs the embedded default pipeline in this directory.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
cargo install --locked --path . --root "$HOME/.local" --force
export PATH="$HOME/.local/bin:$PATH"
echo "installed $(command -v spo-pipe)" >&2
spo-pipe run "$@"
