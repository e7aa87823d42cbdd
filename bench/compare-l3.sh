#!/usr/bin/env bash
# Side-by-side routing and SNAT with 64-byte UDP frames, each device under test measured
# in the same run on the same topology and CPU placement (issue #6):
#
#   namespace gen (pollux-gen on AF_XDP, CPU 0) ── veth ── namespace sw (the device under
#   test, a router) ── veth ── namespace sink (owns the destination; counts rx_packets)
#
#   routing   198.18.0.1 -> 198.18.99.99 across two subnets
#     pollux       polluxd, router r1 with an interface on each subnet, worker on CPU 1
#     qrouter      the Neutron reference: a namespace with ip_forward, as an L3 agent's
#                  qrouter (the kernel forwards on the sending CPU, see bench/README.md)
#   snat      198.18.0.1 -> 203.0.113.99 through SNAT to the gateway address 203.0.113.10
#     pollux       polluxd, router r1 with external gateway and enable_snat
#     qrouter      ip_forward + iptables -t nat POSTROUTING SNAT, as the L3 agent sets up
#
# Open vSwitch has no router or NAT without a controller programming it (OVN), so it is
# not a device here; `pollux-bench compare` has it for switching.
#
# Usage: bench/compare-l3.sh [SECONDS]   (default 5 s per device; needs root)
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-5}
[ "$(id -u)" -eq 0 ] || { echo "compare-l3: needs root" >&2; exit 1; }
. bench/need.sh
need iptables:iptables ip:iproute2 taskset:util-linux awk:gawk
cargo build --release -q -p pollux-control --bin polluxd -p pollux-bench --bin pollux-gen \
    -p pollux-testkit --bin pollux-netns
polluxd=$PWD/target/release/polluxd
gen=$PWD/target/release/pollux-gen

GEN_MAC=02:00:00:00:01:01
SINK_MAC=02:00:00:00:02:02
# polluxd's first router gets identity 1, so this MAC (see README, "Routers").
ROUTER_MAC=02:70:6c:00:00:01
# The topology of `pollux-bench compare`, made and held by the namespace kit: it deletes
# the namespaces (and whatever still runs in them) when this script ends, also when the
# script is killed. Sets PREFIX, NS_GEN, NS_SW and NS_SINK.
. bench/kit.sh
trap kit_down EXIT
kit_up "$PWD/target/release/pollux-netns" ns=gen ns=sw ns=sink \
    "veth=sw/%g,gen/eth0@$GEN_MAC" "veth=sw/%k,sink/eth0@$SINK_MAC"
work=$(mktemp -d "/tmp/$PREFIX.XXXX")

# The sink owns the destinations (so routers can resolve them) and discards the frames
# before the UDP layer would answer with port unreachable.
ip -n "$NS_SINK" addr add 198.18.99.99/24 dev eth0
ip -n "$NS_SINK" addr add 203.0.113.99/24 dev eth0
ip netns exec "$NS_SINK" iptables -A INPUT -p udp --dport 9 -j DROP

sink_rx() { ip netns exec "$NS_SINK" cat /sys/class/net/eth0/statistics/rx_packets; }
declare -A rate
measure() { # label dst_mac dst_ip
    local before after out secs sent
    before=$(sink_rx)
    out=$(ip netns exec "$NS_GEN" taskset -c 0 "$gen" eth0 "$2" $GEN_MAC "$seconds" \
        18446744073709551615 198.18.0.1 "$3")
    sleep 0.5
    after=$(sink_rx)
    sent=$(sed -n 's/^sent \([0-9]*\) frames in \([0-9.]*\) s.*/\1/p' <<<"$out")
    secs=$(sed -n 's/^sent \([0-9]*\) frames in \([0-9.]*\) s.*/\2/p' <<<"$out")
    rate[$1]=$(awk -v n=$((after - before)) -v s="$secs" 'BEGIN { printf "%.3f", n / s / 1e6 }')
    printf '%-16s offered %.3f Mpps, forwarded %s Mpps (%d of %d frames)\n' "$1" \
        "$(awk -v n="$sent" -v s="$secs" 'BEGIN { print n / s / 1e6 }')" "${rate[$1]}" \
        $((after - before)) "$sent"
}
# Lets a router learn the sink's MAC before the measurement, as ongoing traffic would.
warm() { # dst_mac dst_ip
    ip netns exec "$NS_GEN" "$gen" eth0 "$1" $GEN_MAC 1 10 198.18.0.1 "$2" >/dev/null
    sleep 1
}

