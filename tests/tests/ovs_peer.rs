//! Open vSwitch (userspace `netdev` datapath) as an independent 802.1Q peer: checks that
//! the OVS instance the uplink tests use tags and separates VLANs as expected, seen from
//! its trunk with tcpdump and hand-built tagged frames.
//!
//! Topology, all in namespaces this test makes with the namespace kit (`plx<pid>t<n>-*`)
//! and removes, addresses in 198.18.0.0/15 only:
//!
//! ```text
//!   TRUNK ns            OVS ns: bridge br0 (netdev)         H100 ns / H200 ns
//!   trunk  <-veth->  trunk (trunks=100,200)
//!                    acc100 (tag=100)           <-veth->  eth0 198.18.50.1/24
//!                    acc200 (tag=200)           <-veth->  eth0 198.18.50.1/24
//! ```
//!
//! Both hosts have the same address, so only the tag tells them apart. Needs root and
//! `apt-get install -y openvswitch-switch tcpdump iproute2 iputils-ping python3`; it fails
//! (never skips) when any of that is missing.

use std::path::{Path, PathBuf};
use std::time::Duration;

use pollux_tests::netns::{self, Capture, CaptureFormat, Topology, VethOptions};
use pollux_tests::ovs::{missing_tools, sweep_stale_workdirs, OvsSwitch, OVS_TOOLS};

const WORKDIR_PARENT: &str = "/tmp";
const WORKDIR_PREFIX: &str = "pxovs-";
const BRIDGE: &str = "br0";

const HOST_IP: &str = "198.18.50.1";
const HOST_CIDR: &str = "198.18.50.1/24";
const PEER_IP: &str = "198.18.50.2";
const H100_MAC: &str = "02:00:c6:12:00:64";
const H200_MAC: &str = "02:00:c6:12:00:c8";
const PEER_MAC: &str = "02:00:c6:12:00:fe";

/// Sends one 802.1Q-tagged ARP request on an interface through an AF_PACKET socket.
/// argv: ifname vid src_mac sender_ip target_ip.
const INJECT_PY: &str = r#"
import socket, struct, sys
ifname, vid = sys.argv[1], int(sys.argv[2])
mac = bytes.fromhex(sys.argv[3].replace(":", ""))
sip, tip = socket.inet_aton(sys.argv[4]), socket.inet_aton(sys.argv[5])
f = b"\xff" * 6 + mac + struct.pack("!HHH", 0x8100, vid, 0x0806)
f += struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1) + mac + sip + b"\x00" * 6 + tip
f += b"\x00" * max(0, 64 - len(f))
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind((ifname, 0))
assert s.send(f) == len(f)
"#;

fn python() -> &'static str {
    if Path::new("/usr/bin/python3").is_file() {
        "/usr/bin/python3"
    } else {
        "python3"
    }
}

/// Fails (with what is missing) unless the test can run: root and the tools.
fn preflight() {
    netns::require_root();
    let mut tools: Vec<&str> = OVS_TOOLS.to_vec();
    tools.extend(["tcpdump", "ip", "ping"]);
    let mut missing = missing_tools(&tools);
    if !Path::new("/usr/bin/python3").is_file() && missing_tools(&["python3"]).len() == 1 {
        missing.push("python3".into());
    }
    assert!(
        missing.is_empty(),
        "ovs_peer needs these programs, which are not installed: {}. Install them with \
         `apt-get install -y openvswitch-switch tcpdump iproute2 iputils-ping python3` \
         (the test starts its own OVS daemons; the system service need not run).",
        missing.join(", ")
    );
}

/// Runs `argv` in the namespace of `role` and returns its stdout (bounded, checked).
fn exec(topo: &Topology, role: &str, argv: &[&str]) -> netns::Result<String> {
    topo.ns(role)?.exec_ok(argv[0], &argv[1..])
}

/// Frames `role` receives on `ifname`, with link-level headers.
fn capture(topo: &Topology, role: &str, ifname: &str, count: u32) -> Capture {
    let ns = topo.ns(role).expect("namespace");
    Capture::start_inbound(ns, ifname, count, &[], CaptureFormat::Text)
        .unwrap_or_else(|e| panic!("tcpdump in {role} on {ifname}: {e}"))
}

/// What a capture saw, one line per frame.
fn finish(cap: Capture, window: Duration) -> String {
    cap.finish(window).expect("capture").lines.join("\n")
}

