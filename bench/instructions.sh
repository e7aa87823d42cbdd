#!/usr/bin/env bash
# Instructions per packet of each pipeline scenario, counted by callgrind (repeatable,
# unlike time on a shared machine). Each scenario runs twice with different round counts
# and the difference is divided by the extra packets, which cancels set-up, warm-up and
# the fixed cost of starting the process. Only the worker pass (`Worker::poll` and what
# it calls) is counted: offering frames and emptying output rings are the test bench.
#
# Prints one line per scenario: "<scenario> <instructions per packet>", the whole pass,
# followed by "(pipeline N, mem driver M)": the part spent in the stages and transmit
# batching, and the part inside the mem driver's rx_burst/tx_burst (copying each frame
# into and out of the pool, which an AF_XDP port does not do).
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/need.sh
need valgrind:valgrind
cargo build --release -q -p pollux-bench --bin pipeline-instructions
bin=target/release/pipeline-instructions
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
burst=64
small=200
large=1200

count() { # dir scenario rounds -> "total driver" instructions inside Worker::poll
    valgrind --tool=callgrind --callgrind-out-file="$1/out" --collect-atstart=no \
        --toggle-collect='*Worker*poll*' "$bin" "$2" "$3" >/dev/null 2>"$1/log" \
        || { cat "$1/log" >&2; return 1; }
    total=$(awk '/^(summary|totals):/ { print $2; exit }' "$1/out")
    # Run from outside the tree: inside it, callgrind_annotate shortens paths and then
    # misattributes inlined code, which changes the inclusive figures.
    driver=$(cd "$1" && callgrind_annotate --inclusive=yes out 2>/dev/null \
        | awk '/MemPort as pollux_dataplane::port::Port>::(rx|tx)_burst \[/ { gsub(",", "", $1); s += $1 } END { print s + 0 }')
    echo "$total $driver"
}

measure() { # scenario -> its line in $tmp/<scenario>/line
    local dir="$tmp/$1" a da b db
    mkdir -p "$dir"
    read -r a da < <(count "$dir" "$1" "$small") && [ -n "$a" ] || return 1
    read -r b db < <(count "$dir" "$1" "$large") && [ -n "$b" ] || return 1
    awk -v a="$a" -v b="$b" -v da="$da" -v db="$db" -v n=$(( (large - small) * burst )) -v s="$1" \
        'BEGIN { t = (b - a) / n; d = (db - da) / n; printf "%s %.1f (pipeline %.1f, mem driver %.1f)\n", s, t, t - d, d }' \
        > "$dir/line"
}

# Callgrind counts instructions, not time, so scenarios can share the CPUs: one per CPU
# at a time (JOBS overrides), printed in the order asked for.
scenarios=(${SCENARIOS:-access_to_access access_port_security access_qos_policed access_qos_marked access_to_uplink_push uplink_to_access_pop flood_8_ports route_10_routes route_1m_routes snat_steady snat_metered_10_labels vxlan_encap vxlan_decap geneve_encap geneve_decap gre_encap gre_decap sg_established_10_rules sg_established_10k_rules sg_new_10_rules sg_new_1k_rules sg_new_10k_rules sg_established_10_rules_ipv6})
jobs_max=${JOBS:-$(nproc)}
for scenario in "${scenarios[@]}"; do
    while [ "$(jobs -rp | wc -l)" -ge "$jobs_max" ]; do
        wait -n || true
    done
    measure "$scenario" &
done
wait
failed=0
for scenario in "${scenarios[@]}"; do
    if [ -f "$tmp/$scenario/line" ]; then
        cat "$tmp/$scenario/line"
    else
        echo "$scenario: not measured (callgrind failed; its log is above)" >&2
        failed=1
    fi
done
exit "$failed"
