#!/usr/bin/env bash
# The main job, for now in memory: builds the release binaries and runs one worker thread
# switching between mem ports (two VLAN networks behind an uplink), with a summary.
# Replaced by polluxd on AF_XDP ports in network namespaces when that driver lands.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p pollux-control --bin pollux-mem-demo
exec target/release/pollux-mem-demo
