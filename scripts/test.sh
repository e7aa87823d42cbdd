#!/usr/bin/env bash
# Runs every check and test of the workspace. Works on a fresh machine: installs the
# system packages it needs first (as root, with apt-get), and cargo fetches the crates.
set -euo pipefail
cd "$(dirname "$0")/.."
# Each section says when it starts, so a slow run shows where its time went.
section() { printf "== %s (at %dm%02ds)\n" "$1" $((SECONDS / 60)) $((SECONDS % 60)); }

packages=(valgrind iproute2 iputils-ping iperf3 tcpdump ethtool openvswitch-switch python3 prometheus traceroute udhcpc isc-dhcp-client dhcpcd5 arping dnsmasq-base ipset iptables conntrack curl protobuf-compiler etcd-server neutron-server python3-neutron python3-etcd3gw python3-pip python3-setuptools man-db qemu-system-x86 linux-image-amd64 busybox-static cpio dpdk-dev openvswitch-switch-dpdk)
missing=()
for p in "${packages[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "missing packages: ${missing[*]} (run as root, or install them)" >&2
        exit 1
    fi
    section "installing ${missing[*]}"
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"
fi
for c in rustfmt clippy; do
    rustup component list --installed 2>/dev/null | grep -q "^$c" || rustup component add "$c"
done

section "cargo fmt"
cargo fmt --all -- --check
section "cargo clippy"
cargo clippy --workspace --all-targets -q -- -D warnings
if [ "$(id -u)" -eq 0 ]; then
    # The root e2e tests run the release daemon (tests/src/daemon.rs builds it on first
    # use); built here, its minutes show as their own section instead of inside one test.
    section "release build of polluxd and polluxctl (for the e2e tests)"
    cargo build --release -q -p pollux-control --bin polluxd --bin polluxctl
fi
section "cargo test"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
# Tests that need root (network namespaces, XDP) are #[ignore = "needs root: ..."]: as
# root run them too; as another user they are listed as ignored, with the reason.
if [ "$(id -u)" -eq 0 ]; then
    cargo test --workspace -- --include-ignored 2>&1 | tee "$log"
else
    cargo test --workspace 2>&1 | tee "$log"
fi
section "ML2 mechanism driver unit tests (the interpreter neutron-server runs on)"
/usr/bin/python3 -m unittest discover -s neutron -t neutron
section "benchmarks compile and run once"
cargo bench -q -p pollux-bench --benches -- --test
section "config.apply latency, small state (informational)"
bench/apply-latency.sh --ports 100 --networks 10 --routers 10 --changes 20 --keep-going-secs 1
section "instructions per packet (informational)"
bench/instructions.sh

section "benchmark harness smoke run (pollux-bench compare, 1 s trials, bounded)"
if [ "$(id -u)" -eq 0 ]; then
    cargo build -q -p pollux-control --bin polluxd --bin polluxctl -p pollux-bench --bin pollux-bench
    bench_json=$(mktemp --suffix=.json)
    timeout 90 target/debug/pollux-bench compare --trial-secs 1 --sizes 64 --max-trials 3 \
        --duts pollux,xsk-fwd,xdp-redirect --scenarios l2-p2p --out "$bench_json" >/dev/null
    python3 - "$bench_json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
r = d["results"]
assert {e["dut"] for e in r} == {"pollux", "xsk-fwd", "xdp-redirect"}, r
for e in r:
    assert e["frame_size"] == 64, e
    # A rate is either found (> 0) or null with the reason and the loss figures: never 0.
    for k in ("ndr", "pdr"):
        v, f = e[k + "_pps"], e[k + "_search"]
        assert (v is None and f["note"].startswith("none found") and f["lowest_failure"]) or v > 0, (e["dut"], k, f)
    if e["ndr_pps"] is not None:
        assert e["pdr_pps"] >= e["ndr_pps"], e
    o = e["overload_trial"]
    assert o["sent"] > 0 and o["received_pps"] > 0, (e["dut"], o)
    assert e["all_trials"] and e["trials"] == len(e["all_trials"]), e["dut"]
    assert all(isinstance(t["generator_limited"], bool) for t in e["all_trials"]), e["dut"]
assert "ovs-afxdp" not in r[0].get("ratios", {}) and {"xsk-fwd", "xdp-redirect"} <= set(r[0]["ratios"]), r[0]
assert any("ready" in n for n in d["dut_notes"]["l2-p2p/xsk-fwd"]), d["dut_notes"]
assert d["placement"], d
mpps = lambda v: "none" if v is None else "%.3f Mpps" % (v / 1e6)
print("bench smoke: " + ", ".join("%s NDR %s" % (e["dut"], mpps(e["ndr_pps"])) for e in r))
PY
    rm -f "$bench_json" "${bench_json%.json}.svg"
