//! End to end: a router on a VXLAN network runs on one polluxd host and serves the VMs of
//! another (Neutron's legacy L3 agent: centralized routing), in network namespaces.
//!
//! ```text
//!  inet: eth0 203.0.113.1 ──veth── <P>exa ┐
//!                                         polluxd hosta (ns ha, 198.18.0.1): router r1
//!                                  <P>ula ──veth── ua ┐
//!                                                   under: bridge br0 (the underlay)
//!                                  <P>ulb ──veth── ub ┘
//!  b1: eth0 (DHCP) ──veth── <P>b1 ┐ polluxd hostb (ns hb, 198.18.0.2)
//!  b2: eth0 198.18.21.13 ──veth── <P>b2 ┘  (<P>exb: hostb's external uplink, unconnected)
//! ```
//!
//! `configs/e2e-overlay-router.toml`, the same state on both hosts: b1 gets its address
//! from hostb's DHCP server (hosta's answers nobody), reaches the "internet" through r1 on
//! hosta with SNAT (checked on the wire in inet), and b2 is reached from the internet
//! through its floating IP; ARP for the gateway is answered on hostb.
//!
//! Needs root and `ip`, `ping`, `tcpdump`, `udhcpc`: it fails, never skips, when any is
//! missing. Namespaces and interfaces are named under the prefix `ov<pid>t<n>`.

use std::time::Duration;

use pollux_tests::daemon::{self, ConfigFile, Polluxd};
use pollux_tests::dhcp::DhcpClient;
use pollux_tests::netns::{
    self, ping, Capture, CaptureFormat, Netns, Prefix, Topology, VethOptions,
};
use serde_json::json;

const TOOLS: &[&str] = &["ip", "ping", "tcpdump", "udhcpc"];
const CONFIG: &str = "e2e-overlay-router.toml";
const INTERNET: &str = "203.0.113.1";
const ROUTER_EXT: [u8; 4] = [203, 0, 113, 10];
const B2_FIP: &str = "203.0.113.20";
const B1_IP: &str = "198.18.21.12";
const GATEWAY: &str = "198.18.21.1";
/// The underlay's 1500 minus the 50 bytes of VXLAN.
const TENANT_MTU: u32 = 1450;

struct Lab {
    topo: Topology,
}

impl Lab {
    fn new() -> Lab {
        let mut topo = Topology::with_prefix(Prefix::next_under("ov").unwrap());
        for role in ["ha", "hb", "under", "inet", "b1", "b2"] {
            topo.add_ns(role).unwrap();
            topo.ns(role).unwrap().disable_ipv6().unwrap();
        }
        for (role, mac) in [("b1", "fa:16:3e:18:03:12"), ("b2", "fa:16:3e:18:03:13")] {
            let ifname = topo.prefix().ifname(role).unwrap();
            topo.veth_with(
                "hb",
                &ifname,
                role,
                "eth0",
                &VethOptions {
                    mtu: Some(TENANT_MTU),
                    mac_b: Some(mac.into()),
                    ..VethOptions::default()
                },
            )
            .unwrap();
        }
        topo.addr("b2", "eth0", "198.18.21.13/24").unwrap();
        topo.route("b2", "default", GATEWAY).unwrap();
        let under = topo.ns("under").unwrap();
        under.ip(&["link", "add", "br0", "type", "bridge"]).unwrap();
        for (host, ul, port) in [("ha", "ula", "ua"), ("hb", "ulb", "ub")] {
            let ifname = topo.prefix().ifname(ul).unwrap();
            topo.veth(host, &ifname, "under", port).unwrap();
            topo.ns("under")
                .unwrap()
                .ip(&["link", "set", port, "master", "br0"])
                .unwrap();
        }
        topo.link_up("under", "br0").unwrap();
        let exa = topo.prefix().ifname("exa").unwrap();
        topo.veth("ha", &exa, "inet", "eth0").unwrap();
        topo.addr("inet", "eth0", &format!("{INTERNET}/24"))
            .unwrap();
        // hostb's external uplink: the same state on every host, going nowhere here.
        let exb = topo.prefix().ifname("exb").unwrap();
        topo.veth("hb", &exb, "under", "xb").unwrap();
        Lab { topo }
    }

