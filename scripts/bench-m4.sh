#!/usr/bin/env bash
# Instruction counts per multiply-accumulate of fixnn's kernels and of whole
# training steps on the Cortex-M4 (QEMU mps2-an386, -icount shift=0: one
# instruction = 1 ns of virtual time, read through SysTick). Prints a table;
# the raw lines are kept in hw-targets/target/bench-m4.txt.
#
#   scripts/bench-m4.sh
#
# The training-step bench runs the device cases cnn and mlp: their blobs
# (hw-targets/target/cases/*.case) are written by the device suite, which
# this script runs first (its DSP test only) if they are missing.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -f hw-targets/target/cases/mlp.case ] || [ ! -f hw-targets/target/cases/cnn.case ]; then
    echo "== writing the case blobs (device suite, DSP variant)" >&2
    cargo test -p fixnn-tests --test device_suite dsp_kernels_on_m4_and_m7_match_the_desktop >&2
fi
cd hw-targets
export FIXNN_ICOUNT=1
cargo build --release --target thumbv7em-none-eabihf --features board-an386 \
    --bin bench --bin bench_step >&2
out=target/bench-m4.txt
./qemu-run target/thumbv7em-none-eabihf/release/bench >"$out"
./qemu-run target/thumbv7em-none-eabihf/release/bench_step >>"$out"
if grep -q WRONG "$out"; then
    grep WRONG "$out" >&2
    exit 1
fi
awk '
/^CAL/ { printf "calibration: asm loop of %d instructions counted as %d\n\n", $2, $3 }
/^B / {
    if (!hdr) { print "| kernel | variant | MACs | instructions | instr/MAC |"; print "| --- | --- | ---: | ---: | ---: |"; hdr = 1 }
    printf "| %s | %s | %d | %d | %.3f |\n", $2, $3, $4, $5, $5 / $4
}
/^S / {
    k = $2 " " $3 " " $4; steps[k]++; macs[k] += $6; ins[k] += $7; inb[k] += $8; pk[k] += $9; rf[k] += $10
    if (!(k in seen)) { order[++n] = k; seen[k] = 1 }
}
END {
    print ""
    print "| case | backend | run | steps | MACs/step | instr/step | instr/MAC | in backend calls | packed/ref calls per step |"
    print "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |"
    for (i = 1; i <= n; i++) {
        k = order[i]; split(k, f, " "); s = steps[k]
        printf "| %s | %s | %s | %d | %d | %d | %.2f | %.0f%% | %d/%d |\n", f[1], f[2], f[3], s, macs[k] / s, ins[k] / s, ins[k] / macs[k], 100 * inb[k] / ins[k], pk[k] / s, rf[k] / s
    }
}' "$out"
