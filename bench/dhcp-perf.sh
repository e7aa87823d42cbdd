#!/usr/bin/env bash
# DHCPv4 server throughput (issue #7): polluxd's built-in server against dnsmasq set up as
# Neutron's DHCP agent sets it up, both driven by the same perfdhcp (Kea) invocation, in
# one run, on the same topology and CPU placement:
#
#   namespace c<server> (perfdhcp on CPU 0) ── veth ── namespace of the server under test
#
#   pollux   polluxd, one worker (--cores 1, CPU 1); the simulated hosts are N `mem` ports
#            with a MAC and a fixed IP each (static allocation, as Neutron's ports); the
#            perfdhcp side is an afxdp port on the veth
#   dnsmasq  dnsmasq with the options of Neutron's Dnsmasq driver (neutron/agent/linux/
#            dhcp.py, _build_cmdline_callback: hosts file `mac,fqdn,ip,set:port`, opts file, lease
#            file initialised with every host, `--dhcp-range=set:subnet-X,net,static,mask,
#            86400s`), the server address on its veth, pinned to CPU 1 (taskset)
#
# Every simulated client is a configured host: perfdhcp -M takes the hosts' MACs and
# picks one at random for every new exchange (DISCOVER-OFFER-REQUEST-ACK).
#
# Two things perfdhcp does not do as a VM does, and what this script does about them:
#   - perfdhcp always fills giaddr (it simulates a relay). Neutron networks have no relay
#     and polluxd refuses relayed messages, so -J gives it 0.0.0.0 as the only relay
#     address: the messages are then plain client broadcasts (hops stays 1).
#   - Replies to a client without an address go to its MAC and offered IP (RFC 2131),
#     which perfdhcp's packet socket on one interface does not accept. In the client
#     namespace an nftables ingress rule on the link rewrites the destination MAC and IP
#     of server->client DHCP to perfdhcp's interface (checksums updated) and forwards the
#     frames over a second veth (cout -> cin) where perfdhcp listens; perfdhcp's frames go
#     back the other way. This costs CPU 0 the same for both servers.
#
# polluxd's rate limits ([dhcp]) are raised to 1000000/s for this benchmark: port_* (all
# messages come in on one port), network_* and client_* (perfdhcp picks a random MAC per
# exchange, so at R exchanges/s over N hosts a MAC sends 2R/N messages/s, above the
# default 5/s per client). The drops polluxd counts are printed after every run.
#
# Usage: bench/dhcp-perf.sh [--hosts "1000 10000"] [--rates "1000 2000 5000"]
#                           [--seconds 10] [--dhcp-cpu any|0|1] [--profile]
#                           [--servers "pollux dnsmasq"] [--workdir /dev/shm]
#   --hosts    host counts (subnet 198.18.0.0/17, up to 30000 hosts)
#   --rates    offered exchanges per second (perfdhcp -r), each for --seconds (-p)
#   --dhcp-cpu where polluxd's DHCP thread may run (default any: polluxd's own choice)
#   --servers  which servers to measure (default "pollux dnsmasq")
#   --workdir  where the lease files live (polluxd's state directory, dnsmasq's lease
#              file): default /dev/shm (tmpfs), so that both measure the server, not the
#              fsync latency of a disk other jobs share; give a disk directory (/tmp) to
#              include it (both write their leases with fsync: dnsmasq on every change
#              on the thread that answers, polluxd once a second on its own lease thread)
#   --profile  perf record polluxd's DHCP thread and dnsmasq during each run, print the top
# Needs root; installs perfdhcp (kea-admin), dnsmasq (dnsmasq-base), nft (nftables) and,
# with --profile, perf (linux-perf) with apt-get when they are missing.
set -euo pipefail
cd "$(dirname "$0")/.."

hosts_list="1000 10000"
rates="1000 2000 5000"
seconds=10
dhcp_cpu=any
profile=0
servers="pollux dnsmasq"
workbase=/dev/shm
while [ $# -gt 0 ]; do
    case $1 in
    --hosts) hosts_list=$2; shift 2 ;;
    --rates) rates=$2; shift 2 ;;
    --seconds) seconds=$2; shift 2 ;;
    --dhcp-cpu) dhcp_cpu=$2; shift 2 ;;
    --profile) profile=1; shift ;;
    --servers) servers=$2; shift 2 ;;
    --workdir) workbase=$2; shift 2 ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "dhcp-perf: unknown argument $1 (try --help)" >&2; exit 2 ;;
    esac
