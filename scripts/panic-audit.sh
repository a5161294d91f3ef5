#!/usr/bin/env bash
# The panic audit: build hw-targets/panic-audit (fixnn's kernels, every
# layer's forward and backward pass, the loss, an SGD step, config loading
# and the config JSON reader the devices use, linked with panic-never) in
# release for Cortex-M. The build links
# only if no panic path is left in that code; otherwise the linker fails
# with "error(panic-never): your program contains at least one panicking
# branch" and this script lists the call sites that still reach a panic
# (file:line of the innermost frame outside the standard library).
#
#   scripts/panic-audit.sh          audit for thumbv7em-none-eabihf and thumbv6m-none-eabi
#
# The JSON configs are read with fixnn's own reader (fixnn::model::ReadError),
# audited here with the rest; serde-json-core is not linked.
#
# Needs llvm-objdump, llvm-symbolizer and python3 only to list the sites of a
# failed audit.
set -euo pipefail
cd "$(dirname "$0")/../hw-targets"

targets=(thumbv7em-none-eabihf thumbv6m-none-eabi)

status=0
for t in "${targets[@]}"; do
    echo "== panic audit: $t"
    if cargo build --release -p fixnn-panic-audit --target "$t"; then
        echo "   no panic path: linked"
        continue
    fi
    status=1
    echo "   PANIC PATHS REMAIN on $t; the call sites:" >&2
    # The same image with a panic handler that links, to find who calls it.
    if cargo build --release -p fixnn-panic-audit --target "$t" --no-default-features -q &&
        command -v llvm-objdump >/dev/null && command -v llvm-symbolizer >/dev/null; then
        python3 ../scripts/panic-sites.py "target/$t/release/panic-audit" | sort >&2 || true
    else
        echo "   (install llvm-objdump and llvm-symbolizer to list them)" >&2
    fi
done
exit "$status"
