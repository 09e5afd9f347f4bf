#!/usr/bin/env bash
# Builds `spo-pipe --features cuda` (release, CUDA 13.0 toolchain from scripts/cuda-toolchain.sh)
# in its own target directory, so that the CPU build in ~/.cache/spo-pipe/target stays as it is,
# and writes a stripped copy to $CUDA_TARGET_DIR/spo-pipe-cuda: the binary to carry to a GPU
# machine, where it needs that machine's driver and CUDA 13 libraries on LD_LIBRARY_PATH.
#
#     ./scripts/build-cuda.sh [extra cargo args, e.g. --tests]
#
# The first build compiles candle's CUDA kernels (~7 min of nvcc on 2 cores) on top of the usual
# dependency tree; later ones take seconds.

set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
source scripts/cuda-toolchain.sh
export CARGO_TARGET_DIR="${CUDA_TARGET_DIR:-$HOME/.cache/spo-pipe/target-cuda}"
cargo build --release --locked --features cuda --bin spo-pipe "$@"
strip -o "$CARGO_TARGET_DIR/spo-pipe-cuda" "$CARGO_TARGET_DIR/release/spo-pipe"
ls -l "$CARGO_TARGET_DIR/spo-pipe-cuda"