done
[ "$(id -u)" -eq 0 ] || { echo "dhcp-perf: needs root" >&2; exit 1; }
. bench/need.sh
need perfdhcp:kea-admin dnsmasq:dnsmasq-base nft:nftables python3:python3 ip:iproute2 \
    taskset:util-linux awk:gawk
[ "$profile" = 0 ] || need perf:linux-perf
for n in $hosts_list; do
    [ "$n" -ge 1 ] && [ "$n" -le 30000 ] || { echo "dhcp-perf: --hosts $n: 1..30000" >&2; exit 2; }
done

cargo build --release -q -p pollux-control --bin polluxd --bin polluxctl \
    -p pollux-testkit --bin pollux-netns
target_dir="${CARGO_TARGET_DIR:-target}"
polluxd=$PWD/$target_dir/release/polluxd
polluxctl=$PWD/$target_dir/release/polluxctl

[ -d "$workbase" ] || workbase=/tmp
CLIENT_MAC=fa:16:3e:ff:ff:fe
# The namespaces, made and held by the namespace kit: it deletes them (and whatever still
# runs in them) when this script ends, also when it is killed. sw and dm hold the servers
# under test; cp and cd are their clients: eth0 is the link to the server, perfdhcp
# listens on cin, whose peer cout forwards to and from eth0 (below). Sets PREFIX, NS_SW,
# NS_DM, NS_CP and NS_CD.
. bench/kit.sh
trap kit_down EXIT
trap 'exit 130' INT TERM
kit_up "$PWD/$target_dir/release/pollux-netns" ns=sw ns=dm ns=cp ns=cd \
    veth=sw/%p,cp/eth0 veth=dm/%d,cd/eth0 \
    "veth=cp/cin@$CLIENT_MAC,cp/cout" "veth=cd/cin@$CLIENT_MAC,cd/cout"
work=$(mktemp -d "$workbase/$PREFIX.XXXX")
# dnsmasq reads its hosts and opts files after dropping root (as Neutron's does).
chmod 755 "$work"
# Addresses (all in 198.18.0.0/15): subnet 198.18.0.0/17, gateway .0.1, DNS .0.53, hosts
# from 198.18.1.0 on, perfdhcp's interface 198.18.127.250, the server 198.18.127.254 (the
# subnet's last host address: polluxd's default dhcp_server_ip; dnsmasq's port address).
NET=198.18.0.0
MASK=255.255.128.0
PLEN=17
GW=198.18.0.1
DNS=198.18.0.53
CLIENT_IP=198.18.127.250
SERVER_IP=198.18.127.254
LEASE=86400
DOMAIN=openstacklocal
SUBNET_ID=3f1c0a52-9e4b-4bb4-8a51-7d3c0d5e0001


# Addresses and forwarding in the client namespace of one server: perfdhcp listens on
# cin, whose peer cout forwards to and from eth0, the link to the server.
setup_client() { # ns
    local c=$1
    ip -n "$c" addr add "$CLIENT_IP/$PLEN" dev cin
    local cin_mac
    cin_mac=$(ip netns exec "$c" cat /sys/class/net/cin/address)
    ip netns exec "$c" nft -f - <<EOF
table netdev perfdhcp {
    chain from_server {
        type filter hook ingress device "eth0" priority 0;
        udp sport 67 udp dport 68 ether daddr set $cin_mac ip daddr set $CLIENT_IP
        fwd to "cout"
    }
    chain from_client {
        type filter hook ingress device "cout" priority 0;
        fwd to "eth0"
    }
}
EOF
}

setup_client "$NS_CP"
setup_client "$NS_CD"
ip -n "$NS_DM" addr add "$SERVER_IP/$PLEN" dev "${PREFIX}d"
echo 0.0.0.0 >"$work/relay"

