//! End to end: VXLAN between polluxd and a Linux host, in network namespaces.
//!
//! ```text
//!  a1: eth0 203.0.113.11 ──veth── <P>a1 ┐
//!                                       polluxd "hosta" (namespace host), local_ip 198.18.0.1
//!                                  <P>ul ──veth── ua ┐
//!                                               under: bridge br0 (the underlay)
//!                     hostb: eth0 198.18.0.2 ──veth── ub ┘
//!                     hostb: vx0 (vxlan id 5000 dstport 4789 local .2 remote .1) + bridge brb
//!  b1: eth0 203.0.113.12 ──veth── vb (in hostb, on brb)
//! ```
//!
//! `configs/e2e-vxlan.toml`: a1 is bound to hosta, b1 to hostb (an l2population entry for
//! polluxd). Checked: ping and ARP both ways (polluxd's ARP responder answers a1 for b1),
//! broadcast both ways, the outer headers polluxd sends (tcpdump on hostb), and iperf3 TCP.
//!
//! Needs root and `ip`, `ping`, `arping`, `iperf3`, `tcpdump`: it fails, never skips, when
//! any is missing. Namespaces and interfaces are named under the prefix `ov<pid>t<n>`.

use std::time::Duration;

use pollux_tests::daemon::{self, parse_worker_totals, ConfigFile, Polluxd};
use pollux_tests::netns::{
    self, arping, iperf3_client, iperf3_server, ping, Capture, CaptureFormat, Netns, Prefix,
    Topology, VethOptions,
};
use pollux_tests::vm_lab::{Vm, VmNet};

const TOOLS: &[&str] = &["ip", "ping", "arping", "iperf3", "tcpdump"];
const CONFIG: &str = "e2e-vxlan.toml";
const A1_IP: &str = "203.0.113.11";
const B1_IP: &str = "203.0.113.12";
const NOBODY: &str = "203.0.113.99";
const A1_MAC: &str = "fa:16:3e:18:00:11";
const B1_MAC: &str = "fa:16:3e:18:00:12";
const LOCAL_IP: [u8; 4] = [198, 18, 0, 1];
const HOSTB_IP: [u8; 4] = [198, 18, 0, 2];
const VNI: u32 = 5000;
/// The underlay's 1500 minus the 50 bytes of VXLAN.
const TENANT_MTU: u32 = 1450;

/// a1, the VM on polluxd.
const A1: Vm = Vm {
    role: "a1",
    mac: A1_MAC,
    ip: A1_IP,
};

/// The lab: the kit's [`VmNet`] with a1 on polluxd, and the underlay and host B wired by
/// the test.
fn new_lab() -> VmNet {
    {
        let topo = Topology::with_prefix(Prefix::next_under("ov").unwrap());
        let tenant = VethOptions {
            mtu: Some(TENANT_MTU),
            ..VethOptions::default()
        };
        let net = VmNet::with_roles(topo, &[A1.role, "under", "hostb", "b1"], &[]);
        // This host: a1 on polluxd, the uplink into the underlay.
        net.plug(&A1, &tenant);
        let lab = net;
        let t = &lab.topo;
        let ul = t.prefix().ifname("ul").unwrap();
        t.veth("host", &ul, "under", "ua").unwrap();
        // The underlay: one bridge.
        let under = t.ns("under").unwrap();
        under.ip(&["link", "add", "br0", "type", "bridge"]).unwrap();
        t.veth("under", "ub", "hostb", "eth0").unwrap();
        for port in ["ua", "ub"] {
            under.ip(&["link", "set", port, "master", "br0"]).unwrap();
        }
        t.link_up("under", "br0").unwrap();
        // Host B: the kernel's VXLAN endpoint and a bridge, as Neutron's Linux bridge agent
        // builds them, with polluxd as the static flood destination.
        t.addr("hostb", "eth0", "198.18.0.2/24").unwrap();
        let hostb = t.ns("hostb").unwrap();
        hostb
            .ip(&[
                "link",
                "add",
                "vx0",
                "type",
                "vxlan",
                "id",
                "5000",
                "dstport",
                "4789",
                "local",
                "198.18.0.2",
                "remote",
                "198.18.0.1",
                "dev",
                "eth0",
            ])
            .unwrap();
        hostb.ip(&["link", "add", "brb", "type", "bridge"]).unwrap();
        t.veth_with(
            "hostb",
            "vb",
            "b1",
            "eth0",
            &VethOptions {
                mac_b: Some(B1_MAC.into()),
                ..tenant
            },
        )
        .unwrap();
        for port in ["vx0", "vb"] {
            hostb.ip(&["link", "set", port, "master", "brb"]).unwrap();
            t.link_up("hostb", port).unwrap();
        }
        t.link_up("hostb", "brb").unwrap();
        t.addr("b1", "eth0", &format!("{B1_IP}/24")).unwrap();
        lab
    }
}

