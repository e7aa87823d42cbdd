#!/usr/bin/env bash
# Runs every check and test of the workspace. Works on a fresh machine: installs the
# system packages it needs first (as root, with apt-get), and cargo fetches the crates.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(valgrind iproute2 iputils-ping iperf3 tcpdump ethtool openvswitch-switch python3 prometheus traceroute udhcpc isc-dhcp-client dhcpcd5)
missing=()
for p in "${packages[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "missing packages: ${missing[*]} (run as root, or install them)" >&2
        exit 1
    fi
    echo "== installing ${missing[*]}"
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"
fi
for c in rustfmt clippy; do
    rustup component list --installed 2>/dev/null | grep -q "^$c" || rustup component add "$c"
done

echo "== cargo fmt"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets -q -- -D warnings
echo "== cargo test"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test --workspace 2>&1 | tee "$log"
echo "== benchmarks compile and run once"
cargo bench -q -p pollux-bench --benches -- --test
echo "== config.apply latency, small state (informational)"
bench/apply-latency.sh --ports 100 --networks 10 --routers 10 --changes 20 --keep-going-secs 1
echo "== instructions per packet (informational)"
bench/instructions.sh

# One closing line for the whole run, summed over every test binary.
awk '/^test result:/ { p += $4; f += $6 } END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
