//! End to end: security groups in the real `polluxd` over AF_XDP, probed with the
//! kernel's own `ping` and `iperf3` from VM namespaces.
//!
//! ```text
//!   namespace web (port web):     198.18.31.11 ──veth── <P>web ┐
//!   namespace cl (port client):   198.18.31.12 ──veth── <P>cl  ├ polluxd (namespace host)
//!   namespace st (port stranger): 198.18.31.13 ──veth── <P>st  ┘
//! ```
//!
//! `web` accepts ping and TCP 5201 from members of `clients` (the client) and has no
//! egress rule: its echo replies and its half of the TCP stream pass only as replies of
//! tracked connections, with TCP sequence-window checks on every segment of a real
//! kernel's stream. The stranger is refused, web cannot open anything, and the
//! connections show in `sessions.list` in the ports' zones. Removing web's TCP rule cuts
//! the connection the next time it sends.
//!
//! Needs root and `ip`, `ping`, `iperf3`; fails, never skips, when any is missing.

use std::time::Duration;

use pollux_tests::daemon;
use pollux_tests::netns::{iperf3_client, iperf3_server, ping};
use pollux_tests::vm_lab::{Vm, VmLab};
use serde_json::json;

const TOOLS: &[&str] = &["ip", "ping", "iperf3"];
const CONFIG: &str = "e2e-security-groups.toml";
const IPERF3_PORT: u16 = 5201;

const WEB: Vm = Vm {
    role: "web",
    mac: "fa:16:3e:1f:00:11",
    ip: "198.18.31.11",
};
const CLIENT: Vm = Vm {
    role: "cl",
    mac: "fa:16:3e:1f:00:12",
    ip: "198.18.31.12",
};
const STRANGER: Vm = Vm {
    role: "st",
    mac: "fa:16:3e:1f:00:13",
    ip: "198.18.31.13",
};

#[test]
#[ignore = "needs root: network namespaces (run with --include-ignored as root)"]
fn groups_allow_deny_and_let_replies_back() {
    let _serial = daemon::setup(TOOLS);
    let lab = VmLab::start(CONFIG, &[&WEB, &CLIENT, &STRANGER]);
    let (web, client, stranger) = (lab.vm(&WEB), lab.vm(&CLIENT), lab.vm(&STRANGER));

    // Allowed: the client's pings reach web, whose replies go back without an egress rule.
    let r = ping(client, WEB.ip, 3, Duration::from_secs(4)).unwrap();
    assert!(r.all_received(), "client -> web: {r:?}");

    // Denied: the stranger is not in `clients`; web may not open anything.
    let before = lab.drops("sg_no_rule");
    let r = ping(stranger, WEB.ip, 3, Duration::from_secs(4)).unwrap();
    assert_eq!(r.received, 0, "stranger -> web: {r:?}");
    let r = ping(web, CLIENT.ip, 3, Duration::from_secs(4)).unwrap();
    assert_eq!(r.received, 0, "web -> client: {r:?}");
    assert!(
        lab.drops("sg_no_rule") >= before + 6,
        "{} -> {}",
        before,
        lab.drops("sg_no_rule")
    );

    // TCP: a real kernel's stream, every segment window-checked in both zones.
    let server = iperf3_server(web, WEB.ip, IPERF3_PORT).unwrap();
    let result = iperf3_client(client, WEB.ip, IPERF3_PORT, 2).unwrap();
    assert!(
        result.received_bps > 1e6,
        "client -> web iperf3: {result:?}"
    );
    assert!(
        iperf3_client(stranger, WEB.ip, IPERF3_PORT, 1).is_err(),
        "the stranger's TCP connection must not open"
    );
    assert_eq!(
        lab.drops("sg_invalid"),
        0,
        "no segment of the real stream refused"
    );

    // The connections are listed in each port's zone.
    let sessions = lab.call("sessions.list", json!({}))["sessions"].clone();
    let zones: Vec<&str> = sessions
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["protocol"] == "tcp" && s["original"]["dport"] == IPERF3_PORT)
        .filter_map(|s| s["zone"].as_str())
        .collect();
    assert!(zones.contains(&"port:web"), "{sessions}");
    assert!(zones.contains(&"port:client"), "{sessions}");

    // Removing web's TCP rule: a new run cannot connect.
    let mut state = lab.call("config.get", json!({}))["state"].clone();
    for g in state["security_groups"].as_array_mut().unwrap() {
        if g["id"] == "web" {
            g["rules"]
                .as_array_mut()
                .unwrap()
                .retain(|r| r["id"] != "web-iperf3");
        }
    }
    lab.call("config.apply", json!({ "state": state }));
    assert!(
        iperf3_client(client, WEB.ip, IPERF3_PORT, 1).is_err(),
        "TCP 5201 is no longer allowed"
    );
    let r = ping(client, WEB.ip, 2, Duration::from_secs(4)).unwrap();
    assert!(r.all_received(), "ping is still allowed: {r:?}");
    drop(server);
}
