#!/usr/bin/env bash
# TCP between two namespaces (issue #17): through polluxd on TAP ports (TSO negotiated:
# 64 KiB super-frames carried whole) against two namespaces on a Linux bridge with veths,
# in one run, same machine, same iperf3 invocation:
#
#   pollux   namespaces t1, t2 on taps polluxd creates in namespace sw and the script
#            moves into them (as a container runtime would); one worker (--cores 1, on
#            the last CPU); ports without port security (the bridge filters nothing
#            either); the kernel's default offloads in t1 and t2
#   bridge   namespaces b1, b2 on veths into a Linux bridge in namespace br, default
#            offloads
#
# Each pair runs iperf3 -t SECONDS (-P STREAMS) both ways; the receiver's rate is
# printed, then polluxd's tap counters (super-frames received and sent whole).
#
# Usage: bench/tap-tcp.sh [--seconds 10] [--streams 1] [--mtu 1500]
# Needs root; installs iperf3 and python3 with apt-get when they are missing.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=10
streams=1
mtu=1500
while [ $# -gt 0 ]; do
    case $1 in
    --seconds) seconds=$2; shift 2 ;;
    --streams) streams=$2; shift 2 ;;
    --mtu) mtu=$2; shift 2 ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "tap-tcp: unknown argument $1 (try --help)" >&2; exit 2 ;;
    esac
done
[ "$(id -u)" -eq 0 ] || { echo "tap-tcp: needs root" >&2; exit 1; }
[ "$seconds" -ge 1 ] && [ "$seconds" -le 60 ] || { echo "tap-tcp: --seconds 1..60" >&2; exit 2; }
[ "$streams" -ge 1 ] && [ "$streams" -le 8 ] || { echo "tap-tcp: --streams 1..8" >&2; exit 2; }
. bench/need.sh
need iperf3:iperf3 python3:python3 ip:iproute2

cargo build --release -q -p pollux-control --bin polluxd -p pollux-testkit --bin pollux-netns
target_dir="${CARGO_TARGET_DIR:-target}"
polluxd=$PWD/$target_dir/release/polluxd

# The namespaces, made and held by the namespace kit, which deletes them (and whatever
# runs in them) when this script ends, also when it is killed.
. bench/kit.sh
trap kit_down EXIT
trap 'exit 130' INT TERM
kit_up "$PWD/$target_dir/release/pollux-netns" ns=sw ns=t1 ns=t2 ns=br ns=b1 ns=b2 \
    veth=b1/eth0,br/%b1 veth=b2/eth0,br/%b2
work=$(mktemp -d "/tmp/$PREFIX.XXXX")
cpu=$(( $(nproc) - 1 ))

# --- the Linux bridge
ip -n "$NS_BR" link add br0 type bridge
ip -n "$NS_BR" link set br0 up
for i in 1 2; do
    ip -n "$NS_BR" link set "${PREFIX}b$i" master br0
    ns_var=NS_B$i
    ip -n "${!ns_var}" link set eth0 mtu "$mtu"
    ip -n "$NS_BR" link set "${PREFIX}b$i" mtu "$mtu"
    ip -n "${!ns_var}" addr add "198.18.24.1$i/24" dev eth0
done

# --- polluxd on two taps
cat >"$work/pollux.toml" <<EOF
[[networks]]
id = "net"
network_type = "local"
mtu = $mtu

[[subnets]]
id = "sub"
network_id = "net"
cidr = "198.18.23.0/24"
enable_dhcp = false

[[ports]]
id = "t1"
network_id = "net"
mac_address = "fa:16:3e:17:00:11"
port_security_enabled = false
binding = { driver = "tap", interface = "${PREFIX}t1" }

[[ports]]
id = "t2"
network_id = "net"
mac_address = "fa:16:3e:17:00:12"
port_security_enabled = false
binding = { driver = "tap", interface = "${PREFIX}t2" }
EOF
ip netns exec "$NS_SW" "$polluxd" --config "$work/pollux.toml" --cores "$cpu" \
    --socket "$work/pollux.sock" --state-dir "$work/state" 2>"$work/pollux.log" &