fn build_topology() -> Topology {
    let mut topo = Topology::new();
    for role in ["ovs", "trunk", "h100", "h200"] {
        topo.add_ns(role)
            .and_then(|ns| ns.disable_ipv6())
            .unwrap_or_else(|e| panic!("creating namespace {role}: {e}"));
    }
    let veths = [
        ("trunk", "trunk", None),
        ("h100", "acc100", Some(H100_MAC)),
        ("h200", "acc200", Some(H200_MAC)),
    ];
    for (far, ovs_if, mac) in veths {
        let far_if = if ovs_if == "trunk" { "trunk" } else { "eth0" };
        let opts = VethOptions {
            mac_b: mac.map(str::to_string),
            ..VethOptions::default()
        };
        topo.veth_with("ovs", ovs_if, far, far_if, &opts)
            .unwrap_or_else(|e| panic!("veth {ovs_if}: {e}"));
        if mac.is_some() {
            topo.addr(far, "eth0", HOST_CIDR)
                .unwrap_or_else(|e| panic!("{far}: {e}"));
        }
    }
    topo
}

/// Injects an ARP request for HOST_IP tagged `vid` on the trunk and checks who answers:
/// `answer` is the (namespace, MAC) of the host on that VLAN, or `None` if the VLAN is not
/// carried by the trunk; `silent` are the hosts that must see nothing.
fn inject_case(
    sw: &OvsSwitch,
    topo: &Topology,
    vid: u16,
    answer: Option<(&str, &str)>,
    silent: &[&str],
) {
    let diag = || sw.diagnostics(BRIDGE);
    // Forget what earlier cases taught the hosts, so the neighbour checks below see
    // only this case's frame.
    for ns in ["h100", "h200"] {
        exec(
            topo,
            ns,
            &["ip", "neigh", "flush", "to", PEER_IP, "dev", "eth0"],
        )
        .unwrap_or_else(|e| panic!("{ns}: {e}"));
    }
    let cap_trk = capture(topo, "trunk", "trunk", 20);
    let cap_answer = answer.map(|(ns, _)| capture(topo, ns, "eth0", 20));
    let cap_silent: Vec<Capture> = silent
        .iter()
        .map(|ns| capture(topo, ns, "eth0", 20))
        .collect();

    exec(
        topo,
        "trunk",
        &[
            python(),
            "-c",
            INJECT_PY,
            "trunk",
            &vid.to_string(),
            PEER_MAC,
            PEER_IP,
            HOST_IP,
        ],
    )
    .unwrap_or_else(|e| panic!("injecting the VID {vid} ARP request: {e}"));

    let window = Duration::from_secs(2);
    let trk = finish(cap_trk, window);
    let got_answer = cap_answer.map(|c| finish(c, Duration::ZERO));
    let got_silent: Vec<String> = cap_silent
        .into_iter()
        .map(|c| finish(c, Duration::ZERO))
        .collect();

    for (ns, out) in silent.iter().zip(&got_silent) {
        assert!(
            out.trim().is_empty(),
            "VID {vid}: {ns} must see nothing of a frame for another VLAN, got:\n{out}\n{}",
            diag()
        );
    }

    match answer {
        Some((ns, mac)) => {
            let host = got_answer.unwrap_or_default();
            let req = format!("Request who-has {HOST_IP} tell {PEER_IP}");
            assert!(
                host.lines().any(|l| l.contains(&req)
                    && l.starts_with_time_then(PEER_MAC)
                    && l.contains("ethertype ARP")
                    && !l.contains("802.1Q")),
                "VID {vid}: {ns} must receive the ARP request untagged, got:\n{host}\n{}",
                diag()
            );
            let reply = format!("Reply {HOST_IP} is-at {mac}");
            let lines: Vec<&str> = trk.lines().filter(|l| !l.trim().is_empty()).collect();
            assert!(
                lines.len() == 1
                    && lines[0].contains(&format!("{mac} > {PEER_MAC}"))
                    && lines[0].contains(&format!(
                        "ethertype 802.1Q (0x8100), length 46: vlan {vid},"
                    ))
                    && lines[0].contains(&reply),
                "VID {vid}: the trunk must receive exactly the reply of {ns} ({mac}), tagged \
                 {vid}, got:\n{trk}\n{}",
                diag()
            );
            let neigh = exec(topo, ns, &["ip", "neigh", "show", PEER_IP]).unwrap_or_default();
            assert!(
                neigh.contains(PEER_MAC),
                "VID {vid}: {ns} must have learned {PEER_IP} at {PEER_MAC} from the request, \
                 got {neigh:?}"
            );
        }
        None => {
            assert!(
                trk.trim().is_empty(),
                "VID {vid} is not in trunks=: nothing must come back on the trunk, got:\n{trk}\n{}",
                diag()
            );
        }
    }
    for ns in silent {
        let neigh = exec(topo, ns, &["ip", "neigh", "show", PEER_IP]).unwrap_or_default();
        assert!(
            !neigh.contains(PEER_MAC),
            "VID {vid}: {ns} must not have heard of {PEER_MAC}, got {neigh:?}"
        );
    }
}

trait LineExt {
    /// Whether the line is `<timestamp> <src MAC> > ...`.
    fn starts_with_time_then(&self, mac: &str) -> bool;
}

