//! End to end: polluxd's VXLAN, Geneve and GRE networks against Open vSwitch's userspace
//! tunnels as another host (this kernel has no Geneve or GRE device).
//!
//! ```text
//!  a1 (vxlan,  .11) ┐
//!  a2 (geneve, .11) ┼─ polluxd "hosta" (namespace host), local_ip 198.18.0.1
//!  a3 (gre,    .11) ┘       <P>ul ──veth── hostc: eth0
//!  hostc: ovs-vswitchd (netdev datapath)
//!    br-ul: eth0 + internal port br-ul 198.18.0.3/24 (the tunnel endpoint)
//!    br-v: vx (type=vxlan key=5000)  + cv ──veth── c1 (.13)
//!    br-g: gn (type=geneve key=5001) + cg ──veth── c2 (.13)
//!    br-r: gr (type=gre key=5002)    + cr ──veth── c3 (.13)
//! ```
//!
//! `configs/e2e-overlay-ovs.toml`: one network per encapsulation, all three with the same
//! addresses, c1..c3 l2population entries of hostc. Checked per encapsulation: ping both
//! ways (OVS resolves polluxd's endpoint by ARP and polluxd OVS's), a full-size frame
//! with DF crossing, the outer headers polluxd sends byte for byte (tcpdump on hostc),
//! that OVS's packets are decapsulated (counters), and that each VM reaches the one
//! remote VM of its own network (its neighbour's MAC).
//!
//! Needs root, `ip`, `ping`, `tcpdump` and Open vSwitch (`apt-get install -y
//! openvswitch-switch`): it fails, never skips, when any is missing. Namespaces and
//! interfaces are named under the prefix `ovl<pid>t<n>`; OVS's state lives in
//! `/tmp/pxovl-<pid>-<n>`, removed (daemons stopped) on every exit path.

use std::path::{Path, PathBuf};
use std::time::Duration;

use pollux_tests::daemon::{self, parse_worker_totals, ConfigFile, Polluxd};
use pollux_tests::netns::{Capture, CaptureFormat, Prefix, Topology, VethOptions};
use pollux_tests::ovs::{missing_tools, sweep_stale_workdirs, OvsSwitch, OVS_TOOLS};
use pollux_tests::vm_lab::{Vm, VmNet};

const TOOLS: &[&str] = &["ip", "ping", "tcpdump"];
const CONFIG: &str = "e2e-overlay-ovs.toml";
const WORKDIR_PARENT: &str = "/tmp";
const WORKDIR_PREFIX: &str = "pxovl-";
const LOCAL_IP: [u8; 4] = [198, 18, 0, 1];
const HOSTC_IP: [u8; 4] = [198, 18, 0, 3];
const A_IP: &str = "203.0.113.11";
const C_IP: &str = "203.0.113.13";

/// One overlay network of the configuration: its VM here, its VM on hostc, and how OVS
/// and polluxd carry it.
struct Net {
    kind: &'static str,
    id: u32,
    a: Vm,
    /// (namespace, MAC) of the VM on hostc.
    c: (&'static str, &'static str),
    /// OVS bridge, tunnel port and the veth end of the VM on hostc.
    bridge: &'static str,
    tunnel: &'static str,
    c_port: &'static str,
    /// The underlay's 1500 minus the encapsulation's overhead.
    mtu: u32,
    /// The counter polluxd counts encapsulated and decapsulated packets in, without its
    /// `_encapsulated`/`_decapsulated`.
    counter: &'static str,
    /// tcpdump filter for this kind's packets to hostc.
    filter: &'static [&'static str],
}

