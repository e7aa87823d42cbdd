#!/usr/bin/env bash
# The main job: polluxd switching real traffic between network namespaces.
#
#   VM namespaces a1, a2 (network A, VLAN 100) and b1 (network B, VLAN 200; same subnet
#   198.18.10.0/24 as A) ── veth ── polluxd (namespace "host") ── uplink veth, 802.1Q
#   trunk ── a second polluxd as top-of-rack switch (namespace "tor") ── physical
#   servers s1 (VLAN 100) and s2 (VLAN 200).
#
# Runs ping and a bounded iperf3 between VMs and across the VLAN trunk, shows that the
# two networks cannot reach each other although their addresses overlap, prints a
# summary, removes everything it made and exits 0 only if every check passed.
#
# Usage: scripts/demo.sh [--keep]    --keep leaves the topology and both daemons running.
# Needs root (namespaces, XDP) and installs iproute2, iputils-ping, iperf3 and ethtool if
# missing.
set -euo pipefail
cd "$(dirname "$0")/.."

keep=0
case "${1:-}" in
    --keep) keep=1 ;;
    "") ;;
    *) echo "usage: $0 [--keep]" >&2; exit 2 ;;
esac
[ "$(id -u)" -eq 0 ] || { echo "demo: needs root (network namespaces, XDP)" >&2; exit 1; }

missing=()
for tool in ip:iproute2 ping:iputils-ping iperf3:iperf3 ethtool:ethtool; do
    command -v "${tool%%:*}" >/dev/null || missing+=("${tool#*:}")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "== installing ${missing[*]}"
    apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null
fi

echo "== building polluxd (release)"
cargo build --release -q -p pollux-control --bin polluxd --bin polluxctl
polluxd=$PWD/target/release/polluxd
polluxctl=$PWD/target/release/polluxctl

# Per-run prefix: short enough for 15-byte interface names, unique per run.
P="pd$(printf '%04x' $(( $$ % 65536 )))"
work=$(mktemp -d "/tmp/$P.XXXX")
namespaces=(host tor a1 a2 b1 s1 s2)
pids=()

cleanup() {
    for pid in "${pids[@]}"; do kill -INT "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    for ns in "${namespaces[@]}"; do ip netns del "$P$ns" 2>/dev/null || true; done
    rm -rf "$work"
}
if [ "$keep" -eq 0 ]; then trap cleanup EXIT; else trap 'echo "demo: setup failed, cleaning up"; cleanup' ERR; fi

ns() { ip netns exec "$P$1" "${@:2}"; }

echo "== topology $P: namespaces ${namespaces[*]/#/$P}"
for n in "${namespaces[@]}"; do
    ip netns add "$P$n"
    ip -n "$P$n" link set lo up
    # No IPv6: its link-local chatter would only add noise to the counters.
    ip netns exec "$P$n" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1
done
# veth with the switch end in namespace $1 (named $P$2) and the other end in $3 (eth0).
link() {
    ip -n "$P$1" link add "$P$2" type veth peer name eth0 netns "$P$3"
    ip -n "$P$1" link set "$P$2" up
    ip -n "$P$3" link set eth0 address "$4"
    ip -n "$P$3" link set eth0 up
    # The guest keeps the kernel's default offloads: its veth leaves TCP/UDP checksums
    # partial (only the pseudo-header sum filled in) and polluxd completes them, as the
    # device would have.
    [ -z "${5:-}" ] || ip -n "$P$3" addr add "$5" dev eth0
}
link host a1 a1 fa:16:3e:0a:00:11 198.18.10.11/24
link host a2 a2 fa:16:3e:0a:00:12 198.18.10.12/24
link host b1 b1 fa:16:3e:0b:00:13 198.18.10.13/24
link tor s1 s1 02:00:00:00:10:21 198.18.10.21/24
link tor s2 s2 02:00:00:00:20:22 198.18.10.22/24
ip -n "${P}host" link add "${P}up" type veth peer name "${P}tr" netns "${P}tor"
ip -n "${P}host" link set "${P}up" up
ip -n "${P}tor" link set "${P}tr" up

for role in host tor; do
    sed "s/@P@/$P/g" "configs/demo-$role.toml" > "$work/$role.toml"
