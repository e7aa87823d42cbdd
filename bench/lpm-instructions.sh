#!/usr/bin/env bash
# Instructions per IPv4 longest-prefix-match lookup, counted by callgrind (repeatable,
# unlike time on a shared machine), for each structure in `pollux_bench::lpm` and each
# table size: `lpm` (the dataplane's trie in the shape it picks: 8-4-4-4-4-4-4 for 10
# routes, DIR-24-8 for 1M), `multibit8` (8-bit strides: 8-8-8-8, 16-8-8) and `poptrie`.
# Only the lookup loops are counted (table generation and build are not), so the
# figure includes the loop and the summing of results, about 4 instructions per lookup.
#
# Prints one line per structure and size:
#   "<structure> <routes> random <instr/lookup> routed <instr/lookup> memory <bytes>"
# random: uniformly random addresses; routed: addresses inside random routes.
# ROUTES (default "10 1000000") and STRUCTURES (default all) narrow the run.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/need.sh
need valgrind:valgrind
cargo build --release -q -p pollux-bench --bin lpm-instructions
bin=$(realpath "${CARGO_TARGET_DIR:-target}")/release/lpm-instructions
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
lookups=100000

for routes in ${ROUTES:-10 1000000}; do
    for structure in ${STRUCTURES:-lpm multibit8 poptrie}; do
        # Collect only inside `Table::lookup_all` and dump after each of its two calls: out.1 holds
        # the random lookups, out.2 the routed ones.
        rm -f "$tmp"/out*
        memory=$(valgrind --tool=callgrind --callgrind-out-file="$tmp/out" --collect-atstart=no \
            --toggle-collect='pollux_bench::lpm::Table::lookup_all' --dump-after='pollux_bench::lpm::Table::lookup_all' \
            "$bin" "$structure" "$routes" "$lookups" 2>"$tmp/log") \
            || { cat "$tmp/log" >&2; exit 1; }
        total() { awk '/^(summary|totals):/ { print $2; exit }' "$1"; }
        awk -v s="$structure" -v r="$routes" -v n="$lookups" -v m="$memory" \
            -v a="$(total "$tmp/out.1")" -v b="$(total "$tmp/out.2")" \
            'BEGIN { printf "%s %s random %.1f routed %.1f memory %s\n", s, r, a / n, b / n, m }'
    done
done
