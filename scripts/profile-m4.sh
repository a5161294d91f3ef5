#!/usr/bin/env bash
# Where a training step's instructions go on the Cortex-M4 (QEMU
# mps2-an386, -icount shift=0): builds hw-targets' profile_step with the
# sampling profiler (feature `profile`: SysTick every 1,024 ticks records
# the interrupted pc, i.e. one sample per 40,960 instructions), runs one
# run of a device case on DspBackend and prints the samples per phase and
# per function (inlining expanded with llvm-symbolizer).
#
#   scripts/profile-m4.sh [mlp|cnn|conv] [RUN] [DEPTH]
#
# `conv N` instead times N forward convolutions of the kernel benchmark's
# shape. Needs the case blobs (scripts/bench-m4.sh writes them). Counts
# from a profile build include the sampling exception: use
# scripts/bench-m4.sh for the figures.
set -euo pipefail
cd "$(dirname "$0")/../hw-targets"
export FIXNN_ICOUNT=1
cargo build --release --target thumbv7em-none-eabihf --features board-an386,profile \
    --bin profile_step >&2
elf=target/thumbv7em-none-eabihf/release/profile_step
out=target/profile-m4.txt
./qemu-run "$elf" "${1:-mlp}" "${2:-1}" >"$out"
python3 ../scripts/profile-m4.py "$elf" "$out" --depth "${3:-3}"
