//! End to end: IPv6 security groups and port security in the real `polluxd` over AF_XDP,
//! probed with the kernel's own `ping` and `iperf3` over IPv6 from VM namespaces whose
//! kernels run neighbour discovery (link-local addresses, DAD, MLD) themselves.
//!
//! ```text
//!   namespace web (port web):     2001:db8:31::11 ──veth── <P>web ┐
//!   namespace cl (port client):   2001:db8:31::12 ──veth── <P>cl  ├ polluxd (namespace host)
//!   namespace st (port stranger): 2001:db8:31::13 ──veth── <P>st  ┘
//! ```
//!
//! `web` accepts ICMPv6 echo and TCP 5201 from members of `clients` (the client, by its
//! IPv6 fixed IP) and has no egress rule: its echo replies and its half of the TCP stream
//! pass only as replies of tracked IPv6 connections, window-checked. The stranger is
//! refused and web cannot open anything; neighbour discovery needs no rule. IPv6 traffic
//! stays inside the test's namespaces, in 2001:db8::/32 and fe80::/10.
//!
//! Needs root and `ip`, `ping`, `iperf3`; fails, never skips, when any is missing.

use std::sync::MutexGuard;
use std::time::Duration;

use pollux_tests::daemon;
use pollux_tests::netns::{self, iperf3_client, iperf3_server, ping};
use pollux_tests::vm_lab::{Vm, VmLab};
use serde_json::json;

const TOOLS: &[&str] = &["ip", "ping", "iperf3"];
const CONFIG: &str = "e2e-security-groups-ipv6.toml";
const IPERF3_PORT: u16 = 5201;

const WEB: Vm = Vm {
    role: "web",
    mac: "fa:16:3e:1f:00:21",
    ip: "198.18.32.11",
};
const CLIENT: Vm = Vm {
    role: "cl",
    mac: "fa:16:3e:1f:00:22",
    ip: "198.18.32.12",
};
const STRANGER: Vm = Vm {
    role: "st",
    mac: "fa:16:3e:1f:00:23",
    ip: "198.18.32.13",
};
const WEB6: &str = "2001:db8:31::11";
const CLIENT6: &str = "2001:db8:31::12";

fn setup() -> MutexGuard<'static, ()> {
    let guard = netns::exclusive(TOOLS);
    daemon::polluxd_path();
    guard
}

#[test]
#[ignore = "needs root: network namespaces (run with --include-ignored as root)"]
fn ipv6_groups_allow_deny_and_let_replies_back() {
    let _serial = setup();
    let lab = VmLab::start_with_ipv6(
        CONFIG,
        &[&WEB, &CLIENT, &STRANGER],
        &[
            "2001:db8:31::11/64",
            "2001:db8:31::12/64",
            "2001:db8:31::13/64",
        ],
    );
    let (web, client, stranger) = (lab.vm(&WEB), lab.vm(&CLIENT), lab.vm(&STRANGER));

    // Allowed: the client's pings reach web (neighbour discovery first, without a rule),
    // whose replies go back without an egress rule.
    let r = ping(client, WEB6, 3, Duration::from_secs(6)).unwrap();
    assert!(r.all_received(), "client -> web: {r:?}");

    // Denied: the stranger is not in `clients`; web may not open anything.
    let before = lab.drops("sg_no_rule");
    let r = ping(stranger, WEB6, 3, Duration::from_secs(4)).unwrap();
    assert_eq!(r.received, 0, "stranger -> web: {r:?}");
    let r = ping(web, CLIENT6, 3, Duration::from_secs(4)).unwrap();
    assert_eq!(r.received, 0, "web -> client: {r:?}");
    assert!(
        lab.drops("sg_no_rule") >= before + 6,
        "{} -> {}",
        before,
        lab.drops("sg_no_rule")
    );

    // TCP over IPv6: a real kernel's stream, every segment window-checked in both zones.
    let server = iperf3_server(web, WEB6, IPERF3_PORT).unwrap();
    let result = iperf3_client(client, WEB6, IPERF3_PORT, 2).unwrap();
    assert!(
        result.received_bps > 1e6,
        "client -> web iperf3: {result:?}"
    );
    assert!(
        iperf3_client(stranger, WEB6, IPERF3_PORT, 1).is_err(),
        "the stranger's TCP connection must not open"
    );
    assert_eq!(
        lab.drops("sg_invalid"),
        0,
        "no segment of the real stream refused"
    );
    // The IPv6 connections are listed in each port's zone.
    let sessions = lab.call("sessions.list", json!({}))["sessions"].clone();
    let zones: Vec<&str> = sessions
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["protocol"] == "tcp" && s["original"]["dport"] == IPERF3_PORT)
        .filter(|s| s["original"]["dst"] == WEB6)
        .filter_map(|s| s["zone"].as_str())
        .collect();
    assert!(zones.contains(&"port:web"), "{sessions}");
    assert!(zones.contains(&"port:client"), "{sessions}");
    // Nothing the kernels sent was taken for spoofing.
    for reason in ["spoofed_ip", "spoofed_nd", "bad_ipv6_header"] {
        assert_eq!(lab.drops(reason), 0, "{reason}");
    }
    drop(server);
}