pollux_config() { # snat?
    cat <<EOF
[[networks]]
id = "a"
network_type = "local"
[[networks]]
id = "b"
network_type = "local"
[[subnets]]
id = "sub-a"
network_id = "a"
cidr = "198.18.0.0/24"
gateway_ip = "198.18.0.254"
enable_dhcp = false
[[subnets]]
id = "sub-b"
network_id = "b"
cidr = "$([ "$1" = snat ] && echo 203.0.113.0/24 || echo 198.18.99.0/24)"
gateway_ip = "$([ "$1" = snat ] && echo 203.0.113.1 || echo 198.18.99.254)"
enable_dhcp = false
[[ports]]
id = "gen"
network_id = "a"
mac_address = "$GEN_MAC"
binding = { driver = "afxdp", interface = "${PREFIX}g" }
[[ports]]
id = "sink"
network_id = "b"
mac_address = "$SINK_MAC"
binding = { driver = "afxdp", interface = "${PREFIX}k" }
[[routers]]
id = "r1"
EOF
    if [ "$1" = snat ]; then
        echo 'interfaces = ["sub-a"]'
        echo 'external_gateway_info = { network_id = "b", external_fixed_ip = "203.0.113.10", enable_snat = true }'
    else
        echo 'interfaces = ["sub-a", "sub-b"]'
    fi
}

run_pollux() { # scenario dst_ip
    pollux_config "$1" >"$work/$1.toml"
    ip netns exec "$NS_SW" "$polluxd" --config "$work/$1.toml" --cores 1 \
        --socket "$work/$1.sock" --state-dir "$work/$1-state" 2>"$work/$1.log" &
    pids+=($!)
    for _ in $(seq 50); do grep -q ready "$work/$1.log" && break; sleep 0.1; done
    warm $ROUTER_MAC "$2"
    measure "pollux $1" $ROUTER_MAC "$2"
    kill -INT "${pids[-1]}"; wait "${pids[-1]}" || true
    grep -E "worker 0|dropped" "$work/$1.log" | sed 's/^/   /' | head -4
}

run_qrouter() { # scenario dst_ip
    local sw=(ip netns exec "$NS_SW")
    "${sw[@]}" sysctl -qw net.ipv4.ip_forward=1
    ip -n "$NS_SW" addr add 198.18.0.254/24 dev "${PREFIX}g"
    if [ "$1" = snat ]; then
        ip -n "$NS_SW" addr add 203.0.113.10/24 dev "${PREFIX}k"
        "${sw[@]}" iptables -t nat -A POSTROUTING -o "${PREFIX}k" -j SNAT --to-source 203.0.113.10
    else
        ip -n "$NS_SW" addr add 198.18.99.254/24 dev "${PREFIX}k"
    fi
    local mac
    mac=$(ip -n "$NS_SW" -o link show "${PREFIX}g" | sed -n 's/.*link\/ether \([0-9a-f:]*\).*/\1/p')
    warm "$mac" "$2"
    measure "qrouter $1" "$mac" "$2"
    "${sw[@]}" iptables -t nat -F
    ip -n "$NS_SW" addr flush dev "${PREFIX}g"
    ip -n "$NS_SW" addr flush dev "${PREFIX}k"
    "${sw[@]}" sysctl -qw net.ipv4.ip_forward=0
}

echo "== $seconds s per device; generator on CPU 0, polluxd's worker on CPU 1"
run_pollux routing 198.18.99.99
run_qrouter routing 198.18.99.99
run_pollux snat 203.0.113.99
run_qrouter snat 203.0.113.99

echo "== ratios (same run)"
awk -v pr="${rate[pollux routing]}" -v kr="${rate[qrouter routing]}" \
    -v ps="${rate[pollux snat]}" -v ks="${rate[qrouter snat]}" 'BEGIN {
    printf "routing: pollux / qrouter %.2f\n", (kr > 0 ? pr / kr : 0)
    printf "snat:    pollux / qrouter %.2f\n", (ks > 0 ? ps / ks : 0)
}'
