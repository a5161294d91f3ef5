#!/usr/bin/env bash
# Paired comparison of two model files over many seeds: each seed trains
# both (the same initial weights and batch order; `fixnn train --seed`), and
# the test accuracies are compared seed by seed.
#
#   scripts/compare-seeds.sh A.json B.json FIRST LAST [fixnn train options]
#
# Prints one line per seed (`seed acc_a acc_b`), then the mean of each, the
# mean paired difference B - A with its standard deviation and the interval
# of two standard errors, and how many seeds B was better, worse or equal.
# Extra options go to `fixnn train` (for example `--epochs 1 --threads 1`).
# Uses the release binary (built first) and $FIXNN_DATA or the default
# dataset path; nothing is kept but the printed lines.
#
# Single seeds differ by up to 0.3 points between two configurations that
# are equal on average (README, issue 9): compare hundreds of seeds.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -lt 4 ]; then
    echo "usage: $0 A.json B.json FIRST LAST [fixnn train options]" >&2
    exit 2
fi
a=$1 b=$2 first=$3 last=$4
shift 4
for f in "$a" "$b"; do
    if [ ! -f "$f" ]; then
        echo "$0: no model file $f" >&2
        exit 2
    fi
done
cargo build --release -q -p fixnn-std
bin=target/release/fixnn
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
accuracy() { # model seed
    rm -rf "$out/run"
    "$bin" train "$1" --no-report --seed "$2" --out "$out/run" "${@:3}" >/dev/null || return 1
    # The last epoch's test accuracy from metrics.json.
    grep -o '"test_accuracy": *[0-9.]*' "$out/run/metrics.json" | tail -1 | grep -o '[0-9.]*$'
}
for s in $(seq "$first" "$last"); do
    # A failed run (bad option, model file or data) ends the comparison
    # with fixnn's own error.
    x=$(accuracy "$a" "$s" "$@") || exit 1
    y=$(accuracy "$b" "$s" "$@") || exit 1
    echo "$s $x $y"
done | awk -v a="$a" -v b="$b" '
    { print; n++; sa += $2; sb += $3; d = $3 - $2; sd += d; sdd += d * d;
      if (d > 0) up++; else if (d < 0) down++; else tie++ }
    END {
        if (n < 2) exit
        m = sd / n; v = (sdd - n * m * m) / (n - 1); se = sqrt(v > 0 ? v : 0) / sqrt(n)
        printf "seeds %d: %s %.4f, %s %.4f\n", n, a, sa / n, b, sb / n
        printf "B - A: mean %+.4f points, sd %.4f, two standard errors [%+.4f, %+.4f]\n", m, sqrt(v > 0 ? v : 0), m - 2 * se, m + 2 * se
        printf "B better on %d seeds, worse on %d, equal on %d\n", up + 0, down + 0, tie + 0
    }'