# Host i (0-based): 198.18.1.0 + i, MAC fa:16:3e + (i + 1), Neutron's name host-a-b-c-d.
gen_hosts() { # n
    awk -v n="$1" 'BEGIN {
        for (i = 0; i < n; i++) {
            a = 256 + i
            ip = sprintf("198.18.%d.%d", int(a / 256), a % 256)
            m = i + 1
            mac = sprintf("fa:16:3e:%02x:%02x:%02x", int(m / 65536) % 256, int(m / 256) % 256, m % 256)
            name = ip; gsub(/\./, "-", name)
            print i, mac, ip, "host-" name
        }
    }'
}

pollux_config() { # hosts_file
    cat <<EOF
[dhcp]
port_rate = 1000000
port_burst = 1000000
client_rate = 1000000
client_burst = 1000000
network_rate = 1000000
network_burst = 1000000

[[networks]]
id = "net"
network_type = "local"
mtu = 1500
dns_domain = "$DOMAIN"

[[subnets]]
id = "$SUBNET_ID"
network_id = "net"
cidr = "$NET/$PLEN"
gateway_ip = "$GW"
enable_dhcp = true
dns_nameservers = ["$DNS"]
dhcp_lease_duration = $LEASE

[[ports]]
id = "perfdhcp"
network_id = "net"
mac_address = "$CLIENT_MAC"
binding = { driver = "afxdp", interface = "${PREFIX}p" }
EOF
    awk -v s="$SUBNET_ID" '{
        printf "\n[[ports]]\nid = \"h%d\"\nnetwork_id = \"net\"\nmac_address = \"%s\"\n", $1, $2
        printf "fixed_ips = [{ subnet_id = \"%s\", ip_address = \"%s\" }]\n", s, $3
        printf "dns_name = \"%s\"\nbinding = { driver = \"mem\" }\n", $4
    }' "$1"
}

# Neutron's files for dnsmasq: hosts (mac,fqdn,ip,set:port), addn_hosts, opts, and the
# lease file it writes before the first start with a lease for every host.
dnsmasq_files() { # hosts_file dir
    local now
    now=$(date +%s)
    awk -v d="$DOMAIN" '{ printf "%s,%s.%s,%s,set:port-h%d\n", $2, $4, d, $3, $1 }' "$1" >"$2/host"
    awk -v d="$DOMAIN" '{ printf "%s\t%s.%s %s\n", $3, $4, d, $4 }' "$1" >"$2/addn_hosts"
    printf 'tag:subnet-%s,option:dns-server,%s\ntag:subnet-%s,option:router,%s\n' \
        "$SUBNET_ID" "$DNS" "$SUBNET_ID" "$GW" >"$2/opts"
    awk -v t=$((now + LEASE)) '{ printf "%d %s %s %s *\n", t, $2, $3, $4 }' "$1" >"$2/leases"
}

cpu_ns() { # /proc/PID[/task/TID]: nanoseconds on a CPU (schedstat, not tick-sampled)
    cut -d' ' -f1 "/proc/$1/schedstat" 2>/dev/null || echo 0
}

# "<ms> ms CPU, <us> us per message" from two cpu_ns readings and a message count.
cpu_per_msg() { # ns_before ns_after messages
    awk -v a="$1" -v b="$2" -v n="$3" 'BEGIN {
        printf "%d ms CPU", (b - a) / 1e6
        if (n > 0) printf ", %.1f us per message", (b - a) / 1e3 / n }'
}

link_rx() { # client ns: rx_packets of eth0 (from the server) and of cin (to perfdhcp)
    ip netns exec "$1" cat /sys/class/net/eth0/statistics/rx_packets /sys/class/net/cin/statistics/rx_packets | paste -sd' '
}

udp_counters() { # ns: UDP InDatagrams RcvbufErrors OutDatagrams
    ip netns exec "$1" awk '/^Udp:/ { if (h) { print $2, $6, $5; exit } h = 1 }' /proc/net/snmp
}

switches() { # pid tid: voluntary involuntary
    awk '/^voluntary_ctxt_switches/ { v = $2 } /^nonvoluntary_ctxt_switches/ { n = $2 }
        END { print v, n }' "/proc/$1/task/$2/status"
}

received_delta() { # before.json after.json: messages the DHCP thread took off the rings
    python3 -c 'import json, sys; a, b = (json.load(open(p))["dhcp"]["received"] for p in sys.argv[1:]); print(b - a)' "$1" "$2"
}

