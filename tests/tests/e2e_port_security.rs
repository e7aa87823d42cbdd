//! End to end: port security in the real `polluxd` over AF_XDP, attacked with the
//! kernel's own tools from inside a VM namespace, and watched with tcpdump from the others.
//!
//! ```text
//!   namespace a1 (the hostile VM) ──veth── <P>a1 ┐
//!   namespace a2: 198.18.30.12    ──veth── <P>a2 ├ polluxd (namespace host)
//!   namespace a3: 198.18.30.13    ──veth── <P>a3 ┘
//! ```
//!
//! a1 sends from a2's address, announces the gateway's address by gratuitous ARP, sends
//! from a MAC that is not its own and runs a DHCP server. Nothing of it reaches a2 or a3,
//! and each refusal is counted under its reason. Then a1's port security is turned off by
//! an apply, and the same traffic does reach them: the refusals were port security's.
//!
//! Needs root and `ip`, `ping`, `tcpdump`, `arping`, `dnsmasq`, `udhcpc`; fails, never
//! skips, when any is missing. The guests keep the kernel's default offloads.

use std::time::Duration;

use pollux_tests::daemon;
use pollux_tests::dhcp::DhcpClient;
use pollux_tests::netns::{self, ping, CaptureFormat, Netns};
use pollux_tests::vm_lab::{Vm, VmLab};
use serde_json::json;

const TOOLS: &[&str] = &["ip", "ping", "tcpdump", "arping", "dnsmasq", "udhcpc"];
const CONFIG: &str = "e2e-port-security.toml";

const A1: Vm = Vm {
    role: "a1",
    mac: "fa:16:3e:1e:00:11",
    ip: "198.18.30.11",
};
const A2: Vm = Vm {
    role: "a2",
    mac: "fa:16:3e:1e:00:12",
    ip: "198.18.30.12",
};
const A3: Vm = Vm {
    role: "a3",
    mac: "fa:16:3e:1e:00:13",
    ip: "198.18.30.13",
};
const GATEWAY: &str = "198.18.30.1";
const FOREIGN_MAC: &str = "fa:16:3e:1e:99:99";

/// Applies the running state with a1's port security switched `on` or off.
fn set_port_security(lab: &VmLab, on: bool) {
    let mut state = lab.call("config.get", json!({}))["state"].clone();
    for port in state["ports"].as_array_mut().unwrap() {
        if port["id"] == "vm-a1" {
            port["port_security_enabled"] = json!(on);
            // Security groups come with port security (Neutron refuses them without).
            port["security_groups"] = if on { json!(["allow-all"]) } else { json!([]) };
        }
    }
    lab.call("config.apply", json!({ "state": state }));
}

/// What `observer` captures (at most `count` frames matching `filter`, within 3 s)
/// while `act` runs.
fn seen_by(lab: &VmLab, observer: &Vm, filter: &[&str], count: u32, act: impl FnOnce()) -> usize {
    let capture =
        netns::tcpdump(lab.vm(observer), "eth0", count, filter, CaptureFormat::Text).unwrap();
    act();
    capture.finish(Duration::from_secs(3)).unwrap().lines.len()
}

/// a1 pings a3 from a2's address (a3's neighbour entry set by hand, so that only the
/// IPv4 source is forged, not ARP).
fn ping_from_a2s_address(lab: &VmLab) {
    let a1 = lab.vm(&A1);
    let _ = ping_from(a1, A2.ip, A3.ip, 3);
}