/// Checks the outer headers of one VXLAN frame polluxd sent to host B; returns the
/// inner frame.
fn check_outer(f: &[u8]) -> &[u8] {
    assert!(f.len() > 50, "{} bytes", f.len());
    let vtep_mac = [0x02, 0x70, 0x76, LOCAL_IP[1], LOCAL_IP[2], LOCAL_IP[3]];
    assert_eq!(&f[6..12], &vtep_mac, "outer source MAC: the endpoint's");
    assert_eq!(&f[12..14], &[0x08, 0x00]);
    let ip = &f[14..34];
    assert_eq!(ip[0], 0x45);
    assert_eq!(ip[6] & 0x40, 0x40, "DF set");
    assert_eq!(ip[9], 17);
    assert_eq!(&ip[12..16], &LOCAL_IP);
    assert_eq!(&ip[16..20], &HOSTB_IP);
    assert_eq!(
        pollux_tests::frames::internet_checksum(ip),
        0,
        "IPv4 header checksum"
    );
    let sport = u16::from_be_bytes([f[34], f[35]]);
    assert!(sport >= 49152, "UDP source port {sport}");
    assert_eq!(u16::from_be_bytes([f[36], f[37]]), 4789);
    assert_eq!(&f[40..42], &[0, 0], "UDP checksum zero");
    assert_eq!(f[42], 0x08, "VXLAN I flag");
    assert_eq!(u32::from_be_bytes([f[46], f[47], f[48], f[49]]) >> 8, VNI);
    &f[50..]
}