    /// polluxd for `host` ("hosta" or "hostb") in its namespace, its worker on `core`.
    fn start(&self, host: &str, core: &str) -> (Polluxd, ConfigFile) {
        let template =
            std::fs::read_to_string(daemon::workspace_root().join("configs").join(CONFIG)).unwrap();
        let (ns, ul, ext, local) = match host {
            "hosta" => ("ha", "ula", "exa", "198.18.0.1"),
            _ => ("hb", "ulb", "exb", "198.18.0.2"),
        };
        let text = template
            .replace("@HOST@", host)
            .replace("@UL@", ul)
            .replace("@EXT@", ext)
            .replace("@LOCAL@", local)
            .replace(daemon::PLACEHOLDER, self.topo.prefix().as_str());
        let config = ConfigFile::write(&format!("{}-{host}", self.topo.prefix()), &text).unwrap();
        let polluxd = Polluxd::start(self.topo.ns(ns).unwrap(), config.path(), core)
            .unwrap_or_else(|e| panic!("{e}"));
        (polluxd, config)
    }

    fn ns(&self, role: &str) -> &Netns {
        self.topo.ns(role).unwrap()
    }

    fn ping(&self, from: &str, to: &str, count: u32) -> netns::PingResult {
        let limit = Duration::from_millis(u64::from(count) * 200 + 3000);
        ping(self.ns(from), to, count, limit).unwrap()
    }
}

fn dhcp_offers(p: &Polluxd) -> u64 {
    p.call("stats.get", json!({}))["dhcp"]["offers"]
        .as_u64()
        .unwrap()
}

#[test]
#[ignore = "needs root: network namespaces (run with --include-ignored as root)"]
fn a_vm_of_one_host_gets_dhcp_there_and_the_internet_through_a_router_on_another() {
    let _serial = daemon::setup(TOOLS);
    let lab = Lab::new();
    let (host_a, _ca) = lab.start("hosta", "0");
    let (host_b, _cb) = lab.start("hostb", &daemon::last_cpu());
    let logs = || {
        format!(
            "hosta:\n{}\nhostb:\n{}",
            host_a.stderr_so_far(),
            host_b.stderr_so_far()
        )
    };

    // DHCP: b1 is bound to hostb, which answers; hosta serves none of hostb's ports.
    let mut client = DhcpClient::udhcpc_once(lab.ns("b1"), "eth0", 5).unwrap();
    let status = client.wait_exit(Duration::from_secs(15)).unwrap();
    assert!(
        status.is_some_and(|s| s.success()),
        "udhcpc on b1: {status:?} {:?}\n{}",
        client.events(),
        logs()
    );
    let bound = client
        .events()
        .into_iter()
        .find(|e| e.reason == "bound")
        .expect("a lease");
    assert_eq!(bound.get("ip"), B1_IP);
    assert_eq!(bound.get("router"), GATEWAY);
    assert_eq!(bound.get("mtu"), TENANT_MTU.to_string());
    assert!(dhcp_offers(&host_b) >= 1);
    assert_eq!(dhcp_offers(&host_a), 0, "hosta answered a port of hostb");

    // Warm-up: the endpoints learn each other's underlay MAC, r1 its neighbours.
    let _ = lab.ping("b1", INTERNET, 3);

    // The internet through r1 on hosta, source-NATed to its gateway address.
    let before = host_b.worker_stat("arp_responder_replies");
    lab.ns("b1").ip(&["neigh", "flush", "dev", "eth0"]).unwrap();
    let capture = Capture::start_inbound(
        lab.ns("inet"),
        "eth0",
        4,
        &["icmp", "and", "icmp[icmptype]", "=", "8"],
        CaptureFormat::Pcap,
    )
    .unwrap();
    let r = lab.ping("b1", INTERNET, 4);
    assert!(r.all_received(), "b1 -> internet: {r:?}\n{}", logs());
    let seen = capture.finish(Duration::from_secs(2)).unwrap();
    assert_eq!(seen.frames.len(), 4, "echo requests seen in inet");
    for f in &seen.frames {
        assert_eq!(f[26..30], ROUTER_EXT, "source NAT to r1's gateway address");
    }
    assert!(
        host_b.worker_stat("arp_responder_replies") > before,
        "hostb answered b1's ARP for the gateway"
    );
    assert!(host_a.worker_stat("vxlan_decapsulated") >= 4);
    assert!(host_a.worker_stat("vxlan_encapsulated") >= 4);

    // b2's floating IP, from the internet.
    let _ = lab.ping("inet", B2_FIP, 2);
    let r = lab.ping("inet", B2_FIP, 4);
    assert!(
        r.all_received(),
        "internet -> b2's floating IP: {r:?}\n{}",
        logs()
    );

    for (name, p) in [("hosta", host_a), ("hostb", host_b)] {
        let (status, stderr) = p.stop().unwrap_or_else(|e| panic!("{e}"));
        assert!(status.success(), "{name} exited with {status}:\n{stderr}");
    }
}