fn ping_from(ns: &Netns, src: &str, dst: &str, count: u32) -> String {
    let count = count.to_string();
    let args = [
        "-n", "-q", "-c", &count, "-i", "0.2", "-W", "1", "-w", "2", "-I", src, dst,
    ];
    let out = ns
        .exec_timeout("ping", &args, Duration::from_secs(6))
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// a1 announces the gateway's address as its own, three times.
fn gratuitous_arp_for_the_gateway(lab: &VmLab) {
    lab.vm(&A1)
        .exec_timeout(
            "arping",
            &[
                "-U", "-c", "3", "-w", "2", "-i", "eth0", "-S", GATEWAY, GATEWAY,
            ],
            Duration::from_secs(6),
        )
        .unwrap();
}

/// a1 takes a MAC that is not its port's and pings a3.
fn ping_from_a_foreign_mac(lab: &VmLab) {
    lab.topo.set_mac(A1.role, "eth0", FOREIGN_MAC).unwrap();
    let _ = ping(lab.vm(&A1), A3.ip, 3, Duration::from_secs(4));
    lab.topo.set_mac(A1.role, "eth0", A1.mac).unwrap();
    lab.vm(&A1).ip(&["neigh", "flush", "dev", "eth0"]).unwrap();
}

#[test]
#[ignore = "needs root: network namespaces (run with --include-ignored as root)"]
fn spoofed_addresses_reach_no_other_vm() {
    let _serial = daemon::setup(TOOLS);
    let lab = VmLab::start(CONFIG, &[&A1, &A2, &A3]);
    let (a1, a2) = (lab.vm(&A1), lab.vm(&A2));

    // Honest traffic flows, with the kernel's default offloads on every guest.
    let r = ping(a1, A2.ip, 3, Duration::from_secs(4)).unwrap();
    assert!(r.all_received(), "a1 -> a2: {r:?}");

    // a1 takes a2's address and a3's neighbour entry by hand.
    a1.ip(&["addr", "add", &format!("{}/32", A2.ip), "dev", "eth0"])
        .unwrap();
    a1.ip(&["addr", "add", &format!("{GATEWAY}/32"), "dev", "eth0"])
        .unwrap();
    a1.ip(&[
        "neigh",
        "replace",
        A3.ip,
        "lladdr",
        A3.mac,
        "dev",
        "eth0",
        "nud",
        "permanent",
    ])
    .unwrap();

    let forged_ip = ["icmp", "and", "src", "host", A2.ip];
    let seen = seen_by(&lab, &A3, &forged_ip, 1, || ping_from_a2s_address(&lab));
    assert_eq!(seen, 0, "a3 saw pings from a2's address sent by a1");
    assert!(lab.drops("spoofed_ip") >= 3, "{}", lab.drops("spoofed_ip"));

    let garp = ["arp", "and", "host", GATEWAY];
    let seen = seen_by(&lab, &A2, &garp, 1, || gratuitous_arp_for_the_gateway(&lab));
    assert_eq!(seen, 0, "a2 saw a1's gratuitous ARP for the gateway");
    assert!(
        lab.drops("spoofed_arp") >= 3,
        "{}",
        lab.drops("spoofed_arp")
    );
    let neigh = a2.ip(&["neigh", "show", GATEWAY]).unwrap();
    assert!(!neigh.contains(A1.mac), "a2's ARP cache poisoned: {neigh}");

    let foreign = ["ether", "src", FOREIGN_MAC];
    let seen = seen_by(&lab, &A3, &foreign, 1, || ping_from_a_foreign_mac(&lab));
    assert_eq!(seen, 0, "a3 saw frames from a MAC that is not a1's port's");
    assert!(
        lab.drops("spoofed_mac") >= 1,
        "{}",
        lab.drops("spoofed_mac")
    );

    // With port security off, the very same traffic gets through: the drops above were
    // port security's and nothing else's.
    set_port_security(&lab, false);
    let seen = seen_by(&lab, &A3, &forged_ip, 1, || ping_from_a2s_address(&lab));
    assert_eq!(seen, 1, "without port security a3 sees the forged pings");
    let seen = seen_by(&lab, &A2, &garp, 1, || gratuitous_arp_for_the_gateway(&lab));
    assert_eq!(seen, 1, "without port security a2 sees the gratuitous ARP");
    let seen = seen_by(&lab, &A3, &foreign, 1, || ping_from_a_foreign_mac(&lab));
    assert_eq!(seen, 1, "without port security a3 sees the foreign MAC");
}

/// dnsmasq in a1 serving the subnet, as a rogue DHCP server would; killed on drop.
struct RogueDhcp {
    proc: Option<netns::Proc>,
    dir: std::path::PathBuf,
}

impl RogueDhcp {
    fn start(ns: &Netns) -> RogueDhcp {
        let dir = std::env::temp_dir().join(format!("{}-rogue-dhcp", ns.name()));
        std::fs::create_dir_all(&dir).unwrap();
        let leases = dir.join("leases");
        let args = [
            "--no-daemon".to_owned(),
            "--conf-file=/dev/null".to_owned(),
            "--port=0".to_owned(),
            "--interface=eth0".to_owned(),
            "--bind-interfaces".to_owned(),
            "--dhcp-range=198.18.30.100,198.18.30.150,120s".to_owned(),
            format!("--dhcp-leasefile={}", leases.display()),
            format!("--pid-file={}", dir.join("pid").display()),
        ];
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut proc = ns.spawn("dnsmasq", &args).unwrap();
        // dnsmasq says it started DHCP on its range once it listens.
        assert!(
            proc.wait_stderr_contains("DHCP, IP range", Duration::from_secs(5)),
            "dnsmasq did not start: {}",
            proc.stderr_so_far()
        );
        RogueDhcp {
            proc: Some(proc),
            dir,
        }
    }
}

impl Drop for RogueDhcp {
    fn drop(&mut self) {
        if let Some(p) = self.proc.take() {
            let _ = p.stop(Duration::from_secs(1));
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
#[ignore = "needs root: network namespaces (run with --include-ignored as root)"]
fn a_rogue_dhcp_server_answers_nobody() {
    let _serial = daemon::setup(TOOLS);
    let lab = VmLab::start(CONFIG, &[&A1, &A2, &A3]);
    let _rogue = RogueDhcp::start(lab.vm(&A1));
    let offers = ["udp", "and", "src", "port", "67"];

    // a2 asks three times; no offer from a1 ever reaches it.
    let seen = seen_by(&lab, &A2, &offers, 1, || {
        let mut client = DhcpClient::udhcpc_once(lab.vm(&A2), "eth0", 3).unwrap();
        let _ = client.wait_exit(Duration::from_secs(8));
    });
    assert_eq!(seen, 0, "a2 received a rogue DHCP offer");
    assert!(
        lab.drops("dhcp_server_from_vm") >= 1,
        "{}",
        lab.drops("dhcp_server_from_vm")
    );

    // Without port security on a1, its offers reach a2.
    set_port_security(&lab, false);
    let seen = seen_by(&lab, &A2, &offers, 1, || {
        let mut client = DhcpClient::udhcpc_once(lab.vm(&A2), "eth0", 3).unwrap();
        let _ = client.wait_exit(Duration::from_secs(8));
    });
    assert_eq!(seen, 1, "without port security the rogue's offer arrives");
}
