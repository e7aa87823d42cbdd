#!/usr/bin/env bash
# Instructions per packet of each pipeline scenario, counted by callgrind (repeatable,
# unlike time on a shared machine). Each scenario runs twice with different round counts
# and the difference is divided by the extra packets, which cancels set-up, warm-up and
# the fixed cost of starting the process. Only the worker pass (`Worker::poll` and what
# it calls) is counted: offering frames and emptying output rings are the test bench.
#
# Usage: bench/instructions.sh            prints "<scenario> <instructions per packet>"
set -euo pipefail
cd "$(dirname "$0")/.."
command -v valgrind >/dev/null || { echo "valgrind is not installed (apt-get install -y valgrind)" >&2; exit 1; }
cargo build --release -q -p pollux-bench --bin pipeline-instructions
bin=target/release/pipeline-instructions
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
burst=64
small=200
large=1200

count() { # scenario rounds -> instructions inside Worker::poll
    valgrind --tool=callgrind --callgrind-out-file="$tmp/out" --collect-atstart=no \
        --toggle-collect='*Worker*poll*' "$bin" "$1" "$2" >/dev/null 2>"$tmp/log" \
        || { cat "$tmp/log" >&2; exit 1; }
    awk '/^(summary|totals):/ { print $2; exit }' "$tmp/out"
}

for scenario in access_to_access access_to_uplink_push uplink_to_access_pop flood_8_ports; do
    a=$(count "$scenario" "$small")
    b=$(count "$scenario" "$large")
    awk -v a="$a" -v b="$b" -v n=$(( (large - small) * burst )) -v s="$scenario" \
        'BEGIN { printf "%s %.1f\n", s, (b - a) / n }'
done
