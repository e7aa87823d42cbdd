//! End to end: `polluxd`'s VLAN uplink against Open vSwitch, an independent 802.1Q
//! implementation (this kernel has no 802.1Q devices).
//!
//! ```text
//!  vm100 ns  eth0 198.18.60.11 ─┐              HOST ns: polluxd
//!  vm200 ns  eth0 198.18.60.11 ─┤ <P>v100, <P>v200 (VM ports, AF_XDP)
//!                               │ <P>up (uplink, physnet1, AF_XDP)
//!                               │    │  veth, 802.1Q trunk
//!                               │ OVS ns: ovs-vswitchd, bridge br0 (netdev datapath)
//!                               │   trunk (trunks=100,200)
//!                               │   acc100 (tag=100) ── phys100 ns eth0 198.18.60.21
//!                               │   acc200 (tag=200) ── phys200 ns eth0 198.18.60.21
//! ```
//!
//! A second bridge of the same OVS is the VLAN-aware VM of a trunk port (Neutron's trunk
//! extension): polluxd's port `tparent` (`<P>tp`) is the trunk's parent, its subport
//! `tsub` is reached by VLAN 100 on the parent's wire.
//!
//! ```text
//!  tvm ns (the VLAN-aware VM)            OVS ns, bridge br1
//!   eth0   198.18.61.10 (untagged)  ──   tv0   (tag=1, native VLAN of vmtrunk)
//!   eth100 198.18.62.10 (VLAN 100)  ──   tv100 (tag=100)
//!   eth300 198.18.63.10 (VLAN 300)  ──   tv300 (tag=300, no subport has it)
//!                                        vmtrunk (native-untagged 1, trunks 1,100,300)
//!                                          │ veth: the parent's wire
//!  HOST ns: polluxd  <P>tp = tparent (net-tp; subport tsub on net-ts by VLAN 100)
//!                    <P>pa = tpvm (net-tp) ── pvm ns eth0 198.18.61.20
//!                    <P>sa = tsvm (net-ts) ── svm ns eth0 198.18.62.20
//! ```
//!
//! Both tenant networks carry 198.18.60.0/24, both VMs are 198.18.60.11 and both physical
//! servers 198.18.60.21: only the 802.1Q tag tells the two broadcast domains apart. The
//! test checks reachability (and who answered), the tags on the trunk, isolation between
//! the VLANs, TCP over the trunk and polluxd's clean SIGINT shutdown with its counters;
//! for the trunk port: both of the VM's networks reachable, the tags on the parent's wire,
//! an unknown VLAN dropped and counted, the subport's counters and `polluxctl show ports`.
//!
//! Needs root and `apt-get install -y openvswitch-switch tcpdump iproute2 iputils-ping
//! iperf3 ethtool`; it fails (never skips) when any of that is missing. Everything lives in
//! namespaces `plx<pid-hex>t<n>-*` and `/tmp/pxvlan-<pid>`, removed on every exit path.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use pollux_tests::daemon::{last_cpu, polluxctl_path, polluxd_path, workspace_root, Polluxd};
use serde_json::{json, Value};

use pollux_tests::netns::{
    self, iperf3_client, iperf3_server, ping, CaptureFormat, Topology, VethOptions, PREFIX_ROOT,
};
use pollux_tests::ovs::{missing_tools, sweep_stale_workdirs, OvsSwitch, OVS_TOOLS};

const CONFIG_TEMPLATE: &str = "configs/e2e-vlan-ovs.toml";
const WORKDIR_PARENT: &str = "/tmp";
const WORKDIR_PREFIX: &str = "pxvlan-";
const BRIDGE: &str = "br0";

const VM_IP: &str = "198.18.60.11";
const VM_CIDR: &str = "198.18.60.11/24";
const PHYS_IP: &str = "198.18.60.21";
const PHYS_CIDR: &str = "198.18.60.21/24";

/// MACs of the VM ports: they must match `configs/e2e-vlan-ovs.toml`.
const VM100_MAC: &str = "fa:16:3e:3c:01:11";
const VM200_MAC: &str = "fa:16:3e:3c:02:11";
const PHYS100_MAC: &str = "02:00:c6:12:3c:21";
const PHYS200_MAC: &str = "02:00:c6:12:3c:22";