const NETS: [Net; 3] = [
    Net {
        kind: "vxlan",
        id: 5000,
        a: Vm {
            role: "a1",
            mac: "fa:16:3e:18:02:11",
            ip: A_IP,
        },
        c: ("c1", "fa:16:3e:18:03:11"),
        bridge: "br-v",
        tunnel: "vx",
        c_port: "cv",
        mtu: 1450,
        counter: "vxlan",
        filter: &["udp", "dst", "port", "4789"],
    },
    Net {
        kind: "geneve",
        id: 5001,
        a: Vm {
            role: "a2",
            mac: "fa:16:3e:18:02:12",
            ip: A_IP,
        },
        c: ("c2", "fa:16:3e:18:03:12"),
        bridge: "br-g",
        tunnel: "gn",
        c_port: "cg",
        mtu: 1450,
        counter: "geneve",
        filter: &["udp", "dst", "port", "6081"],
    },
    Net {
        kind: "gre",
        id: 5002,
        a: Vm {
            role: "a3",
            mac: "fa:16:3e:18:02:13",
            ip: A_IP,
        },
        c: ("c3", "fa:16:3e:18:03:13"),
        bridge: "br-r",
        tunnel: "gr",
        c_port: "cr",
        mtu: 1458,
        counter: "gre",
        filter: &["ip", "proto", "47"],
    },
];

/// The namespaces: polluxd's host with a1..a3, hostc with c1..c3 wired to interfaces
/// that OVS takes (the OVS bridges are made once it runs).
fn new_lab() -> VmNet {
    let topo = Topology::with_prefix(Prefix::next_under("ovl").unwrap());
    let net = VmNet::with_roles(topo, &["a1", "a2", "a3", "hostc", "c1", "c2", "c3"], &[]);
    let t = &net.topo;
    for n in &NETS {
        let opts = VethOptions {
            mtu: Some(n.mtu),
            ..VethOptions::default()
        };
        net.plug(&n.a, &opts);
        t.veth_with(
            "hostc",
            n.c_port,
            n.c.0,
            "eth0",
            &VethOptions {
                mac_b: Some(n.c.1.into()),
                ..opts
            },
        )
        .unwrap();
        t.addr(n.c.0, "eth0", &format!("{C_IP}/24")).unwrap();
    }
    let ul = t.prefix().ifname("ul").unwrap();
    t.veth("host", &ul, "hostc", "eth0").unwrap();
    net
}

/// OVS on hostc: the underlay bridge with the endpoint address on its internal port, and
/// one bridge per network with its tunnel port and VM.
fn start_ovs(lab: &VmNet, workdir: &Path) -> OvsSwitch {
    let ovs = OvsSwitch::start(lab.ns("hostc").name(), workdir).unwrap_or_else(|e| panic!("{e}"));
    ovs.add_bridge("br-ul").unwrap();
    ovs.add_port("br-ul", "eth0", None).unwrap();
    let hostc = lab.ns("hostc");
    hostc
        .ip(&["addr", "add", "198.18.0.3/24", "dev", "br-ul"])
        .unwrap();
    hostc.ip(&["link", "set", "br-ul", "up"]).unwrap();
    for n in &NETS {
        ovs.add_bridge(n.bridge).unwrap();
        ovs.add_port(n.bridge, n.c_port, None).unwrap();
        let kind = format!("type={}", n.kind);
        let key = format!("options:key={}", n.id);
        let args = [
            "add-port",
            n.bridge,
            n.tunnel,
            "--",
            "set",
            "interface",
            n.tunnel,
            &kind,
            "options:remote_ip=198.18.0.1",
            &key,
        ];
        ovs.vsctl(&args).unwrap();
    }
    ovs.wait_ready()
        .unwrap_or_else(|e| panic!("{e}\n{}", ovs.diagnostics("br-ul")));
    ovs
}

