#!/usr/bin/env bash
# Side-by-side forwarding rate with 64-byte UDP frames, every device under test measured
# in the same run on the same topology and CPU placement:
#
#   namespace gen (pollux-gen on AF_XDP, pinned to CPU 0) ── veth ── namespace sw (the
#   device under test) ── veth ── namespace sink (counts what arrives: rx_packets)
#
#   pollux        polluxd, one worker pinned to CPU 1
#   ovs-afxdp     Open vSwitch userspace datapath, afxdp ports (xdp-mode=best-effort),
#                 one PMD thread on CPU 1, private ovsdb/vswitchd started here
#   linux-bridge  the kernel bridge
#
# Placement: a veth does its receive work (and any XDP program on it) on the CPU that
# sends into it, so the work for frames entering sw runs on the generator's CPU 0 for
# every device; only pollux's worker and OVS's PMD run on CPU 1.
#
# Usage: bench/compare.sh [SECONDS]   (default 5 s per device; needs root)
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-5}
[ "$(id -u)" -eq 0 ] || { echo "compare: needs root" >&2; exit 1; }
command -v ovs-vswitchd >/dev/null || { echo "compare: ovs-vswitchd missing (apt-get install -y openvswitch-switch)" >&2; exit 1; }
cargo build --release -q -p pollux-control --bin polluxd -p pollux-bench --bin pollux-gen
polluxd=$PWD/target/release/polluxd
gen=$PWD/target/release/pollux-gen

P="pc$(printf '%04x' $(( $$ % 65536 )))"
work=$(mktemp -d "/tmp/$P.XXXX")
GEN_MAC=02:00:00:00:01:01
SINK_MAC=02:00:00:00:02:02
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    for n in gen sw sink; do ip netns del "$P$n" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

for n in gen sw sink; do
    ip netns add "$P$n"
    ip -n "$P$n" link set lo up
    ip netns exec "$P$n" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1
done
ip -n "${P}sw" link add "${P}g" type veth peer name eth0 netns "${P}gen"
ip -n "${P}sw" link add "${P}k" type veth peer name eth0 netns "${P}sink"
ip -n "${P}gen" link set eth0 address $GEN_MAC
ip -n "${P}sink" link set eth0 address $SINK_MAC
for l in "sw ${P}g" "sw ${P}k" "gen eth0" "sink eth0"; do set -- $l; ip -n "$P$1" link set "$2" up; done

sink_rx() { ip netns exec "${P}sink" cat /sys/class/net/eth0/statistics/rx_packets; }
declare -A rate sent_rate
measure() { # dut
    # Prime learning switches with one frame from the sink side.
    local before after out
    before=$(sink_rx)
    out=$(ip netns exec "${P}gen" taskset -c 0 "$gen" eth0 $SINK_MAC $GEN_MAC "$seconds")
    sleep 0.5
    after=$(sink_rx)
    local secs sent
    sent=$(sed -n 's/^sent \([0-9]*\) frames in \([0-9.]*\) s.*/\1/p' <<<"$out")
    secs=$(sed -n 's/^sent \([0-9]*\) frames in \([0-9.]*\) s.*/\2/p' <<<"$out")
    rate[$1]=$(awk -v n=$((after - before)) -v s="$secs" 'BEGIN { printf "%.3f", n / s / 1e6 }')
    sent_rate[$1]=$(awk -v n="$sent" -v s="$secs" 'BEGIN { printf "%.3f", n / s / 1e6 }')
    printf '%-13s offered %s Mpps, forwarded %s Mpps (%d of %d frames)\n' "$1" "${sent_rate[$1]}" "${rate[$1]}" $((after - before)) "$sent"
}
prime() { ip netns exec "${P}sink" python3 - <<'EOF'
import socket
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind(("eth0", 0))
s.send(bytes.fromhex("020000000101" "020000000202" "88b5") + bytes(46))
EOF
}

echo "== $seconds s per device; generator on CPU 0, DUT worker/PMD on CPU 1"

# pollux
cat > "$work/pollux.toml" <<EOF
[[networks]]
id = "bench"
network_type = "local"
[[ports]]
id = "gen"
network_id = "bench"
mac_address = "$GEN_MAC"
binding = { driver = "afxdp", interface = "${P}g" }
[[ports]]
id = "sink"
network_id = "bench"
mac_address = "$SINK_MAC"
binding = { driver = "afxdp", interface = "${P}k" }
EOF
ip netns exec "${P}sw" "$polluxd" --config "$work/pollux.toml" --cores 1 --socket "$work/pollux.sock" --state-dir "$work/pollux-state" 2>"$work/pollux.log" &
pids+=($!)
for _ in $(seq 50); do grep -q ready "$work/pollux.log" && break; sleep 0.1; done
measure pollux
kill -INT "${pids[-1]}"; wait "${pids[-1]}" || true
grep -E "worker 0|dropped|driver" "$work/pollux.log" | sed 's/^/   /'

# linux-bridge
ip -n "${P}sw" link add br0 type bridge
ip -n "${P}sw" link set "${P}g" master br0
ip -n "${P}sw" link set "${P}k" master br0
ip -n "${P}sw" link set br0 up
prime
measure linux-bridge
ip -n "${P}sw" link del br0

# ovs-afxdp
ovs=$work/ovs
mkdir -p "$ovs"
export OVS_RUNDIR=$ovs OVS_LOGDIR=$ovs OVS_DBDIR=$ovs OVS_SYSCONFDIR=$ovs
ovsdb-tool create "$ovs/conf.db" /usr/share/openvswitch/vswitch.ovsschema
ovsdb-server "$ovs/conf.db" --remote="punix:$ovs/db.sock" --unixctl="$ovs/ovsdb.ctl" \
    --pidfile="$ovs/ovsdb.pid" --log-file="$ovs/ovsdb.log" --no-chdir &
pids+=($!)
for _ in $(seq 50); do [ -S "$ovs/db.sock" ] && break; sleep 0.1; done
vsctl() { ovs-vsctl --db="unix:$ovs/db.sock" --timeout=10 "$@"; }
vsctl --no-wait init
vsctl --no-wait set Open_vSwitch . other_config:pmd-cpu-mask=0x2
ip netns exec "${P}sw" ovs-vswitchd "unix:$ovs/db.sock" --unixctl="$ovs/vswitchd.ctl" \
    --pidfile="$ovs/vswitchd.pid" --log-file="$ovs/vswitchd.log" --no-chdir &
pids+=($!)
vsctl add-br br0 -- set bridge br0 datapath_type=netdev
for ifc in "${P}g" "${P}k"; do
    vsctl add-port br0 "$ifc" -- set interface "$ifc" type=afxdp options:xdp-mode=best-effort
done
sleep 2
prime
if vsctl get interface "${P}g" error 2>/dev/null | grep -q '""\|\[\]'; then :; fi
measure ovs-afxdp
ovs-appctl -t "$ovs/vswitchd.ctl" dpif-netdev/pmd-stats-show 2>/dev/null | grep -E "packets|idle|processing" | sed 's/^/   /' | head -6 || true

echo "== ratios (same run)"
awk -v p="${rate[pollux]}" -v o="${rate[ovs-afxdp]}" -v b="${rate[linux-bridge]}" 'BEGIN {
    printf "pollux / ovs-afxdp    %.2f\n", (o > 0 ? p / o : 0)
    printf "pollux / linux-bridge %.2f\n", (b > 0 ? p / b : 0)
}'
