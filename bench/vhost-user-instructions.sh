#!/usr/bin/env bash
# Instructions per packet of the vhost-user port's receive (guest transmit queue → pool)
# and transmit (pool → guest receive queue) paths, counted by callgrind on a synthetic
# guest in a shared memfd (no QEMU): bursts of 64 frames, one descriptor per frame. As in
# instructions.sh, two round counts are run and the difference is divided by the extra
# packets. Only `VhostUserPort::rx_burst` / `tx_burst` (and what they call) are counted;
# `vq-rx` / `vq-tx` are the same paths written on rust-vmm's `virtio-queue` crate, for
# comparison.
# Prints "<direction> <frame length> <instructions per packet>".
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/need.sh
need valgrind:valgrind
cargo build --release -q -p pollux-bench --bin vhost-user-instructions
bin=target/release/vhost-user-instructions
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
small=50
large=250

toggle() { # direction -> the function counted
    case "$1" in
        vq-rx) echo '*vq_rx_burst*' ;;
        vq-tx) echo '*vq_tx_burst*' ;;
        *) echo "*VhostUserPort*${1}_burst*" ;;
    esac
}

count() { # direction rounds len -> instructions inside the burst function
    valgrind --tool=callgrind --callgrind-out-file="$tmp/out" --collect-atstart=no \
        --toggle-collect="$(toggle "$1")" "$bin" "$1" "$2" "$3" >/dev/null 2>"$tmp/log" \
        || { cat "$tmp/log" >&2; exit 1; }
    awk '/^(summary|totals):/ { print $2; exit }' "$tmp/out"
}

for dir in ${DIRECTIONS:-rx tx vq-rx vq-tx}; do
    for len in ${LENGTHS:-64 1514}; do
        a=$(count "$dir" "$small" "$len")
        b=$(count "$dir" "$large" "$len")
        awk -v a="$a" -v b="$b" -v n=$(( (large - small) * 64 )) -v d="$dir" -v l="$len" \
            'BEGIN { printf "%s %d %.1f\n", d, l, (b - a) / n }'
    done
done