/// The tunnel header of one packet OVS sent to polluxd on network `n`: its kind's
/// identifier (for GRE after the checksum, if OVS sends one).
fn check_from_ovs(n: &Net, f: &[u8]) {
    assert_eq!(&f[26..30], &HOSTC_IP, "{}: outer source", n.kind);
    assert_eq!(&f[30..34], &LOCAL_IP, "{}: outer destination", n.kind);
    let vni = (n.id << 8).to_be_bytes();
    match n.kind {
        "gre" => {
            assert_eq!(f[23], 47);
            assert_eq!(f[34] & 0x30, 0x20, "GRE K flag, no sequence number");
            assert_eq!(&f[36..38], &[0x65, 0x58]);
            let key = if f[34] & 0x80 != 0 { 42 } else { 38 };
            assert_eq!(&f[key..key + 4], &n.id.to_be_bytes(), "GRE key");
        }
        "geneve" => {
            assert_eq!(&f[36..38], &6081u16.to_be_bytes());
            assert_eq!(&f[44..46], &[0x65, 0x58]);
            assert_eq!(&f[46..49], &vni[..3]);
        }
        _ => {
            assert_eq!(&f[36..38], &4789u16.to_be_bytes());
            assert_eq!(f[42], 0x08);
            assert_eq!(&f[46..49], &vni[..3]);
        }
    }
}

/// Checks the outer headers of one packet polluxd sent to hostc on network `n`, byte for
/// byte but for the UDP source port (checked for its range); returns the inner frame.
fn check_outer<'f>(n: &Net, f: &'f [u8]) -> &'f [u8] {
    let vtep_mac = [0x02, 0x70, 0x76, LOCAL_IP[1], LOCAL_IP[2], LOCAL_IP[3]];
    assert_eq!(&f[6..12], &vtep_mac, "outer source MAC: the endpoint's");
    assert_eq!(&f[12..14], &[0x08, 0x00]);
    let ip = &f[14..34];
    assert_eq!(ip[0], 0x45);
    assert_eq!(
        usize::from(u16::from_be_bytes([ip[2], ip[3]])),
        f.len() - 14
    );
    assert_eq!(&ip[4..9], &[0, 0, 0x40, 0, 64], "id 0, DF, TTL 64");
    assert_eq!(&ip[12..16], &LOCAL_IP);
    assert_eq!(&ip[16..20], &HOSTC_IP);
    assert_eq!(pollux_tests::frames::internet_checksum(ip), 0);
    let vni = (n.id << 8).to_be_bytes();
    let (tunnel, inner) = if n.kind == "gre" {
        assert_eq!(ip[9], 47, "GRE");
        let mut want = vec![0x20, 0, 0x65, 0x58];
        want.extend_from_slice(&n.id.to_be_bytes());
        (want, 42)
    } else {
        assert_eq!(ip[9], 17, "UDP");
        let sport = u16::from_be_bytes([f[34], f[35]]);
        assert!(sport >= 49152, "UDP source port {sport}");
        let udp_len = (f.len() - 34) as u16;
        let mut want = if n.kind == "geneve" { 6081u16 } else { 4789 }
            .to_be_bytes()
            .to_vec();
        want.extend_from_slice(&udp_len.to_be_bytes());
        want.extend_from_slice(&[0, 0]);
        assert_eq!(&f[36..42], &want, "UDP ports, length, checksum 0");
        let hdr = if n.kind == "geneve" {
            [0, 0, 0x65, 0x58, vni[0], vni[1], vni[2], 0]
        } else {
            [0x08, 0, 0, 0, vni[0], vni[1], vni[2], 0]
        };
        (hdr.to_vec(), 50)
    };
    assert_eq!(
        &f[inner - tunnel.len()..inner],
        &tunnel[..],
        "{} header",
        n.kind
    );
    &f[inner..]
}

fn mac_bytes(s: &str) -> [u8; 6] {
    let mut m = [0u8; 6];
    for (i, b) in s.split(':').enumerate() {
        m[i] = u8::from_str_radix(b, 16).unwrap();
    }
    m
}

fn workdir() -> PathBuf {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    PathBuf::from(format!(
        "{WORKDIR_PARENT}/{WORKDIR_PREFIX}{}-{n}",
        std::process::id()
    ))
}