/// The trunk port's parties: they must match `configs/e2e-vlan-ovs.toml`.
const TRUNK_BRIDGE: &str = "br1";
const PARENT_MAC: &str = "fa:16:3e:3c:10:01";
const PARENT_CIDR: &str = "198.18.61.10/24";
const TPVM_MAC: &str = "fa:16:3e:3c:10:02";
const TPVM_IP: &str = "198.18.61.20";
const SUB_MAC: &str = "fa:16:3e:3c:20:01";
const SUB_CIDR: &str = "198.18.62.10/24";
const TSVM_MAC: &str = "fa:16:3e:3c:20:02";
const TSVM_IP: &str = "198.18.62.20";
const SUB_VID: u16 = 100;
/// A VLAN of the VM that no subport has, and its interface.
const STRAY_VID: u16 = 300;
const STRAY_MAC: &str = "02:00:c6:12:3f:01";
const STRAY_CIDR: &str = "198.18.63.10/24";
const STRAY_PEER_IP: &str = "198.18.63.20";
/// OVS's VLAN for the trunk's untagged frames (its native VLAN, never on the wire).
const NATIVE_VID: u16 = 1;

// ---------------------------------------------------------------------------------------
// polluxd's counters
// ---------------------------------------------------------------------------------------

/// `(rx packets, tx packets)` of port `name` from polluxd's final counter lines
/// (`polluxd:   NAME: rx N pkts B bytes D dropped, tx M pkts B bytes D dropped`).
fn port_counters(stderr: &str, name: &str) -> Option<(u64, u64)> {
    let needle = format!("{name}: rx ");
    let line = stderr.lines().find(|l| {
        l.trim_start_matches("polluxd:")
            .trim_start()
            .starts_with(&needle)
    })?;
    let words: Vec<&str> = line.split_whitespace().collect();
    let after = |w: &str| {
        let i = words.iter().position(|x| x.trim_end_matches(',') == w)?;
        words.get(i + 1)?.parse::<u64>().ok()
    };
    Some((after("rx")?, after("tx")?))
}

// ---------------------------------------------------------------------------------------
// tcpdump lines
// ---------------------------------------------------------------------------------------

/// What one `tcpdump -e -nn` line says about the link layer.
#[derive(Debug, PartialEq, Eq)]
enum Tag {
    Untagged,
    Vid(u16),
    /// More than one 802.1Q header (QinQ) or a tag tcpdump printed oddly.
    Odd,
}

fn tag_of(line: &str) -> Tag {
    let tags = line.matches("ethertype 802.1Q").count() + line.matches("ethertype 802.1ad").count();
    match tags {
        0 => Tag::Untagged,
        1 => line
            .split_once(": vlan ")
            .and_then(|(_, rest)| rest.split(',').next())
            .and_then(|v| v.trim().parse().ok())
            .map_or(Tag::Odd, Tag::Vid),
        _ => Tag::Odd,
    }
}

/// Source MAC: the word after the timestamp.
fn src_mac(line: &str) -> &str {
    line.split_whitespace().nth(1).unwrap_or("")
}

