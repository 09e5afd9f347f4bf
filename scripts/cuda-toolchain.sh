#!/usr/bin/env bash
# A CUDA 13.0 build toolchain from PyPI wheels, for `--features cuda` builds on a machine that has
# no CUDA toolkit (this project's build machine; the GPU machines have CUDA but no Rust). Source it:
#
#     source scripts/cuda-toolchain.sh     # sets CUDA_HOME, PATH, CUDA_COMPUTE_CAP, LIBRARY_PATH
#
# It downloads nvcc, nvvm, the runtime headers and the libraries candle links (cudart, cublas,
# curand, nvrtc; ~0.7 GB) into ~/.cache/spo-pipe/cuda13 once, adds the unversioned .so links a
# linker looks for, and builds a stub libcuda.so (the driver is only on GPU machines) from the
# driver symbols cudarc declares (with it on LD_LIBRARY_PATH a CUDA build runs here, on the CPU).
# 13.0 because the GPU machines' driver (580) loads PTX from CUDA
# ≤ 13.0. CUDA_COMPUTE_CAP defaults to 90 (H100/H200). At run time a GPU machine's own driver and
# CUDA 13 libraries replace all of these (LD_LIBRARY_PATH).

cache="${SPO_CUDA_CACHE:-$HOME/.cache/spo-pipe/cuda13}"
wheels=(
    nvidia-cuda-nvcc==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-crt==13.0.88
    nvidia-cuda-runtime==13.0.96 nvidia-cublas==13.0.2.14 nvidia-curand==10.4.0.35
    nvidia-cuda-nvrtc==13.0.88 nvidia-cuda-cccl==13.0.85
)

# the one-time set-up runs in a subshell, so that a failure stops it without ending the shell
# that sourced this file
[[ -f "$cache/.complete" ]] || (
    set -euo pipefail
    mkdir -p "$cache/wheels" "$cache/unpacked"
    python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.11 \
        --platform manylinux_2_27_x86_64 --platform manylinux2014_x86_64 \
        --platform manylinux_2_17_x86_64 -d "$cache/wheels" "${wheels[@]}"
    for whl in "$cache"/wheels/*.whl; do
        unzip -q -o "$whl" 'nvidia/*' -d "$cache/unpacked"
    done
    root="$cache/unpacked/nvidia/cu13"
    chmod +x "$root"/bin/* "$root"/nvvm/bin/* 2>/dev/null || true
    # unversioned names for the linker (libcublas.so.13 → libcublas.so, …)
    for lib in "$root"/lib/lib*.so.*; do
        base="${lib%%.so.*}.so"
        [[ -e "$base" ]] || ln -s "$(basename "$lib")" "$base"
    done
    # a driver stub exporting every cu* entry point cudarc declares, each failing with
    # CUDA_ERROR_NO_DEVICE (100): enough to link, and a build run here on the CPU finds no GPU
    cudarc=$(find "$HOME/.cargo/registry/src" -maxdepth 2 -type d -name 'cudarc-0.19.*' | sort | tail -1)
    [[ -n "$cudarc" ]] || { echo "cuda-toolchain: run 'cargo fetch' first (cudarc sources needed)" >&2; exit 1; }
    grep -oE '^pub unsafe fn cu[A-Za-z0-9_]+' "$cudarc/src/driver/sys/mod.rs" |
        sed -E 's/^pub unsafe fn (.*)/int \1(void) { return 100; }/' | sort -u > "$cache/cuda_stub.c"
    mkdir -p "$root/lib/stubs"
    gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$root/lib/stubs/libcuda.so" "$cache/cuda_stub.c"
    ln -sf libcuda.so "$root/lib/stubs/libcuda.so.1"
    touch "$cache/.complete"
) || return 1 2>/dev/null || exit 1

export CUDA_HOME="$cache/unpacked/nvidia/cu13"
export PATH="$CUDA_HOME/bin:$CUDA_HOME/nvvm/bin:$PATH"
export LIBRARY_PATH="$CUDA_HOME/lib:$CUDA_HOME/lib/stubs${LIBRARY_PATH:+:$LIBRARY_PATH}"
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}"