#[test]
#[ignore = "needs root: network namespaces and Open vSwitch (run with --include-ignored as root)"]
fn vxlan_geneve_and_gre_with_open_vswitch_userspace_tunnels() {
    let _serial = daemon::setup(TOOLS);
    let missing = missing_tools(OVS_TOOLS);
    assert!(
        missing.is_empty(),
        "Open vSwitch tools missing: {missing:?} (apt-get install -y openvswitch-switch)"
    );
    sweep_stale_workdirs(Path::new(WORKDIR_PARENT), WORKDIR_PREFIX);
    // Dropped in reverse: polluxd, OVS (daemons stopped, work directory removed), then
    // the namespaces.
    let lab = new_lab();
    let ovs = start_ovs(&lab, &workdir());
    let config = ConfigFile::render(CONFIG, lab.prefix()).unwrap();
    let polluxd: Polluxd = lab.start(&config);

    for n in &NETS {
        // The first frames towards hostc may find its underlay MAC unknown
        // (tunnel_unresolved) while polluxd asks for it; a warm-up ping absorbs that.
        let _ = lab.ping(n.a.role, C_IP, 3);
        let capture =
            Capture::start_inbound(lab.ns("hostc"), "eth0", 3, n.filter, CaptureFormat::Pcap)
                .unwrap();
        let r = lab.ping(n.a.role, C_IP, 5);
        assert!(
            r.all_received(),
            "{}: {} -> {}: {r:?}\npolluxd stderr:\n{}\n{}",
            n.kind,
            n.a.role,
            n.c.0,
            polluxd.stderr_so_far(),
            ovs.diagnostics(n.bridge)
        );
        let captured = capture.finish(Duration::from_secs(3)).unwrap();
        assert_eq!(captured.frames.len(), 3, "{}: {captured:?}", n.kind);
        for f in &captured.frames {
            let inner = check_outer(n, f);
            assert_eq!(
                &inner[0..6],
                &mac_bytes(n.c.1),
                "{}: inner destination",
                n.kind
            );
            assert_eq!(
                &inner[6..12],
                &mac_bytes(n.a.mac),
                "{}: inner source",
                n.kind
            );
        }
        // The other way (what OVS sends checked on its way out), and a full-size frame
        // (DF) of the tenant MTU both ways.
        let capture = from_ovs(&lab, n);
        let r = lab.ping(n.c.0, A_IP, 3);
        assert!(
            r.all_received(),
            "{}: {} -> {}: {r:?}",
            n.kind,
            n.c.0,
            n.a.role
        );
        let captured = capture.finish(Duration::from_secs(3)).unwrap();
        assert_eq!(captured.frames.len(), 3, "{}: {captured:?}", n.kind);
        for f in &captured.frames {
            check_from_ovs(n, f);
        }
        let size = (n.mtu - 28).to_string();
        for (from, to) in [(n.a.role, C_IP), (n.c.0, A_IP)] {
            let out = lab
                .ns(from)
                .exec_timeout(
                    "ping",
                    &[
                        "-n", "-q", "-c", "2", "-i", "0.2", "-W", "2", "-M", "do", "-s", &size, to,
                    ],
                    Duration::from_secs(8),
                )
                .unwrap();
            assert!(
                out.status.success(),
                "{}: full-size ping {from} -> {to}: {}",
                n.kind,
                String::from_utf8_lossy(&out.stdout)
            );
        }
        // Each VM reached the remote VM of its own network (one address, three networks).
        let neigh = lab
            .ns(n.a.role)
            .exec_ok("ip", &["neigh", "show", C_IP, "dev", "eth0"])
            .unwrap();
        assert!(
            neigh.contains(n.c.1),
            "{}: {} resolved {C_IP} to {neigh:?}, not {}",
            n.kind,
            n.a.role,
            n.c.1
        );
        let encapsulated = polluxd.worker_stat(&format!("{}_encapsulated", n.counter));
        let decapsulated = polluxd.worker_stat(&format!("{}_decapsulated", n.counter));
        assert!(
            encapsulated >= 10 && decapsulated >= 10,
            "{}: {encapsulated} encapsulated, {decapsulated} decapsulated",
            n.kind
        );
        eprintln!(
            "{}: {encapsulated} encapsulated, {decapsulated} decapsulated",
            n.kind
        );
    }

    geneve_options_from_ovs(&lab, &ovs, &polluxd);
    gre_checksums_from_ovs(&lab, &ovs);

    let (status, stderr) = polluxd.stop().unwrap_or_else(|e| panic!("{e}"));
    assert!(status.success(), "polluxd exited with {status}:\n{stderr}");
    let totals = parse_worker_totals(&stderr).expect("the final worker line");
    eprintln!("polluxd: {totals:?}");
    drop(ovs);
}

