#!/usr/bin/env bash
# Run core's unit tests (the tests beside the code, `cargo test -p fixnn --lib`)
# and doc tests under Miri, the interpreter that detects undefined behaviour:
# out-of-bounds or misaligned accesses, use of uninitialised memory, invalid
# values, data races, leaks.
#
#   scripts/miri.sh [extra cargo-miri test arguments]
#
# Needs the nightly toolchain with the miri and rust-src components
# (`rustup +nightly component add miri rust-src`). Tests with long sweeps run
# a sample of them under Miri (`cfg(miri)`); float functions that IEEE 754
# does not require to be correctly rounded (powi, exp, ln) are deliberately
# inexact under Miri, so tests compare against exact references instead.
set -euo pipefail
cd "$(dirname "$0")/.."

# Strict provenance and symbolic alignment checks: what a Cortex-M build
# could trip over is caught even where x86 would not care.
export MIRIFLAGS="${MIRIFLAGS:--Zmiri-strict-provenance -Zmiri-symbolic-alignment-check}"
cargo +nightly miri test -p fixnn --lib "$@"
cargo +nightly miri test -p fixnn --doc "$@"
