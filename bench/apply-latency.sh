#!/usr/bin/env bash
# Control-plane benchmark (issue #5): builds polluxd and apply-latency in release and runs
# it; every argument goes to apply-latency (e.g. --ports 100 --networks 10 --routers 10).
# Needs no root: polluxd runs on mem ports in a temporary directory it removes again.
set -euo pipefail

cd "$(dirname "$0")/.."
cargo build --release -q -p pollux-control --bin polluxd -p pollux-bench --bin apply-latency
target_dir="${CARGO_TARGET_DIR:-target}"
exec "$target_dir/release/apply-latency" "$@"