/// Captures (both directions, on hostc's eth0) the next 3 tunnel packets hostc sends to
/// polluxd on network `n`.
fn from_ovs(lab: &VmNet, n: &Net) -> Capture {
    let mut filter = vec!["src", "host", "198.18.0.3", "and"];
    filter.extend_from_slice(n.filter);
    Capture::start(lab.ns("hostc"), "eth0", 3, &filter, CaptureFormat::Pcap).unwrap()
}

/// OVS sends Geneve options when a flow sets tunnel metadata: a plain option is skipped
/// by its length (the ping goes through), a critical one is a counted drop.
fn geneve_options_from_ovs(lab: &VmNet, ovs: &OvsSwitch, polluxd: &Polluxd) {
    let n = &NETS[1];
    assert_eq!(n.kind, "geneve");
    ovs.ofctl(
        "add-tlv-map",
        n.bridge,
        &["{class=0x0102,type=0x05,len=4}->tun_metadata0,{class=0x0102,type=0x85,len=4}->tun_metadata1"],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let with_option = |field: &str| {
        let flow = format!(
            "priority=10,in_port={},actions=set_field:0x1234->{field},output:{}",
            n.c_port, n.tunnel
        );
        ovs.ofctl("add-flow", n.bridge, &[&flow])
            .unwrap_or_else(|e| panic!("{e}"));
    };
    with_option("tun_metadata0");
    let capture = from_ovs(lab, n);
    let r = lab.ping(n.c.0, A_IP, 3);
    assert!(r.all_received(), "geneve with an option: {r:?}");
    let captured = capture.finish(Duration::from_secs(3)).unwrap();
    assert_eq!(captured.frames.len(), 3, "{captured:?}");
    for f in &captured.frames {
        check_from_ovs(n, f);
        assert_eq!(f[42] & 0x3f, 2, "two words of options");
        assert_eq!(&f[50..54], &[0x01, 0x02, 0x05, 0x01], "the option's header");
    }

    with_option("tun_metadata1");
    let dropped = || -> u64 {
        polluxd.call("stats.get", serde_json::json!({}))["drops"]["geneve_critical_option"]
            .as_u64()
            .unwrap_or(0)
    };
    let before = dropped();
    let capture = from_ovs(lab, n);
    let r = lab.ping(n.c.0, A_IP, 3);
    assert_eq!(r.received, 0, "a critical option went through: {r:?}");
    let captured = capture.finish(Duration::from_secs(3)).unwrap();
    assert_eq!(captured.frames.len(), 3, "{captured:?}");
    assert_eq!(&captured.frames[0][50..54], &[0x01, 0x02, 0x85, 0x01]);
    assert!(
        dropped() - before >= 3,
        "geneve_critical_option counted {}",
        dropped() - before
    );
}

/// OVS sends GRE checksums with `options:csum=true`: polluxd verifies them and takes the
/// packets.
fn gre_checksums_from_ovs(lab: &VmNet, ovs: &OvsSwitch) {
    let n = &NETS[2];
    assert_eq!(n.kind, "gre");
    ovs.vsctl(&["set", "interface", n.tunnel, "options:csum=true"])
        .unwrap_or_else(|e| panic!("{e}"));
    let capture = from_ovs(lab, n);
    let r = lab.ping(n.c.0, A_IP, 3);
    assert!(r.all_received(), "gre with checksums: {r:?}");
    let captured = capture.finish(Duration::from_secs(3)).unwrap();
    assert_eq!(captured.frames.len(), 3, "{captured:?}");
    for f in &captured.frames {
        check_from_ovs(n, f);
        assert_eq!(f[34] & 0x80, 0x80, "GRE C flag");
    }
}