#[test]
#[ignore = "needs root: network namespaces (run with --include-ignored as root)"]
fn vxlan_with_a_kernel_host_ping_arp_broadcast_headers_and_tcp() {
    let _serial = daemon::setup(TOOLS);
    let lab = new_lab();
    let config = ConfigFile::render(CONFIG, lab.topo.prefix().as_str()).unwrap();
    let polluxd = lab.start(&config);

    // The first frame towards host B finds its underlay MAC unknown: it is dropped
    // (tunnel_unresolved) while polluxd asks for it. One warm-up ping absorbs that.
    let _ = lab.ping("a1", B1_IP, 2);

    // Outer headers of what polluxd sends, seen by host B.
    let capture = Capture::start_inbound(
        lab.ns("hostb"),
        "eth0",
        3,
        &["udp", "dst", "port", "4789"],
        CaptureFormat::Pcap,
    )
    .unwrap();
    let r = lab.ping("a1", B1_IP, 5);
    assert!(
        r.all_received(),
        "a1 -> b1: {r:?}; polluxd stderr:\n{}",
        polluxd.stderr_so_far()
    );
    let captured = capture.finish(Duration::from_secs(3)).unwrap();
    assert_eq!(captured.frames.len(), 3, "{captured:?}");
    for f in &captured.frames {
        let inner = check_outer(f);
        // Inner: a1 -> b1, IPv4 ICMP.
        assert_eq!(&inner[6..12], &mac_bytes(A1_MAC));
        assert_eq!(&inner[0..6], &mac_bytes(B1_MAC));
    }
    let r = lab.ping("b1", A1_IP, 5);
    assert!(r.all_received(), "b1 -> a1: {r:?}");

    // ARP both ways: a1's requests for b1 are answered by polluxd's ARP responder
    // without crossing the underlay; b1's reach a1 over the overlay.
    let before = polluxd.worker_stat("arp_responder_replies");
    let got = arping(lab.ns("a1"), "eth0", B1_IP, 3, Duration::from_secs(5)).unwrap();
    assert_eq!(got, 3, "arping a1 -> b1");
    let answered = polluxd.worker_stat("arp_responder_replies") - before;
    assert!(answered >= 3, "ARP responder answered {answered}");
    let got = arping(lab.ns("b1"), "eth0", A1_IP, 3, Duration::from_secs(5)).unwrap();
    assert_eq!(got, 3, "arping b1 -> a1");

    // Broadcast both ways: ARP for an address nobody has floods to the other host.
    for (from, to) in [("a1", "b1"), ("b1", "a1")] {
        let capture = Capture::start_inbound(
            lab.ns(to),
            "eth0",
            1,
            &["arp", "and", "host", NOBODY],
            CaptureFormat::Pcap,
        )
        .unwrap();
        let _ = arping(lab.ns(from), "eth0", NOBODY, 1, Duration::from_secs(2));
        let seen = capture.finish(Duration::from_secs(3)).unwrap();
        assert_eq!(seen.frames.len(), 1, "broadcast {from} -> {to}: {seen:?}");
        assert_eq!(&seen.frames[0][0..6], &[0xff; 6]);
    }

    // TCP across the overlay.
    let server = iperf3_server(lab.ns("b1"), B1_IP, 5201).unwrap();
    let tcp = iperf3_client(lab.ns("a1"), B1_IP, server.port(), 3).unwrap();
    drop(server);
    assert!(
        tcp.received_bps > 0.0 && tcp.received_bytes > 0,
        "iperf3 a1 -> b1 moved nothing: {tcp:?}"
    );
    eprintln!(
        "iperf3 a1 -> b1 over VXLAN: {:.0} Mbit/s",
        tcp.received_bps / 1e6
    );
    let encapsulated = polluxd.worker_stat("vxlan_encapsulated");
    let decapsulated = polluxd.worker_stat("vxlan_decapsulated");
    assert!(encapsulated > 0 && decapsulated > 0);

    let (status, stderr) = polluxd.stop().unwrap_or_else(|e| panic!("{e}"));
    assert!(status.success(), "polluxd exited with {status}:\n{stderr}");
    let totals = parse_worker_totals(&stderr).expect("the final worker line");
    eprintln!("polluxd: {totals:?}, {encapsulated} encapsulated, {decapsulated} decapsulated");
}

fn mac_bytes(s: &str) -> [u8; 6] {
    let mut m = [0u8; 6];
    for (i, b) in s.split(':').enumerate() {
        m[i] = u8::from_str_radix(b, 16).unwrap();
    }
    m
}

/// Two polluxd hosts on one underlay bridge:
///
/// ```text
///  a1 (X, .11), a2 (Y, .11) ── polluxd hosta (ns ha, 198.18.0.1) ── <P>ula ─┐
///                                                                  under: br0
///  b1 (X, .12), b2 (Y, .13) ── polluxd hostb (ns hb, 198.18.0.2) ── <P>ulb ─┘
/// ```
struct TwoHosts {
    topo: Topology,
}

/// (role, host namespace, MAC, address) of the VMs of `configs/e2e-vxlan-two-hosts.toml`.
const TWO_HOST_VMS: [(&str, &str, &str, &str); 4] = [
    ("a1", "ha", "fa:16:3e:18:01:11", "203.0.113.11"),
    ("a2", "ha", "fa:16:3e:18:01:21", "203.0.113.11"),
    ("b1", "hb", "fa:16:3e:18:01:12", "203.0.113.12"),
    ("b2", "hb", "fa:16:3e:18:01:22", "203.0.113.13"),
];