stats_json() { "$polluxctl" --socket "$work/pollux.sock" --json show stats; }

# Prints the delta of polluxd's counters between two `show stats` JSON files.
stats_delta() { # before after
    python3 - "$1" "$2" <<'EOF'
import json, sys
a, b = (json.load(open(p)) for p in sys.argv[1:3])
def flat(d, prefix=""):
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flat(v, f"{prefix}{k}."))
        elif isinstance(v, (int, float)):
            out[prefix + k] = v
    return out
fa, fb = flat(a.get("dhcp", {}), "dhcp."), flat(b.get("dhcp", {}), "dhcp.")
fa.update(flat(a.get("drops", {}), "drops."))
fb.update(flat(b.get("drops", {}), "drops."))
for w in ("rx_packets", "tx_packets", "dropped", "busy_loops", "busy_ns"):
    fa["worker." + w] = sum(x.get(w, 0) for x in a.get("workers", []))
    fb["worker." + w] = sum(x.get(w, 0) for x in b.get("workers", []))
d = {k: fb[k] - fa.get(k, 0) for k in fb if fb[k] - fa.get(k, 0)}
dhcp = " ".join(f"{k[5:]}={v}" for k, v in sorted(d.items()) if k.startswith("dhcp.") and not k.startswith("dhcp.drops."))
ddrops = " ".join(f"{k[11:]}={v}" for k, v in sorted(d.items()) if k.startswith("dhcp.drops."))
wdrops = " ".join(f"{k[6:]}={v}" for k, v in sorted(d.items()) if k.startswith("drops."))
work = " ".join(f"{k[7:]}={v}" for k, v in sorted(d.items()) if k.startswith("worker."))
if d.get("worker.busy_loops"):
    work += f" ({d.get('worker.busy_ns', 0) / d['worker.busy_loops'] / 1000:.1f} us per busy pass)"
print(f"   polluxd dhcp: {dhcp or '-'}")
print(f"   polluxd dhcp not answered: {ddrops or 'none'}")
print(f"   polluxd worker drops: {wdrops or 'none'}; worker: {work or '-'}")
EOF
}