impl LineExt for &str {
    fn starts_with_time_then(&self, mac: &str) -> bool {
        self.split_whitespace().nth(1) == Some(mac)
    }
}

#[test]
#[ignore = "needs root: network namespaces (run with --include-ignored as root)"]
fn ovs_netdev_trunk_tags_and_separates_vlans() {
    preflight();
    netns::remove_stale_once();
    sweep_stale_workdirs(Path::new(WORKDIR_PARENT), WORKDIR_PREFIX);

    // Drop order is the reverse of declaration: captures, then the switch (daemons and
    // work directory), then the namespaces.
    let topo = build_topology();
    let workdir = PathBuf::from(format!(
        "{WORKDIR_PARENT}/{WORKDIR_PREFIX}{}",
        std::process::id()
    ));
    let sw = OvsSwitch::start(topo.ns("ovs").expect("ovs").name(), &workdir)
        .unwrap_or_else(|e| panic!("starting the private Open vSwitch: {e}"));
    let diag = || sw.diagnostics(BRIDGE);

    sw.add_bridge(BRIDGE).expect("add bridge");
    sw.add_trunk(BRIDGE, "trunk", &[100, 200])
        .expect("add trunk");
    sw.add_port(BRIDGE, "acc100", Some(100)).expect("acc100");
    sw.add_port(BRIDGE, "acc200", Some(200)).expect("acc200");
    sw.wait_ready()
        .unwrap_or_else(|e| panic!("OVS ports: {e}\n{}", diag()));

    // (1) H100 resolves 198.18.50.2: its ARP requests leave the trunk tagged 100, and
    // neither the trunk nor H200 sees anything on VLAN 200.
    let cap_trk = capture(&topo, "trunk", "trunk", 50);
    let cap_h200 = capture(&topo, "h200", "eth0", 50);
    // No one answers, so ping fails; it only has to make H100 send ARP requests.
    let _ = exec(
        &topo,
        "h100",
        &["ping", "-n", "-c", "3", "-i", "0.5", "-w", "3", PEER_IP],
    );
    let trk = finish(cap_trk, Duration::from_millis(500));
    let h200 = finish(cap_h200, Duration::ZERO);
    let lines: Vec<&str> = trk.lines().filter(|l| !l.trim().is_empty()).collect();
    let req = format!("Request who-has {PEER_IP} tell {HOST_IP}");
    let tagged_100 = lines
        .iter()
        .filter(|l| {
            l.starts_with_time_then(H100_MAC)
                && l.contains("ff:ff:ff:ff:ff:ff, ethertype 802.1Q (0x8100), length 46: vlan 100,")
                && l.contains(&req)
        })
        .count();
    assert!(
        tagged_100 >= 1,
        "H100's ARP request must reach the trunk tagged VID 100, got:\n{trk}\n{}",
        diag()
    );
    assert!(
        lines.iter().all(|l| l.contains("vlan 100,")) && !trk.contains("vlan 200"),
        "only VID 100 frames may leave the trunk while H100 pings, got:\n{trk}"
    );
    assert!(
        h200.trim().is_empty(),
        "H200 (VLAN 200, same subnet) must not see H100's ARP requests, got:\n{h200}"
    );

    // (2) Tagged frames injected on the trunk reach only the host of their VLAN, and the
    // reply comes back tagged with the same VID; a VID the trunk does not carry reaches
    // no one.
    inject_case(&sw, &topo, 200, Some(("h200", H200_MAC)), &["h100"]);
    inject_case(&sw, &topo, 100, Some(("h100", H100_MAC)), &["h200"]);
    inject_case(&sw, &topo, 300, None, &["h100", "h200"]);

    // (3) OVS learned every MAC on its own VLAN: the peer on 100 and 200 behind the trunk,
    // each host behind its access port, and nothing on VLAN 300.
    let fdb = sw.fdb_entries(BRIDGE).expect("fdb/show");
    let port = |ifname: &str| sw.ofport(ifname).expect("ofport");
    let (p_trunk, p100, p200) = (port("trunk"), port("acc100"), port("acc200"));
    for (vlan, mac, p) in [
        (100, PEER_MAC, &p_trunk),
        (200, PEER_MAC, &p_trunk),
        (100, H100_MAC, &p100),
        (200, H200_MAC, &p200),
    ] {
        assert!(
            fdb.iter()
                .any(|e| e.vlan == vlan && e.mac == mac && &e.port == p),
            "fdb must map {mac} on VLAN {vlan} to port {p}, got {fdb:?}\n{}",
            diag()
        );
    }
    assert!(
        fdb.iter().all(|e| e.vlan == 100 || e.vlan == 200),
        "fdb must hold only VLANs 100 and 200, got {fdb:?}"
    );
    let flows = sw.dump_flows(BRIDGE).expect("dump-flows");
    assert!(
        flows.contains("actions=NORMAL"),
        "standalone bridge flows: {flows}"
    );
}