ppid=$!
pids+=("$ppid")
for _ in $(seq 600); do
    grep -q ready "$work/pollux.log" && break
    kill -0 "$ppid" 2>/dev/null || { cat "$work/pollux.log" >&2; exit 1; }
    sleep 0.1
done
grep -q ready "$work/pollux.log" || { echo "tap-tcp: polluxd not ready after 60 s" >&2; exit 1; }
for i in 1 2; do
    ns_var=NS_T$i
    ip -n "$NS_SW" link set "${PREFIX}t$i" netns "${!ns_var}"
    ip -n "${!ns_var}" link set "${PREFIX}t$i" address "fa:16:3e:17:00:1$i" mtu "$mtu" up
    ip -n "${!ns_var}" addr add "198.18.23.1$i/24" dev "${PREFIX}t$i"
done

# Receiver's rate in Gbit/s of iperf3 from namespace $1 to address $3 in namespace $2.
run_iperf() { # from_ns to_ns to_ip
    ip netns exec "$2" timeout $((seconds + 30)) iperf3 -s -1 -B "$3" -p 5201 >/dev/null 2>&1 &
    local srv=$!
    pids+=("$srv")
    sleep 0.5
    ip netns exec "$1" timeout $((seconds + 20)) iperf3 -c "$3" -p 5201 -t "$seconds" \
        -P "$streams" -J --connect-timeout 3000 >"$work/iperf.json" || true
    wait "$srv" 2>/dev/null || true
    python3 -c 'import json,sys; e=json.load(open(sys.argv[1]))["end"]; print("%.2f" % (e["sum_received"]["bits_per_second"] / 1e9), e["sum_sent"].get("retransmits", "-"))' \
        "$work/iperf.json" 2>/dev/null || echo "failed -"
}

# CPU time (user + system, in clock ticks) of polluxd's worker thread so far.
worker_tid=$(grep -l pollux-worker /proc/"$ppid"/task/*/comm | head -1 | cut -d/ -f5)
worker_ticks() { awk '{ print $14 + $15 }' "/proc/$ppid/task/$worker_tid/stat"; }
# The same, of every CPU: busy ticks (all but idle and iowait).
busy_ticks() { awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 }' /proc/stat; }

echo "== iperf3 TCP -t $seconds -P $streams, MTU $mtu; polluxd worker on CPU $cpu"
echo "   (Gbit/s received, retransmits; CPU busy over the run, all CPUs, in % of one CPU)"
measure() { # label from_ns to_ns to_ip
    local b0 b1 r
    b0=$(busy_ticks)
    r=$(run_iperf "$2" "$3" "$4")
    b1=$(busy_ticks)
    printf '%-28s %s  cpu %s%%\n' "$1" "$r" $(( (b1 - b0) * 100 / $(getconf CLK_TCK) / (seconds + 1) ))
}
w0=$(worker_ticks)
if [ -n "${TAP_TCP_PERF:-}" ]; then
    perf record -q -g -t "$worker_tid" -o "$TAP_TCP_PERF" -- sleep "$seconds" 2>/dev/null &
fi
measure "pollux tap t1 -> t2" "$NS_T1" "$NS_T2" 198.18.23.12
measure "pollux tap t2 -> t1" "$NS_T2" "$NS_T1" 198.18.23.11
w1=$(worker_ticks)
echo "   polluxd's worker: $(( (w1 - w0) * 100 / $(getconf CLK_TCK) / (2 * seconds + 2) ))% of its CPU in system + user time (it polls: the rest is its loop)"
measure "linux bridge b1 -> b2" "$NS_B1" "$NS_B2" 198.18.24.12
measure "linux bridge b2 -> b1" "$NS_B2" "$NS_B1" 198.18.24.11

kill "$ppid"
wait "$ppid" 2>/dev/null || true
echo "== polluxd's tap counters"
grep -E "${PREFIX}t[12]" "$work/pollux.log" | grep -E "gso|tso" || tail -5 "$work/pollux.log"