impl TwoHosts {
    fn new() -> TwoHosts {
        let mut topo = Topology::with_prefix(Prefix::next_under("ov").unwrap());
        for role in ["ha", "hb", "under", "a1", "a2", "b1", "b2"] {
            topo.add_ns(role).unwrap();
            topo.ns(role).unwrap().disable_ipv6().unwrap();
        }
        for (role, host, mac, ip) in TWO_HOST_VMS {
            let ifname = topo.prefix().ifname(role).unwrap();
            topo.veth_with(
                host,
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
            topo.addr(role, "eth0", &format!("{ip}/24")).unwrap();
        }
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
        TwoHosts { topo }
    }

    /// polluxd for `host` ("hosta" or "hostb") in its namespace, its worker on `core`.
    fn start(&self, host: &str, core: &str) -> (Polluxd, ConfigFile) {
        let template = std::fs::read_to_string(
            daemon::workspace_root()
                .join("configs")
                .join("e2e-vxlan-two-hosts.toml"),
        )
        .unwrap();
        let (ns, ul, local) = match host {
            "hosta" => ("ha", "ula", "198.18.0.1"),
            _ => ("hb", "ulb", "198.18.0.2"),
        };
        let text = template
            .replace("@HOST@", host)
            .replace("@UL@", ul)
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

#[test]
#[ignore = "needs root: network namespaces (run with --include-ignored as root)"]
fn two_polluxd_hosts_reach_isolate_and_answer_arp_locally() {
    let _serial = daemon::setup(TOOLS);
    let lab = TwoHosts::new();
    // One worker per CPU for the length of the test.
    let (host_a, _ca) = lab.start("hosta", "0");
    let (host_b, _cb) = lab.start("hostb", &daemon::last_cpu());

    // Warm-up: each endpoint learns the other's underlay MAC (the first frame to an
    // unresolved endpoint is dropped while it is asked for).
    let _ = lab.ping("a1", "203.0.113.12", 2);
    let _ = lab.ping("a2", "203.0.113.13", 2);

    for (from, to) in [
        ("a1", "203.0.113.12"),
        ("b1", "203.0.113.11"),
        ("a2", "203.0.113.13"),
        ("b2", "203.0.113.11"),
    ] {
        let r = lab.ping(from, to, 4);
        assert!(
            r.all_received(),
            "{from} -> {to}: {r:?}\nhosta:\n{}\nhostb:\n{}",
            host_a.stderr_so_far(),
            host_b.stderr_so_far()
        );
    }
    // Same subnet, other VNI: nothing crosses.
    for (from, to) in [("a1", "203.0.113.13"), ("a2", "203.0.113.12")] {
        let r = lab.ping(from, to, 2);
        assert_eq!(r.received, 0, "{from} -> {to} crossed networks: {r:?}");
    }

    // ARP: a1 asks for b1; hosta answers, and no ARP is carried over the underlay.
    let capture = Capture::start_inbound(
        lab.ns("under"),
        "ua",
        200,
        &["udp", "dst", "port", "4789"],
        CaptureFormat::Pcap,
    )
    .unwrap();
    let before = host_a.worker_stat("arp_responder_replies");
    lab.ns("a1").ip(&["neigh", "flush", "dev", "eth0"]).unwrap();
    let got = arping(
        lab.ns("a1"),
        "eth0",
        "203.0.113.12",
        3,
        Duration::from_secs(5),
    )
    .unwrap();
    assert_eq!(got, 3, "arping a1 -> b1");
    let r = lab.ping("a1", "203.0.113.12", 2);
    assert!(r.all_received(), "{r:?}");
    let answered = host_a.worker_stat("arp_responder_replies") - before;
    assert!(answered >= 3, "hosta's ARP responder answered {answered}");
    let crossed = capture.finish(Duration::from_secs(1)).unwrap();
    assert!(!crossed.frames.is_empty(), "the pings crossed the underlay");
    let inner_arp = crossed
        .frames
        .iter()
        .filter(|f| f.len() >= 64 && f[62..64] == [0x08, 0x06])
        .count();
    assert_eq!(inner_arp, 0, "ARP carried over the underlay");

    // TCP between the hosts.
    let server = iperf3_server(lab.ns("b1"), "203.0.113.12", 5201).unwrap();
    let tcp = iperf3_client(lab.ns("a1"), "203.0.113.12", server.port(), 2).unwrap();
    drop(server);
    assert!(
        tcp.received_bytes > 0,
        "iperf3 a1 -> b1 moved nothing: {tcp:?}"
    );
    eprintln!(
        "iperf3 a1 (hosta) -> b1 (hostb), polluxd to polluxd over VXLAN: {:.0} Mbit/s",
        tcp.received_bps / 1e6
    );
    for (name, p) in [("hosta", host_a), ("hostb", host_b)] {
        let (status, stderr) = p.stop().unwrap_or_else(|e| panic!("{e}"));
        assert!(status.success(), "{name} exited with {status}:\n{stderr}");
    }
}
