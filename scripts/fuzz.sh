#!/usr/bin/env bash
# Run fixnn's cargo-fuzz targets, one after another, each for SECONDS
# (default 600), in one process (no -jobs: libFuzzer would fork workers
# and write their output elsewhere). Not part of CI (needs nightly, time).
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]     (default: every target)
#
# Each target starts from its working corpus (fuzz/corpus/<target>, not
# committed) plus the committed seeds and regression inputs in
# tests/fuzz-regressions/<target>/. Any crash, timeout or out-of-memory
# input libFuzzer writes is copied into tests/fuzz-regressions/<target>/,
# where tests/fuzz_regressions.rs (cargo test --workspace) replays it on
# stable Rust. libFuzzer's last lines (executions, coverage) are kept in
# fuzz/logs/<target>.log. Exit status: 1 if any target found something.
#
# Needs: the nightly toolchain and cargo-fuzz (cargo install cargo-fuzz --locked).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root/fuzz"

secs=600
if [[ $# -gt 0 && $1 =~ ^[0-9]+$ ]]; then
  secs=$1
  shift
fi
if [[ $# -gt 0 ]]; then
  targets=("$@")
else
  mapfile -t targets < <(cargo +nightly fuzz list)
fi

# Debug assertions on: an integer overflow in a parser is a finding too.
cargo +nightly fuzz build -a

mkdir -p logs
found=0
for t in "${targets[@]}"; do
  corpus="corpus/$t"
  regress="$root/tests/fuzz-regressions/$t"
  artifacts="artifacts/$t"
  mkdir -p "$corpus" "$regress" "$artifacts"
  echo "== $t: ${secs}s"
  set +e
  # -rss_limit_mb / -malloc_limit_mb: a parser that asks for more than
  # 1 GiB on a small input is a finding. -timeout: 10 s for one input.
  cargo +nightly fuzz run -a "$t" "$corpus" "$regress" -- \
    -max_total_time="$secs" -timeout=10 \
    -rss_limit_mb=2048 -malloc_limit_mb=1024 -max_len=65536 \
    -print_final_stats=1 2>&1 | tee "logs/$t.full.log" | grep -E '^#|^==|ERROR|panicked|SUMMARY|stat::' | tail -n 40 > "logs/$t.log"
  rc=${PIPESTATUS[0]}
  set -e
  tail -n 15 "logs/$t.log"
  shopt -s nullglob
  for f in "$artifacts"/crash-* "$artifacts"/timeout-* "$artifacts"/oom-* "$artifacts"/leak-* "$artifacts"/slow-unit-*; do
    cp "$f" "$regress/"
    echo "   kept $(basename "$f") in tests/fuzz-regressions/$t/"
    found=1
  done
  shopt -u nullglob
  if [[ $rc -ne 0 ]]; then
    echo "   $t: libFuzzer exit $rc (see fuzz/logs/$t.full.log)"
    found=1
  fi
done
exit $found