done
start() { # namespace cpu
    # Not through `ns`: $! must be polluxd itself (ip netns exec execs it), so that the
    # SIGINT sent at the end reaches it rather than a waiting subshell.
    ip netns exec "$P$1" "$polluxd" --config "$work/$1.toml" --cores "$2" --socket "$work/$1.sock" --state-dir "$work/$1-state" >"$work/$1.log" 2>&1 &
    pids+=($!)
    for _ in $(seq 50); do
        grep -q "ready" "$work/$1.log" && return 0
        kill -0 "${pids[-1]}" 2>/dev/null || break
        sleep 0.1
    done
    cat "$work/$1.log" >&2
    echo "demo: polluxd in $P$1 did not start" >&2
    exit 1
}
cpus=$(nproc)
start host $(( cpus - 1 ))
start tor 0
sed 's/^/   host /' "$work/host.log"
sed 's/^/   tor  /' "$work/tor.log"

results=()
failed=0
record() { # ok? description detail
    if [ "$1" = ok ]; then results+=("  ok    $2 $3"); else results+=("  FAIL  $2 $3"); failed=1; fi
    echo "${results[-1]}"
}
ping_check() { # expect(reach|isolated) from-ns to-ip description
    local out received
    out=$(ns "$2" ping -c 5 -i 0.2 -W 1 "$3" 2>&1 || true)
    received=$(sed -n 's/.* \([0-9]*\) received.*/\1/p' <<<"$out")
    received=${received:-0}
    if [ "$1" = reach ] && [ "$received" -eq 5 ]; then record ok "$4" "(5/5 replies)"
    elif [ "$1" = isolated ] && [ "$received" -eq 0 ]; then record ok "$4" "(0/5 replies, as it must be)"
    else record fail "$4" "($received/5 replies)"; fi
}
iperf_check() { # from-ns to-ns to-ip description
    ns "$2" iperf3 -s -1 -D -I "$work/iperf-$2.pid" >/dev/null 2>&1
    sleep 0.3
    local bps
    bps=$(ns "$1" iperf3 -c "$3" -t 3 --connect-timeout 2000 -J 2>/dev/null \
        | python3 -c 'import json,sys; print(int(json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"]))' 2>/dev/null || echo 0)
    kill "$(cat "$work/iperf-$2.pid" 2>/dev/null)" 2>/dev/null || true
    if [ "$bps" -gt 0 ]; then record ok "$4" "($(awk -v b="$bps" 'BEGIN { printf "%.2f Gbit/s", b / 1e9 }'))"
    else record fail "$4" "(no throughput)"; fi
}

echo "== traffic"
ping_check reach a1 198.18.10.12 "network A: VM a1 -> VM a2 on the same host"
ping_check reach a1 198.18.10.21 "network A: VM a1 -> server s1 across the VLAN 100 trunk"
ping_check reach b1 198.18.10.22 "network B: VM b1 -> server s2 across the VLAN 200 trunk"
ping_check isolated a1 198.18.10.13 "isolation: VM a1 (A) -> VM b1 (B), same subnet"
ping_check isolated a2 198.18.10.22 "isolation: VM a2 (A) -> server s2 (VLAN 200)"
iperf_check a1 a2 198.18.10.12 "iperf3 3 s, VM a1 -> VM a2:"
iperf_check a1 s1 198.18.10.21 "iperf3 3 s, VM a1 -> server s1 (tagged on the trunk):"

echo "== the host's view through its control socket (polluxctl)"
for what in ports fdb; do
    echo "   polluxctl show $what"
    "$polluxctl" --socket "$work/host.sock" show "$what" | sed 's/^/     /' \
        || { failed=1; results+=("  FAIL  polluxctl show $what"); }
done

if [ "$keep" -eq 1 ]; then
    printf '%s\n' "${results[@]}"
    echo "== left running (prefix $P). Explore, e.g.:"
    echo "   ip netns exec ${P}a1 ping 198.18.10.21"
    echo "   cat $work/host.log"
    echo "   $polluxctl --socket $work/host.sock show stats"
    echo "   clean up: kill -INT ${pids[*]}; for n in ${namespaces[*]}; do ip netns del $P\$n; done; rm -rf $work"
    exit "$failed"
fi

for pid in "${pids[@]}"; do kill -INT "$pid"; done
for pid in "${pids[@]}"; do wait "$pid" || { failed=1; results+=("  FAIL  polluxd $pid exited with an error"); }; done
pids=()
echo "== what polluxd counted (host, then top-of-rack)"
grep -v "ready\|mode" "$work/host.log" | sed 's/^/   /'
grep -v "ready\|mode" "$work/tor.log" | sed 's/^/   /'
echo "== summary"
printf '%s\n' "${results[@]}"
if [ "$failed" -eq 0 ]; then echo "demo OK"; else echo "demo FAILED"; fi
exit "$failed"