# One perfdhcp run against the server behind namespace $2; sets the globals ex_rate,
# drop_pct, sent, acked.
declare -A res_rate res_drop
run_perfdhcp() { # label client_ns hosts rate
    local out r0 r1
    r0=$(link_rx "$2")
    out=$(ip netns exec "$2" taskset -c 0 perfdhcp -4 -l cin -L 68 -J "$work/relay" \
        -M "$work/macs" -R "$3" -r "$4" -p "$seconds" -n $(($4 * seconds)) -W 500000 2>&1) || true
    echo "$out" >"$work/perfdhcp-$1-$3-$4.log"
    r1=$(link_rx "$2")
    read -r ex_rate sent acked < <(awk '
        /^Rate:/ { rate = $2 }
        /Statistics for: DISCOVER-OFFER/ { s = "do" }
        /Statistics for: REQUEST-ACK/ { s = "ra" }
        /^sent packets:/ && s == "do" { sent = $3 }
        /^received packets:/ && s == "ra" { acked = $3 }
        END { printf "%.0f %d %d\n", rate, sent, acked }' <<<"$out")
    drop_pct=$(awk -v s="$sent" -v a="$acked" 'BEGIN { printf "%.1f", (s > 0 ? 100 * (s - a) / s : 0) }')
    res_rate[$1,$3,$4]=$ex_rate
    res_drop[$1,$3,$4]=$drop_pct
    printf '%-8s %6d hosts, offered %6d/s: %7d exchanges/s, %d DISCOVERs sent, %d ACKs (%s%% not completed)\n' \
        "$1" "$3" "$4" "$ex_rate" "$sent" "$acked" "$drop_pct"
    echo "   client side: $(awk -v a="$r0" -v b="$r1" 'BEGIN { split(a, x); split(b, y)
        printf "%d frames from the server arrived, %d reached perfdhcp'"'"'s interface", y[1] - x[1], y[2] - x[2] }')"
    grep -E '^(Malformed|orphans|rejected)' <<<"$out" | sort | uniq -c | awk '$1 && $NF != 0' | sed 's/^ */   perfdhcp: /' || true
}

echo "== placement: perfdhcp on CPU 0; polluxd worker on CPU 1 (--cores 1), its DHCP thread on CPU $dhcp_cpu;"
echo "   dnsmasq on CPU 1 (taskset); veth receive work runs on the sending CPU for both servers"
echo "== $seconds s per rate (perfdhcp -p $seconds), rates: $rates; host counts: $hosts_list"
echo "== lease files in $work ($(stat -f -c %T "$work"))"
echo "== client: ip netns exec <client ns> taskset -c 0 perfdhcp -4 -l cin -L 68 -J <file: 0.0.0.0>" \
    "-M <file: the hosts' MACs> -R <hosts> -r <rate> -p $seconds -n <rate * $seconds> -W 500000"
grep -c ^processor /proc/cpuinfo | sed 's/^/== CPUs: /'
echo "== load before: $(cut -d' ' -f1-3 /proc/loadavg) (other jobs on this machine skew absolute rates; compare the ratios)"

for hosts in $hosts_list; do
    gen_hosts "$hosts" >"$work/hosts"
    awk '{ print $2 }' "$work/hosts" >"$work/macs"

    # --- pollux
    if [[ " $servers " == *" pollux "* ]]; then
    pollux_config "$work/hosts" >"$work/pollux.toml"
    rm -rf "$work/pollux-state"
    t0=$(date +%s.%N)
    ip netns exec "$NS_SW" "$polluxd" --config "$work/pollux.toml" --cores 1 \
        --socket "$work/pollux.sock" --state-dir "$work/pollux-state" 2>"$work/pollux.log" &
    ppid=$!
    pids+=("$ppid")
    for _ in $(seq 1200); do
        grep -q ready "$work/pollux.log" && break
        kill -0 "$ppid" 2>/dev/null || { cat "$work/pollux.log" >&2; exit 1; }
        sleep 0.1
    done
    grep -q ready "$work/pollux.log" || { echo "dhcp-perf: polluxd not ready after 120 s" >&2; exit 1; }
    t1=$(date +%s.%N)
    printf '== pollux, %d hosts (%d mem ports + 1 afxdp): ready in %.1f s, RSS %s MB\n' "$hosts" "$hosts" \
        "$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')" \
        "$(awk '/VmRSS/ { printf "%.0f", $2 / 1024 }' "/proc/$ppid/status")"
    dhcp_tid=$(grep -l pollux-slowpath /proc/"$ppid"/task/*/comm | head -1 | cut -d/ -f5)
    if [ "$dhcp_cpu" != any ]; then taskset -pc "$dhcp_cpu" "$dhcp_tid" >/dev/null; fi
    for rate in $rates; do
        stats_json >"$work/s0.json"
        c0=$(cpu_ns "$ppid/task/$dhcp_tid")
        sw0=$(switches "$ppid" "$dhcp_tid")
        if [ "$profile" = 1 ]; then
            perf record -q -g -t "$dhcp_tid" -o "$work/perf.data" -- sleep "$seconds" 2>/dev/null &
            perf_pid=$!
        fi
        run_perfdhcp pollux "$NS_CP" "$hosts" "$rate"
        c1=$(cpu_ns "$ppid/task/$dhcp_tid")
        sw1=$(switches "$ppid" "$dhcp_tid")
        if [ "$profile" = 1 ]; then
            wait "$perf_pid" || true
            perf report -i "$work/perf.data" --stdio --no-children --percent-limit 2 -g none 2>/dev/null |
                grep -E '^ +[0-9]' | head -15 | sed 's/^/   perf: /'
        fi
        stats_json >"$work/s1.json"
        stats_delta "$work/s0.json" "$work/s1.json"
        echo "   polluxd DHCP thread: $(cpu_per_msg "$c0" "$c1" "$(received_delta "$work/s0.json" "$work/s1.json")")," \
            "$(awk -v a="$sw0" -v b="$sw1" 'BEGIN { split(a, x); split(b, y)
                printf "%d voluntary + %d involuntary context switches", y[1] - x[1], y[2] - x[2] }')," \
            "last on CPU $(awk '{ print $39 }' "/proc/$ppid/task/$dhcp_tid/stat")"
    done
    echo "   polluxd leases held: $("$polluxctl" --socket "$work/pollux.sock" show leases | grep -c 198.18 || true)"
    kill -INT "$ppid"
    wait "$ppid" || true
    fi

    # --- dnsmasq (Neutron's command line; -k instead of daemonising under the agent)
    [[ " $servers " == *" dnsmasq "* ]] || continue
    dm=$work/dnsmasq
    rm -rf "$dm"
    mkdir -p "$dm"
    dnsmasq_files "$work/hosts" "$dm"
    ip netns exec "$NS_DM" taskset -c 1 dnsmasq -k \
        --no-hosts --no-resolv --pid-file="$dm/pid" \
        --dhcp-hostsfile="$dm/host" --addn-hosts="$dm/addn_hosts" \
        --dhcp-optsfile="$dm/opts" --dhcp-leasefile="$dm/leases" \
        --dhcp-match=set:ipxe,175 --dhcp-userclass=set:ipxe6,iPXE \
        --local-service --bind-dynamic --interface="${PREFIX}d" \
        --dhcp-range="set:subnet-$SUBNET_ID,$NET,static,$MASK,${LEASE}s" \
        --dhcp-option-force=option:mtu,1500 \
        --dhcp-lease-max=$((1 << (32 - PLEN))) \
        --conf-file=/dev/null --domain=$DOMAIN 2>"$dm/log" &
    dpid=$!
    pids+=("$dpid")
    for _ in $(seq 100); do [ -s "$dm/pid" ] && break; sleep 0.1; done
    sleep 0.5
    kill -0 "$dpid" 2>/dev/null || { cat "$dm/log" >&2; exit 1; }
    printf '== dnsmasq %s, %d hosts: RSS %s MB\n' "$(dnsmasq --version | awk 'NR == 1 { print $3 }')" "$hosts" \
        "$(awk '/VmRSS/ { printf "%.0f", $2 / 1024 }' "/proc/$dpid/status")"
    for rate in $rates; do
        c0=$(cpu_ns "$dpid")
        u0=$(udp_counters "$NS_DM")
        if [ "$profile" = 1 ]; then
            perf record -q -g -p "$dpid" -o "$work/perf.data" -- sleep "$seconds" 2>/dev/null &
            perf_pid=$!
        fi
        run_perfdhcp dnsmasq "$NS_CD" "$hosts" "$rate"
        c1=$(cpu_ns "$dpid")
        u1=$(udp_counters "$NS_DM")
        if [ "$profile" = 1 ]; then
            wait "$perf_pid" || true
            perf report -i "$work/perf.data" --stdio --no-children --percent-limit 2 -g none 2>/dev/null |
                grep -E '^ +[0-9]' | head -15 | sed 's/^/   perf: /'
        fi
        echo "   dnsmasq: $(cpu_per_msg "$c0" "$c1" "$(awk -v a="$u0" -v b="$u1" 'BEGIN { split(a, x); split(b, y); print y[1] - x[1] }')");" \
            "its namespace's UDP: $(awk -v a="$u0" -v b="$u1" 'BEGIN { split(a, x); split(b, y)
                printf "InDatagrams=%d RcvbufErrors=%d OutDatagrams=%d", y[1] - x[1], y[2] - x[2], y[3] - x[3] }')"
    done
    kill "$dpid"
    wait "$dpid" || true
done

echo
echo "== load after: $(cut -d' ' -f1-3 /proc/loadavg)"
echo
echo "| server | hosts | offered/s | exchanges/s | not completed % | pollux/dnsmasq |"
echo "|---|---:|---:|---:|---:|---:|"
for hosts in $hosts_list; do
    for rate in $rates; do
        p=${res_rate[pollux,$hosts,$rate]:-}
        d=${res_rate[dnsmasq,$hosts,$rate]:-}
        ratio=$(awk -v p="${p:-0}" -v d="${d:-0}" 'BEGIN { if (d > 0) printf "%.2f", p / d; else print "-" }')
        [ -z "$p" ] || echo "| pollux | $hosts | $rate | $p | ${res_drop[pollux,$hosts,$rate]} | $ratio |"
        [ -z "$d" ] || echo "| dnsmasq | $hosts | $rate | $d | ${res_drop[dnsmasq,$hosts,$rate]} | |"
    done
done
