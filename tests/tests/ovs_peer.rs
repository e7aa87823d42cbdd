//! Open vSwitch (userspace `netdev` datapath) as an independent 802.1Q peer: checks that
//! the OVS instance the uplink tests use tags and separates VLANs as expected, seen from
//! its trunk with tcpdump and hand-built tagged frames.
//!
//! Topology, all in namespaces this test makes (`pxovs<pid>-*`) and removes, addresses in
//! 198.18.0.0/15 only:
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
use std::process::Command;
use std::time::Duration;

use pollux_tests::ovs::{
    effective_uid, missing_tools, run_bounded, sweep_stale_workdirs, Capture, NetnsGuard,
    OvsSwitch, OVS_TOOLS,
};

const NS_PREFIX: &str = "pxovs";
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
    match effective_uid() {
        Some(0) => {}
        uid => panic!(
            "ovs_peer needs root (network namespaces, veth, AF_PACKET, tcpdump); \
             effective uid is {uid:?}. Run the test as root."
        ),
    }
    let mut tools: Vec<&str> = OVS_TOOLS.to_vec();
    tools.extend(["tcpdump", "ip", "ping", "sysctl"]);
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

struct Topo {
    ovs_ns: String,
    trk: String,
    h100: String,
    h200: String,
}

fn exec(ns: &str, argv: &[&str]) -> std::io::Result<String> {
    run_bounded(
        Command::new("ip").args(["netns", "exec", ns]).args(argv),
        Duration::from_secs(15),
    )
}

fn build_topology(guard: &mut NetnsGuard) -> Topo {
    let pid = std::process::id();
    let name = |role: &str| format!("{NS_PREFIX}{pid}-{role}");
    let topo = Topo {
        ovs_ns: name("ovs"),
        trk: name("trunk"),
        h100: name("h100"),
        h200: name("h200"),
    };
    for ns in [&topo.ovs_ns, &topo.trk, &topo.h100, &topo.h200] {
        guard
            .add(ns)
            .unwrap_or_else(|e| panic!("creating namespace {ns}: {e}"));
    }
    let veths = [
        (&topo.trk, "trunk", None),
        (&topo.h100, "acc100", Some(H100_MAC)),
        (&topo.h200, "acc200", Some(H200_MAC)),
    ];
    for (far_ns, ovs_if, mac) in veths {
        let far_if = if ovs_if == "trunk" { "trunk" } else { "eth0" };
        guard
            .veth(&topo.ovs_ns, ovs_if, far_ns, far_if)
            .unwrap_or_else(|e| panic!("veth {ovs_if}: {e}"));
        if let Some(mac) = mac {
            for argv in [
                &["ip", "link", "set", "dev", "eth0", "down"][..],
                &["ip", "link", "set", "dev", "eth0", "address", mac],
                &["ip", "addr", "add", HOST_CIDR, "dev", "eth0"],
                &["ip", "link", "set", "dev", "eth0", "up"],
            ] {
                exec(far_ns, argv).unwrap_or_else(|e| panic!("{far_ns}: {e}"));
            }
        }
    }
    topo
}

/// Injects an ARP request for HOST_IP tagged `vid` on the trunk and checks who answers:
/// `answer` is the (namespace, MAC) of the host on that VLAN, or `None` if the VLAN is not
/// carried by the trunk; `silent` are the hosts that must see nothing.
fn inject_case(
    sw: &OvsSwitch,
    topo: &Topo,
    vid: u16,
    answer: Option<(&str, &str)>,
    silent: &[&str],
) {
    let diag = || sw.diagnostics(BRIDGE);
    // Forget what earlier cases taught the hosts, so the neighbour checks below see
    // only this case's frame.
    for ns in [&topo.h100, &topo.h200] {
        exec(ns, &["ip", "neigh", "flush", "to", PEER_IP, "dev", "eth0"])
            .unwrap_or_else(|e| panic!("{ns}: {e}"));
    }
    let cap_trk = Capture::start(&topo.trk, "trunk", "", 20).expect("tcpdump on trunk");
    let cap_answer = answer.map(|(ns, _)| Capture::start(ns, "eth0", "", 20).expect("tcpdump"));
    let cap_silent: Vec<Capture> = silent
        .iter()
        .map(|ns| Capture::start(ns, "eth0", "", 20).expect("tcpdump"))
        .collect();

    exec(
        &topo.trk,
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
    let trk = cap_trk.finish(window).expect("trunk capture");
    let got_answer = cap_answer.map(|c| c.finish(Duration::ZERO).expect("capture"));
    let got_silent: Vec<String> = cap_silent
        .into_iter()
        .map(|c| c.finish(Duration::ZERO).expect("capture"))
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
            let neigh = exec(ns, &["ip", "neigh", "show", PEER_IP]).unwrap_or_default();
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
        let neigh = exec(ns, &["ip", "neigh", "show", PEER_IP]).unwrap_or_default();
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
fn ovs_netdev_trunk_tags_and_separates_vlans() {
    preflight();
    NetnsGuard::sweep_stale(NS_PREFIX);
    sweep_stale_workdirs(Path::new(WORKDIR_PARENT), WORKDIR_PREFIX);

    // Drop order is the reverse of declaration: captures, then the switch (daemons and
    // work directory), then the namespaces.
    let mut guard = NetnsGuard::new();
    let topo = build_topology(&mut guard);
    let workdir = PathBuf::from(format!(
        "{WORKDIR_PARENT}/{WORKDIR_PREFIX}{}",
        std::process::id()
    ));
    let sw = OvsSwitch::start(&topo.ovs_ns, &workdir)
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
    let cap_trk = Capture::start(&topo.trk, "trunk", "", 50).expect("tcpdump on trunk");
    let cap_h200 = Capture::start(&topo.h200, "eth0", "", 50).expect("tcpdump in H200");
    // No one answers, so ping fails; it only has to make H100 send ARP requests.
    let _ = exec(
        &topo.h100,
        &["ping", "-n", "-c", "3", "-i", "0.5", "-w", "3", PEER_IP],
    );
    let trk = cap_trk.finish(Duration::from_millis(500)).expect("capture");
    let h200 = cap_h200.finish(Duration::ZERO).expect("capture");
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
    inject_case(&sw, &topo, 200, Some((&topo.h200, H200_MAC)), &[&topo.h100]);
    inject_case(&sw, &topo, 100, Some((&topo.h100, H100_MAC)), &[&topo.h200]);
    inject_case(&sw, &topo, 300, None, &[&topo.h100, &topo.h200]);

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
