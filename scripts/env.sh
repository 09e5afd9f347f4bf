# Sourced by the project's scripts: one optimised build profile shared by the binary and the
# tests, in a target directory outside the clone so that clean clones (and CI) reuse it.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/spo-pipe/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
command -v cargo >/dev/null 2>&1 || { [ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"; }
command -v cargo >/dev/null 2>&1 || { echo "spo-pipe needs a Rust toolchain (cargo) on PATH: https://rustup.rs" >&2; exit 1; }