else
    echo "skipped: needs root (network namespaces, XDP)"
fi

section "benchmark harness smoke run, SNAT through a router (pollux, linux-router; bounded, ~5 s)"
if [ "$(id -u)" -eq 0 ]; then
    bench_json=$(mktemp --suffix=.json)
    # Whether each router forwards and translates (checked at the sink before the search),
    # not how fast; OVN is left out (its daemons take longer to start than CI can spare).
    timeout 60 target/debug/pollux-bench compare --trial-secs 0.5 --sizes 64 --max-trials 2 \
        --max-rate 50000 --duts pollux,linux-router --scenarios snat --out "$bench_json" >/dev/null
    python3 - "$bench_json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
r = d["results"]
assert not [n for n in d["notes"] if "failed" in n], d["notes"]
assert {e["dut"] for e in r} == {"pollux", "linux-router"}, (r, d["notes"])
for e in r:
    key = "snat/" + e["dut"]
    assert any(n.startswith("forwarding checked") and "from 203.0.113.10" in n for n in d["dut_notes"][key]), d["dut_notes"][key]
    # Every frame that reached the sink carried the translated source.
    assert all(t["bad_source"] == 0 for t in e["all_trials"]), e["dut"]
    assert e["overload_trial"]["received_pps"] > 0, (e["dut"], e["overload_trial"])
    for k in ("ndr", "pdr"):
        v, f = e[k + "_pps"], e[k + "_search"]
        assert (v is None and f["note"].startswith("none found") and f["lowest_failure"]) or v > 0, (e["dut"], k, f)
assert "linux-router" in r[0]["ratios"], r[0]
mpps = lambda v: "none" if v is None else "%.3f Mpps" % (v / 1e6)
print("snat smoke: " + ", ".join("%s NDR %s" % (e["dut"], mpps(e["ndr_pps"])) for e in r))
PY
    rm -f "$bench_json" "${bench_json%.json}.svg"
else
    echo "skipped: needs root (network namespaces, XDP)"
fi

section "benchmark harness smoke run, PVP over vhost-user (pollux, ovs-dpdk, testpmd-vhost; bounded)"
if [ "$(id -u)" -eq 0 ]; then
    bench_json=$(mktemp --suffix=.json)
    # 0.5 s trials, two per search and a low first rate: whether every device connects to
    # the harness's virtio-net devices and forwards, not how fast (the debug build).
    timeout 90 target/debug/pollux-bench compare --trial-secs 0.5 --sizes 64 --max-trials 2 \
        --max-rate 50000 --duts pollux,ovs-dpdk,testpmd-vhost --scenarios pvp --out "$bench_json" >/dev/null
    python3 - "$bench_json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
r = d["results"]
assert not [n for n in d["notes"] if "failed" in n], d["notes"]
assert {e["dut"] for e in r} == {"pollux", "ovs-dpdk", "testpmd-vhost"}, (r, d["notes"])
for e in r:
    assert e["scenario"] == "pvp" and e["frame_size"] == 64, e
    o = e["overload_trial"]
    # Frames went through the device between the harness's two virtio-net devices.
    assert o["sent"] > 0 and o["received_pps"] > 0, (e["dut"], o)
    assert o["path"].get("gen_virtio/tx_completed", 0) > 0, (e["dut"], o["path"])
    for k in ("ndr", "pdr"):
        v, f = e[k + "_pps"], e[k + "_search"]
        assert (v is None and f["note"].startswith("none found") and f["lowest_failure"]) or v > 0, (e["dut"], k, f)
assert "ovs-dpdk" in r[0]["ratios"] and "testpmd-vhost" in r[0]["ratios"], r[0]
mpps = lambda v: "none" if v is None else "%.3f Mpps" % (v / 1e6)
print("pvp smoke: " + ", ".join("%s NDR %s" % (e["dut"], mpps(e["ndr_pps"])) for e in r))
PY
    rm -f "$bench_json" "${bench_json%.json}.svg"
    # The harness stops what it started: no DPDK process or runtime directory is left.
    if pgrep -x dpdk-testpmd || pgrep -f "ovs-vswitchd-dpdk unix:/tmp/pbn" || ls -d /var/run/dpdk/pbn* 2>/dev/null; then
        echo "pvp smoke: the harness left DPDK processes or runtime directories behind" >&2
        exit 1
    fi
else
    echo "skipped: needs root (network namespaces, vhost-user devices under test)"
fi

# One closing line for the whole run, summed over every test binary.
awk '/^test result:/ { p += $4; f += $6; i += $8 } END { printf "tests: %d passed, %d failed, %d ignored\n", p, f, i }' "$log"
section "done"