fn show(lines: &[String]) -> String {
    if lines.is_empty() {
        "  <nothing>".to_string()
    } else {
        lines
            .iter()
            .map(|l| format!("  {l}"))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

// ---------------------------------------------------------------------------------------
// The test
// ---------------------------------------------------------------------------------------

fn preflight() {
    netns::require_root();
    netns::require_tools(&["ping", "iperf3", "tcpdump", "ethtool"]);
    let missing = missing_tools(OVS_TOOLS);
    assert!(
        missing.is_empty(),
        "e2e_vlan_ovs needs Open vSwitch, missing: {} (apt-get install -y \
         openvswitch-switch; the test runs its own private daemons)",
        missing.join(", ")
    );
    if let Ok(removed) = netns::remove_stale(PREFIX_ROOT) {
        if !removed.is_empty() {
            eprintln!("removed stale namespaces: {removed:?}");
        }
    }
    sweep_stale_workdirs(Path::new(WORKDIR_PARENT), WORKDIR_PREFIX);
}

/// One VLAN's parties: the VM behind polluxd and the physical server behind OVS.
struct Vlan {
    vid: u16,
    vm: &'static str,
    vm_mac: &'static str,
    phys: &'static str,
    phys_mac: &'static str,
}

const VLAN100: Vlan = Vlan {
    vid: 100,
    vm: "vm100",
    vm_mac: VM100_MAC,
    phys: "phys100",
    phys_mac: PHYS100_MAC,
};
const VLAN200: Vlan = Vlan {
    vid: 200,
    vm: "vm200",
    vm_mac: VM200_MAC,
    phys: "phys200",
    phys_mac: PHYS200_MAC,
};

/// The VID a frame from `mac` must carry on the trunk, if `mac` is one of ours.
fn vid_of_mac(mac: &str) -> Option<u16> {
    [&VLAN100, &VLAN200]
        .into_iter()
        .find(|v| mac == v.vm_mac || mac == v.phys_mac)
        .map(|v| v.vid)
}

fn neigh(topo: &Topology, role: &str, ip: &str) -> String {
    topo.ns(role)
        .and_then(|ns| ns.ip(&["neigh", "show", ip, "dev", "eth0"]))
        .unwrap_or_else(|e| format!("<{e}>"))
}

/// `vlan`'s VM pings its physical server while the trunk and the other VLAN's two hosts
/// are captured; checks replies, who answered, the tags on the trunk and that nothing
/// leaked into `other`.
fn ping_phase(topo: &Topology, vlan: &Vlan, other: &Vlan, diag: &dyn Fn() -> String) {
    let ns = |role: &str| topo.ns(role).expect("namespace");
    let cap = |role: &str, ifname: &str| {
        netns::tcpdump(ns(role), ifname, 200, &[], CaptureFormat::Text)
            .unwrap_or_else(|e| panic!("tcpdump in {role} on {ifname}: {e}"))
    };
    let trunk = cap("ovs", "trunk");
    let other_vm = cap(other.vm, "eth0");
    let other_phys = cap(other.phys, "eth0");

    let result = ping(ns(vlan.vm), PHYS_IP, 5, Duration::from_secs(6))
        .unwrap_or_else(|e| panic!("ping from {}: {e}", vlan.vm));

    let trunk = trunk
        .finish(Duration::from_millis(500))
        .expect("trunk capture")
        .lines;
    let other_vm_lines = other_vm.finish(Duration::ZERO).expect("capture").lines;
    let other_phys_lines = other_phys.finish(Duration::ZERO).expect("capture").lines;
    let vid = vlan.vid;

    // (1) Every echo request answered, and by the server of this VLAN.
    assert!(
        result.all_received(),
        "{} -> {PHYS_IP} (VLAN {vid}): {}/{} replies\ntrunk:\n{}\n{}",
        vlan.vm,
        result.received,
        result.transmitted,
        show(&trunk),
        diag()
    );
    let answered = neigh(topo, vlan.phys, VM_IP);
    assert!(
        answered.contains(vlan.vm_mac),
        "{} must have learned {VM_IP} at {} (it answered), its neighbour table: {answered:?}",
        vlan.phys,
        vlan.vm_mac
    );
    let silent = neigh(topo, other.phys, VM_IP);
    assert!(
        !silent.contains(vlan.vm_mac),
        "{} (VLAN {}) must never have heard of {} (VLAN {vid}), its neighbour table: \
         {silent:?}",
        other.phys,
        other.vid,
        vlan.vm_mac
    );
    let resolved = neigh(topo, vlan.vm, PHYS_IP);
    assert!(
        resolved.contains(vlan.phys_mac),
        "{} must have resolved {PHYS_IP} to {} ({}), got {resolved:?}",
        vlan.vm,
        vlan.phys_mac,
        vlan.phys
    );

    // (2) Tags on the wire: this VLAN's ICMP in both directions tagged `vid`; every frame
    // tagged, and with the VID of the VLAN its sender belongs to.
    let echo = |from: &str, what: &str| {
        trunk
            .iter()
            .any(|l| src_mac(l) == from && tag_of(l) == Tag::Vid(vid) && l.contains(what))
    };
    assert!(
        echo(vlan.vm_mac, "ICMP echo request") && echo(vlan.phys_mac, "ICMP echo reply"),
        "the trunk must carry {}'s echo requests and {}'s replies tagged VID {vid}, got:\n{}",
        vlan.vm,
        vlan.phys,
        show(&trunk)
    );
    let arp_seen = trunk
        .iter()
        .any(|l| tag_of(l) == Tag::Vid(vid) && l.contains("ethertype ARP"));
    assert!(
        arp_seen,
        "the trunk must carry the ARP exchange tagged VID {vid}, got:\n{}",
        show(&trunk)
    );
    let bad: Vec<String> = trunk
        .iter()
        .filter(|l| match tag_of(l) {
            Tag::Vid(v) => vid_of_mac(src_mac(l)) != Some(v),
            Tag::Untagged | Tag::Odd => true,
        })
        .cloned()
        .collect();
    assert!(
        bad.is_empty(),
        "while {} pings, every trunk frame must be 802.1Q-tagged with its sender's VLAN \
         (100 for {VM100_MAC}/{PHYS100_MAC}, 200 for {VM200_MAC}/{PHYS200_MAC}); \
         offending frames:\n{}\nwhole capture:\n{}",
        vlan.vm,
        show(&bad),
        show(&trunk)
    );
    assert!(
        !trunk.iter().any(|l| tag_of(l) == Tag::Vid(other.vid)),
        "while only {} talks, no VID {} frame may cross the trunk, got:\n{}",
        vlan.vm,
        other.vid,
        show(&trunk)
    );

    // (3) No leak: the other VLAN's VM and server (both idle, same addresses) see none of
    // this VLAN's frames, and no ICMP or ARP at all.
    for (role, lines) in [(other.vm, &other_vm_lines), (other.phys, &other_phys_lines)] {
        let leaked: Vec<String> = lines
            .iter()
            .filter(|l| {
                l.contains(vlan.vm_mac)
                    || l.contains(vlan.phys_mac)
                    || l.contains("ICMP")
                    || l.contains("ARP")
            })
            .cloned()
            .collect();
        assert!(
            leaked.is_empty(),
            "{role} (VLAN {}) must see nothing of VLAN {vid}'s traffic, got:\n{}",
            other.vid,
            show(&leaked)
        );
    }
    eprintln!(
        "VLAN {vid}: {} -> {PHYS_IP}: {}/{} replies from {}; trunk: {} frames, all tagged \
         {vid}; {} and {} saw {} and {} frames, none of VLAN {vid}",
        vlan.vm,
        result.received,
        result.transmitted,
        vlan.phys,
        trunk.len(),
        other.vm,
        other.phys,
        other_vm_lines.len(),
        other_phys_lines.len()
    );
}

// ---------------------------------------------------------------------------------------
// The trunk port (VLAN-aware VM)
// ---------------------------------------------------------------------------------------

/// The VM side of the trunk: namespaces tvm (the VLAN-aware VM), pvm and svm (VMs of the
/// parent's and the subport's networks) and their veths. Before polluxd starts.
fn trunk_topology(topo: &mut Topology, p: &str) {
    for role in ["tvm", "pvm", "svm"] {
        let ns = topo
            .add_ns(role)
            .unwrap_or_else(|e| panic!("namespace {role}: {e}"));
        ns.disable_ipv6()
            .unwrap_or_else(|e| panic!("disabling IPv6 in {role}: {e}"));
    }
    topo.veth("host", &format!("{p}tp"), "ovs", "vmtrunk")
        .unwrap_or_else(|e| panic!("parent veth: {e}"));
    let links = [
        ("ovs", "tv0", "tvm", "eth0", PARENT_MAC, PARENT_CIDR),
        ("ovs", "tv100", "tvm", "eth100", SUB_MAC, SUB_CIDR),
        ("ovs", "tv300", "tvm", "eth300", STRAY_MAC, STRAY_CIDR),
        (
            "host",
            &format!("{p}pa"),
            "pvm",
            "eth0",
            TPVM_MAC,
            "198.18.61.20/24",
        ),
        (
            "host",
            &format!("{p}sa"),
            "svm",
            "eth0",
            TSVM_MAC,
            "198.18.62.20/24",
        ),
    ];
    for (switch_ns, switch_if, guest, guest_if, mac, cidr) in links {
        topo.veth_with(
            switch_ns,
            switch_if,
            guest,
            guest_if,
            &VethOptions {
                mac_b: Some(mac.to_string()),
                ..VethOptions::default()
            },
        )
        .unwrap_or_else(|e| panic!("veth {switch_if} -> {guest} {guest_if}: {e}"));
        topo.addr(guest, guest_if, cidr)
            .unwrap_or_else(|e| panic!("address of {guest} {guest_if}: {e}"));
    }
}

/// OVS's second bridge: the VM's trunk demultiplexed into one access port per VLAN.
fn trunk_bridge(sw: &OvsSwitch) {
    sw.add_bridge(TRUNK_BRIDGE).expect("add br1");
    let native = format!("tag={NATIVE_VID}");
    let trunks = format!("trunks={NATIVE_VID},{SUB_VID},{STRAY_VID}");
    sw.vsctl(&[
        "add-port",
        TRUNK_BRIDGE,
        "vmtrunk",
        "vlan_mode=native-untagged",
        &native,
        &trunks,
    ])
    .expect("vmtrunk");
    for (ifname, vid) in [
        ("tv0", NATIVE_VID),
        ("tv100", SUB_VID),
        ("tv300", STRAY_VID),
    ] {
        sw.add_port(TRUNK_BRIDGE, ifname, Some(vid))
            .unwrap_or_else(|e| panic!("{ifname}: {e}"));
    }
}

/// The count of drop reason `reason` over all stages (`drops.list`).
fn drops_of(polluxd: &Polluxd, reason: &str) -> u64 {
    let drops = polluxd.call("drops.list", json!({}));
    drops["drops"]
        .as_array()
        .map(|rows| {
            rows.iter()
                .filter(|r| r["reason"] == reason)
                .filter_map(|r| r["count"].as_u64())
                .sum()
        })
        .unwrap_or(0)
}

fn counter_of(port: &Value, name: &str) -> u64 {
    port[name]
        .as_u64()
        .unwrap_or_else(|| panic!("no {name} in {port}"))
}

/// The VLAN-aware VM pings a VM of its subport's network (VLAN 100) and one of its
/// parent's (untagged), then talks on a VLAN no subport has; the parent's wire is
/// captured throughout.
fn trunk_phase(topo: &Topology, polluxd: &Polluxd, diag: &dyn Fn() -> String) {
    let ns = |role: &str| topo.ns(role).expect("namespace");
    let wire = || {
        netns::tcpdump(ns("ovs"), "vmtrunk", 200, &[], CaptureFormat::Text)
            .unwrap_or_else(|e| panic!("tcpdump on vmtrunk: {e}"))
    };
    // Three pings from tvm to `dst`, with the parent's wire captured meanwhile.
    let ping_on_wire = |dst: &str| {
        let cap = wire();
        let r = ping(ns("tvm"), dst, 3, Duration::from_secs(4))
            .unwrap_or_else(|e| panic!("ping tvm -> {dst}: {e}"));
        let lines = cap
            .finish(Duration::from_millis(300))
            .expect("capture")
            .lines;
        (r, lines)
    };

    // (1) The subport: tagged 100 on the wire both ways, untagged at tsvm.
    let sub_before = polluxd.port("tsub");
    let (r, lines) = ping_on_wire(TSVM_IP);
    assert!(
        r.all_received(),
        "tvm eth{SUB_VID} -> tsvm {TSVM_IP} (subport tsub, VLAN {SUB_VID}): {}/{} replies\n\
         parent's wire:\n{}\n{}",
        r.received,
        r.transmitted,
        show(&lines),
        diag()
    );
    let seen = |lines: &[String], from: &str, tag: Tag, what: &str| {
        lines
            .iter()
            .any(|l| src_mac(l) == from && tag_of(l) == tag && l.contains(what))
    };
    assert!(
        seen(&lines, SUB_MAC, Tag::Vid(SUB_VID), "ICMP echo request")
            && seen(&lines, TSVM_MAC, Tag::Vid(SUB_VID), "ICMP echo reply"),
        "the parent's wire must carry tsub's echo requests and tsvm's replies tagged VID \
         {SUB_VID}, got:\n{}",
        show(&lines)
    );
    let untagged_sub: Vec<String> = lines
        .iter()
        .filter(|l| {
            (src_mac(l) == SUB_MAC || src_mac(l) == TSVM_MAC) && tag_of(l) != Tag::Vid(SUB_VID)
        })
        .cloned()
        .collect();
    assert!(
        untagged_sub.is_empty(),
        "every frame of the subport's network on the parent's wire is tagged {SUB_VID}, \
         offending:\n{}",
        show(&untagged_sub)
    );
    let resolved = ns("svm")
        .ip(&["neigh", "show", "198.18.62.10", "dev", "eth0"])
        .unwrap_or_default();
    assert!(
        resolved.contains(SUB_MAC),
        "svm must have learned 198.18.62.10 at the subport's MAC {SUB_MAC}: {resolved:?}"
    );
    let sub = polluxd.port("tsub");
    assert_eq!(
        (
            &sub["kind"],
            &sub["parent"],
            &sub["vlan_id"],
            &sub["trunk_id"]
        ),
        (
            &json!("subport"),
            &json!("tparent"),
            &json!(SUB_VID),
            &json!("trunk1")
        ),
        "{sub}"
    );
    for name in ["rx_packets", "tx_packets"] {
        let moved = counter_of(&sub, name) - counter_of(&sub_before, name);
        assert!(
            moved >= u64::from(r.transmitted),
            "tsub's {name} must count its {} echoes (and ARP), moved by {moved}: {sub}",
            r.transmitted
        );
    }

    // (2) The parent: untagged on the wire, on its own network.
    let parent_before = polluxd.port("tparent");
    let (r, lines) = ping_on_wire(TPVM_IP);
    assert!(
        r.all_received(),
        "tvm eth0 -> tpvm {TPVM_IP} (the parent, untagged): {}/{} replies\n\
         parent's wire:\n{}\n{}",
        r.received,
        r.transmitted,
        show(&lines),
        diag()
    );
    assert!(
        seen(&lines, PARENT_MAC, Tag::Untagged, "ICMP echo request")
            && seen(&lines, TPVM_MAC, Tag::Untagged, "ICMP echo reply"),
        "the parent's wire must carry the parent's echo requests and tpvm's replies \
         untagged, got:\n{}",
        show(&lines)
    );
    assert!(
        !lines
            .iter()
            .any(|l| (src_mac(l) == PARENT_MAC || src_mac(l) == TPVM_MAC)
                && tag_of(l) != Tag::Untagged),
        "no frame of the parent's network may be tagged on its wire, got:\n{}",
        show(&lines)
    );
    let parent = polluxd.port("tparent");
    for name in ["rx_packets", "tx_packets"] {
        let moved = counter_of(&parent, name) - counter_of(&parent_before, name);
        assert!(
            moved >= u64::from(r.transmitted),
            "tparent's {name} moved by {moved}: {parent}"
        );
    }
    let sub_after = polluxd.port("tsub");
    assert_eq!(
        counter_of(&sub_after, "rx_packets"),
        counter_of(&sub, "rx_packets"),
        "the parent's untagged frames are never the subport's: {sub_after}"
    );

    // (3) A VLAN no subport has: dropped as unknown_trunk_vlan, on no network.
    let dropped_before = drops_of(polluxd, "unknown_trunk_vlan");
    let cap = wire();
    let leak_p = netns::tcpdump(ns("pvm"), "eth0", 50, &[], CaptureFormat::Text)
        .unwrap_or_else(|e| panic!("tcpdump in pvm: {e}"));
    let leak_s = netns::tcpdump(ns("svm"), "eth0", 50, &[], CaptureFormat::Text)
        .unwrap_or_else(|e| panic!("tcpdump in svm: {e}"));
    let r = ping(ns("tvm"), STRAY_PEER_IP, 1, Duration::from_secs(1))
        .unwrap_or_else(|e| panic!("ping tvm -> {STRAY_PEER_IP}: {e}"));
    let lines = cap
        .finish(Duration::from_millis(300))
        .expect("capture")
        .lines;
    let leaked: Vec<String> = [leak_p, leak_s]
        .into_iter()
        .flat_map(|c| c.finish(Duration::ZERO).expect("capture").lines)
        .filter(|l| l.contains(STRAY_MAC))
        .collect();
    assert_eq!(r.received, 0, "nobody is on VLAN {STRAY_VID}: {r:?}");
    let stray = lines
        .iter()
        .filter(|l| src_mac(l) == STRAY_MAC && tag_of(l) == Tag::Vid(STRAY_VID))
        .count() as u64;
    assert!(
        stray > 0,
        "the VM's ARP requests must be on the parent's wire tagged {STRAY_VID}, got:\n{}",
        show(&lines)
    );
    assert!(
        !lines
            .iter()
            .any(|l| src_mac(l) != STRAY_MAC && tag_of(l) == Tag::Vid(STRAY_VID)),
        "nothing may come back on VLAN {STRAY_VID}, got:\n{}",
        show(&lines)
    );
    assert!(
        leaked.is_empty(),
        "VLAN {STRAY_VID} frames must reach no network, tpvm and tsvm got:\n{}",
        show(&leaked)
    );
    let dropped = drops_of(polluxd, "unknown_trunk_vlan") - dropped_before;
    assert!(
        dropped >= stray,
        "each of the {stray} frames tagged {STRAY_VID} must be dropped as \
         unknown_trunk_vlan, counted {dropped}\n{}",
        diag()
    );

    // (4) `polluxctl show ports`: the subport with its parent and VLAN ID.
    let out = std::process::Command::new(polluxctl_path())
        .arg("--socket")
        .arg(polluxd.socket())
        .args(["show", "ports"])
        .output()
        .expect("polluxctl show ports");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "polluxctl show ports: {out:?}");
    let header: Vec<&str> = text
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    assert_eq!(
        header.get(1..4),
        Some(&["KIND", "PARENT", "VLAN"][..]),
        "{text}"
    );
    let row: Vec<&str> = text
        .lines()
        .find(|l| l.starts_with("tsub "))
        .unwrap_or_else(|| panic!("no tsub row in:\n{text}"))
        .split_whitespace()
        .collect();
    assert_eq!(
        row.get(..4),
        Some(&["tsub", "subport", "tparent", "100"][..]),
        "{text}"
    );
    eprintln!(
        "trunk: tsub (VLAN {SUB_VID}) and tparent (untagged) reachable from the VLAN-aware \
         VM; {stray} frames tagged {STRAY_VID} on the wire, {dropped} dropped as \
         unknown_trunk_vlan; tsub rx {} tx {}",
        counter_of(&sub, "rx_packets"),
        counter_of(&sub, "tx_packets")
    );
}

#[test]
#[ignore = "needs root: network namespaces (run with --include-ignored as root)"]
fn pollux_vlan_uplink_interoperates_with_ovs() {
    let started = Instant::now();
    preflight();
    let polluxd_bin = polluxd_path();
    // Built now, so that the build is not timed as the trunk phase's.
    polluxctl_path();
    eprintln!(
        "polluxd binary: {} (build step took {:?})",
        polluxd_bin.display(),
        started.elapsed()
    );
    let t0 = Instant::now();

    // Drop order is the reverse of declaration: polluxd, then OVS (daemons and work
    // directory, which holds the config), then the namespaces (with tcpdump and iperf3,
    // whose guards live inside the phases, already gone).
    let mut topo = Topology::new();
    for role in ["host", "ovs", "vm100", "vm200", "phys100", "phys200"] {
        let ns = topo
            .add_ns(role)
            .unwrap_or_else(|e| panic!("namespace {role}: {e}"));
        ns.disable_ipv6()
            .unwrap_or_else(|e| panic!("disabling IPv6 in {role}: {e}"));
    }
    // Interface names in the config carry a short per-run prefix.
    let p = format!("e{:04x}", std::process::id() % 0x1_0000);
    let (up, v100, v200) = (format!("{p}up"), format!("{p}v100"), format!("{p}v200"));

    topo.veth("host", &up, "ovs", "trunk")
        .unwrap_or_else(|e| panic!("uplink veth: {e}"));
    let guests = [
        ("host", v100.as_str(), "vm100", VM100_MAC, VM_CIDR),
        ("host", v200.as_str(), "vm200", VM200_MAC, VM_CIDR),
        ("ovs", "acc100", "phys100", PHYS100_MAC, PHYS_CIDR),
        ("ovs", "acc200", "phys200", PHYS200_MAC, PHYS_CIDR),
    ];
    for (switch_ns, switch_if, guest, mac, cidr) in guests {
        topo.veth_with(
            switch_ns,
            switch_if,
            guest,
            "eth0",
            &VethOptions {
                mac_b: Some(mac.to_string()),
                ..VethOptions::default()
            },
        )
        .unwrap_or_else(|e| panic!("veth {switch_if} -> {guest}: {e}"));
        topo.addr(guest, "eth0", cidr)
            .unwrap_or_else(|e| panic!("address of {guest}: {e}"));
        // Guests keep the kernel's default offloads: polluxd completes the checksums
        // their veths leave partial.
    }

    trunk_topology(&mut topo, &p);

    let workdir = PathBuf::from(format!(
        "{WORKDIR_PARENT}/{WORKDIR_PREFIX}{}",
        std::process::id()
    ));
    let ovs_ns = topo.ns("ovs").expect("ovs").name().to_string();
    let sw = OvsSwitch::start(&ovs_ns, &workdir)
        .unwrap_or_else(|e| panic!("starting the private Open vSwitch: {e}"));
    sw.add_bridge(BRIDGE).expect("add bridge");
    sw.add_trunk(BRIDGE, "trunk", &[100, 200]).expect("trunk");
    sw.add_port(BRIDGE, "acc100", Some(100)).expect("acc100");
    sw.add_port(BRIDGE, "acc200", Some(200)).expect("acc200");
    trunk_bridge(&sw);
    sw.wait_ready()
        .unwrap_or_else(|e| panic!("OVS ports: {e}\n{}", sw.diagnostics(BRIDGE)));

    let template = std::fs::read_to_string(workspace_root().join(CONFIG_TEMPLATE))
        .unwrap_or_else(|e| panic!("reading {CONFIG_TEMPLATE}: {e}"));
    let config = workdir.join("polluxd.toml");
    std::fs::write(&config, template.replace("@P@", &p)).expect("writing the config");
    // polluxd's worker busy-polls its CPU: the last one, as everywhere in the tests.
    let polluxd = Polluxd::start(topo.ns("host").expect("host"), &config, &last_cpu())
        .unwrap_or_else(|e| panic!("{e}"));
    let setup = t0.elapsed();

    let diag = || {
        format!(
            "--- polluxd stderr ---\n{}\n{}",
            polluxd.stderr_so_far(),
            sw.diagnostics(BRIDGE)
        )
    };

    // (1)-(3) for each VLAN in turn, the other one idle.
    ping_phase(&topo, &VLAN100, &VLAN200, &diag);
    ping_phase(&topo, &VLAN200, &VLAN100, &diag);

    // OVS learned each VM on its own VLAN, behind the trunk.
    let fdb = sw.fdb_entries(BRIDGE).expect("fdb/show");
    let trunk_port = sw.ofport("trunk").expect("ofport");
    for (vid, mac) in [(100, VM100_MAC), (200, VM200_MAC)] {
        assert!(
            fdb.iter()
                .any(|e| e.vlan == vid && e.mac == mac && e.port == trunk_port),
            "OVS must have learned {mac} on VLAN {vid} behind the trunk (port {trunk_port}), \
             got {fdb:?}\n{}",
            diag()
        );
        assert!(
            !fdb.iter().any(|e| e.mac == mac && e.vlan != vid),
            "OVS must know {mac} only on VLAN {vid}, got {fdb:?}"
        );
    }

    let trunk_started = Instant::now();
    trunk_phase(&topo, &polluxd, &diag);
    eprintln!("trunk port phase took {:?}", trunk_started.elapsed());

    // (4) TCP across the trunk, VLAN 100.
    let server = iperf3_server(topo.ns("phys100").expect("phys100"), PHYS_IP, 5201)
        .unwrap_or_else(|e| panic!("iperf3 server in phys100: {e}"));
    let tcp = iperf3_client(topo.ns("vm100").expect("vm100"), PHYS_IP, server.port(), 3)
        .unwrap_or_else(|e| panic!("iperf3 vm100 -> phys100: {e}\n{}", diag()));
    drop(server);
    assert!(
        tcp.received_bps > 0.0 && tcp.received_bytes > 0,
        "iperf3 vm100 -> phys100 over the trunk moved nothing: {tcp:?}\n{}",
        diag()
    );
    eprintln!(
        "iperf3 3 s vm100 -> phys100 (VLAN 100 over the trunk): {:.2} Gbit/s received, \
         {:?} retransmits",
        tcp.received_bps / 1e9,
        tcp.retransmits
    );
    // For the report: frames that entered OVS on the trunk but never left it on acc100
    // (OVS's AF_PACKET sockets overflow under load; TCP retransmits them).
    let counter = |role: &str, ifname: &str, what: &str| -> u64 {
        let path = format!("/sys/class/net/{ifname}/statistics/{what}");
        topo.ns(role)
            .and_then(|ns| ns.exec_ok("cat", &[&path]))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    };
    let (into_ovs, out_of_ovs) = (
        counter("ovs", "trunk", "rx_packets"),
        counter("ovs", "acc100", "tx_packets"),
    );
    eprintln!(
        "frames into OVS on the trunk {into_ovs}, out on acc100 {out_of_ovs} (lost inside \
         OVS: {})",
        into_ovs.saturating_sub(out_of_ovs)
    );

    // (5) SIGINT: polluxd exits 0 and its counters show the uplink's traffic.
    let (status, stderr) = polluxd.stop().unwrap_or_else(|e| panic!("{e}"));
    assert!(
        status.success(),
        "polluxd must exit 0 on SIGINT, got {status}; stderr:\n{stderr}"
    );
    let (rx, tx) = port_counters(&stderr, &up)
        .unwrap_or_else(|| panic!("no counter line for the uplink {up} in:\n{stderr}"));
    assert!(
        rx > 0 && tx > 0,
        "the uplink {up} must have received and sent frames (rx {rx}, tx {tx}); stderr:\n\
         {stderr}"
    );
    for vm in [&v100, &v200] {
        let (rx, tx) = port_counters(&stderr, vm)
            .unwrap_or_else(|| panic!("no counter line for {vm} in:\n{stderr}"));
        assert!(rx > 0 && tx > 0, "{vm}: rx {rx} tx {tx}; stderr:\n{stderr}");
    }
    eprint!("--- polluxd ---\n{stderr}");
    eprintln!(
        "setup {setup:?}, whole test {:?} after the build",
        t0.elapsed()
    );
}
