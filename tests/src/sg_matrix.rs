//! What the IPv4 and IPv6 security-group matrices (`e2e_sg_matrix.rs`,
//! `e2e_sg_matrix6.rs`) share: the hosts, the probe, the runner that sends the probes phase by phase
//! from each host's `eth0` and reads what arrived, the kernel lab as Neutron's hybrid
//! iptables driver builds it, the lab that puts the same hosts behind `polluxd`, and the
//! printed comparison. Each test file keeps its own addresses and probe table; the
//! family decides the ethertype matched, the netfilter hook enabled on the bridges and the
//! restore tool.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::MutexGuard;
use std::thread;
use std::time::{Duration, Instant};

use pollux_testkit::packet_socket::PacketSocket;

use crate::daemon::{self, ConfigFile, Polluxd};
use crate::netns::{self, Netns, Prefix, Topology, VethOptions};
use crate::neutron_iptables::{self as nif, HybridFirewall};

/// Time between phases, for conntrack on either side to see the previous phase.
const PHASE_GAP: Duration = Duration::from_millis(300);

/// The address family a matrix probes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    fn ethertype(self) -> [u8; 2] {
        match self {
            Family::V4 => [0x08, 0x00],
            Family::V6 => [0x86, 0xdd],
        }
    }

    /// The bridge netfilter switch Neutron's hybrid driver turns on for this family.
    fn bridge_nf_sysctl(self) -> &'static str {
        match self {
            Family::V4 => "net.bridge.bridge-nf-call-iptables",
            Family::V6 => "net.bridge.bridge-nf-call-ip6tables",
        }
    }

    fn restore_tool(self) -> &'static str {
        match self {
            Family::V4 => "iptables-restore",
            Family::V6 => "ip6tables-restore",
        }
    }
}

/// The six hosts of both matrices: five VMs and `ex`, an unfiltered host outside the
/// groups (each file gives them its family's addresses).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Host {
    M1,
    M2,
    M3,
    M4,
    M5,
    Ex,
}

pub const HOSTS: [Host; 6] = [Host::M1, Host::M2, Host::M3, Host::M4, Host::M5, Host::Ex];

impl Host {
    /// The port id of the desired state, also the namespace role.
    pub fn id(self) -> &'static str {
        match self {
            Host::M1 => "m1",
            Host::M2 => "m2",
            Host::M3 => "m3",
            Host::M4 => "m4",
            Host::M5 => "m5",
            Host::Ex => "ex",
        }
    }

    pub fn mac(self) -> [u8; 6] {
        let last = match self {
            Host::M1 => 1,
            Host::M2 => 2,
            Host::M3 => 3,
            Host::M4 => 4,
            Host::M5 => 5,
            Host::Ex => 0x99,
        };
        [0xfa, 0x16, 0x3e, 0x28, 0x00, last]
    }

    pub fn mac_str(self) -> String {
        pollux_dataplane::wire::EthernetAddress(self.mac()).to_string()
    }
}

/// One frame sent from `from`'s `eth0`, and whether its IP packet must arrive at `to`.
#[derive(Debug, Clone)]
pub struct Probe {
    pub name: String,
    pub phase: u8,
    pub from: Host,
    pub to: Host,
    pub frame: Vec<u8>,
    pub expect: bool,
}

impl Probe {
    /// The IP packet (what must arrive unchanged).
    pub fn packet(&self) -> &[u8] {
        &self.frame[14..]
    }
}

/// A matrix's fixed facts.
#[derive(Debug, Clone, Copy)]
pub struct Matrix {
    pub family: Family,
    /// Prefix root of the test's namespaces, swept of dead runs first.
    pub root: &'static str,
    /// The desired state under `configs/`, also what the kernel lab's rules come from.
    pub config: &'static str,
}

/// How a matrix checks that a data path is up: a datagram from one host to another,
/// `n` numbering the attempts; returns the frame to send and the IP packet to wait for.
#[derive(Debug, Clone, Copy)]
pub struct WarmUp {
    pub from: Host,
    pub to: Host,
    pub datagram: fn(u16) -> (Vec<u8>, Vec<u8>),
}

impl Matrix {
    /// Root, `tools`, one such test at a time, dead runs' namespaces removed. Hold the
    /// guard for the whole test.
    pub fn setup(&self, tools: &[&str]) -> MutexGuard<'static, ()> {
        let guard = netns::exclusive(tools);
        let removed = netns::remove_stale(self.root).expect("remove stale namespaces");
        if !removed.is_empty() {
            eprintln!("removed stale namespaces: {removed:?}");
        }
        guard
    }

    pub fn config_text(&self) -> String {
        let path = daemon::workspace_root().join("configs").join(self.config);
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    /// Sends every probe phase by phase from its host's `eth0`, then reads what each host
    /// received; the verdict of each probe, in table order. `before_phase(n)` runs before
    /// phase `n` is sent (a rule deleted between phases, say).
    pub fn run_probes(
        &self,
        topo: &Topology,
        probes: &[Probe],
        warm_up: &WarmUp,
        before_phase: &mut dyn FnMut(u8),
    ) -> Vec<bool> {
        let sockets: BTreeMap<Host, PacketSocket> = HOSTS
            .iter()
            .map(|h| {
                let ns = topo.ns(h.id()).unwrap();
                (*h, ns.run_in(|| PacketSocket::open("eth0")).unwrap())
            })
            .collect();
        wait_until_up(&sockets, warm_up);
        for s in sockets.values() {
            s.recv_incoming(Duration::from_millis(100), 10_000);
        }
        let phases = probes.iter().map(|p| p.phase).max().unwrap_or(0);
        for phase in 1..=phases {
            before_phase(phase);
            for p in probes.iter().filter(|p| p.phase == phase) {
                sockets[&p.from].send(&p.frame);
                thread::sleep(Duration::from_millis(2));
            }
            thread::sleep(PHASE_GAP);
        }
        let received: BTreeMap<Host, Vec<Vec<u8>>> = sockets
            .iter()
            .map(|(h, s)| (*h, s.recv_incoming(Duration::from_millis(300), 10_000)))
            .collect();
        let ethertype = self.family.ethertype();
        probes
            .iter()
            .map(|p| {
                let want = p.packet();
                received[&p.to].iter().any(|f| {
                    f.len() >= 14 + want.len()
                        && f[12..14] == ethertype
                        && &f[14..14 + want.len()] == want
                })
            })
            .collect()
    }

    /// The kernel as Neutron's hybrid driver sets it up: per port a tap in a `qbr` bridge
    /// with netfilter on (namespace `kh`), joined by a `qvb`/`qvo` veth to the integration
    /// bridge (`ki`, Open vSwitch in Neutron, so no netfilter there), with `fw` loaded.
    pub fn kernel_lab(&self, fw: &HybridFirewall) -> Topology {
        let mut topo = Topology::with_prefix(Prefix::next_under(self.root).unwrap());
        for role in ["kh", "ki"] {
            topo.add_ns(role).unwrap().disable_ipv6().unwrap();
        }
        let ki = topo.ns("ki").unwrap();
        ki.ip(&["link", "add", "brint", "type", "bridge"]).unwrap();
        ki.ip(&["link", "set", "brint", "up"]).unwrap();
        for h in HOSTS {
            let id = h.id();
            let (tap, qvb, qvo, qbr) = (
                nif::tap_device(id),
                nif::qvb_device(id),
                nif::qvo_device(id),
                nif::qbr_device(id),
            );
            let kh = topo.ns("kh").unwrap();
            kh.ip(&["link", "add", &qbr, "type", "bridge"]).unwrap();
            kh.ip(&["link", "set", &qbr, "up"]).unwrap();
            self.add_host_ns(&mut topo, id);
            let opts = VethOptions {
                mac_b: Some(h.mac_str()),
                ..VethOptions::default()
            };
            topo.veth_with("kh", &tap, id, "eth0", &opts).unwrap();
            topo.veth("kh", &qvb, "ki", &qvo).unwrap();
            let (kh, ki) = (topo.ns("kh").unwrap(), topo.ns("ki").unwrap());
            kh.ip(&["link", "set", &tap, "master", &qbr]).unwrap();
            kh.ip(&["link", "set", &qvb, "master", &qbr]).unwrap();
            ki.ip(&["link", "set", &qvo, "master", "brint"]).unwrap();
            // The integration bridge knows every port's MAC, as OVS's br-int does from its
            // ports: no first frame is flooded to the others' bridges.
            ki.exec_ok(
                "bridge",
                &[
                    "fdb",
                    "replace",
                    &h.mac_str(),
                    "dev",
                    &qvo,
                    "master",
                    "static",
                ],
            )
            .unwrap();
        }
        let (kh, ki) = (topo.ns("kh").unwrap(), topo.ns("ki").unwrap());
        let sysctl = self.family.bridge_nf_sysctl();
        kh.sysctl(sysctl, "1").unwrap();
        ki.sysctl(sysctl, "0").unwrap();
        load(kh, topo.prefix(), "ipset", &["restore", "-file"], &fw.ipset);
        self.load_rules(&topo, &fw.iptables);
        topo
    }

    /// Replaces the kernel lab's filter rules with `script` (as the driver does when a
    /// rule changes).
    pub fn load_rules(&self, topo: &Topology, script: &str) {
        let kh = topo.ns("kh").unwrap();
        load(kh, topo.prefix(), self.family.restore_tool(), &[], script);
    }

    /// Every host's `eth0` plugged into an AF_XDP port of a `polluxd` running the
    /// matrix's state in namespace `host`.
    pub fn pollux_lab(&self) -> (Topology, Polluxd) {
        daemon::polluxd_path();
        let mut topo = Topology::with_prefix(Prefix::next_under(self.root).unwrap());
        topo.add_ns("host").unwrap().disable_ipv6().unwrap();
        for h in HOSTS {
            self.add_host_ns(&mut topo, h.id());
            let switch_if = topo.prefix().ifname(h.id()).unwrap();
            let opts = VethOptions {
                mac_b: Some(h.mac_str()),
                ..VethOptions::default()
            };
            topo.veth_with("host", &switch_if, h.id(), "eth0", &opts)
                .unwrap();
        }
        let config = ConfigFile::render(self.config, topo.prefix().as_str()).unwrap();
        let polluxd = Polluxd::start(topo.ns("host").unwrap(), config.path(), &daemon::last_cpu())
            .unwrap_or_else(|e| panic!("{e}"));
        (topo, polluxd)
    }

    /// A host's namespace, its IPv6 stack off in both families: the probes are whole
    /// frames written to packet sockets, and the host's own router and neighbour
    /// solicitations would only add traffic to the matrix.
    fn add_host_ns(&self, topo: &mut Topology, id: &str) {
        topo.add_ns(id).unwrap().disable_ipv6().unwrap();
    }
}

/// Sends `warm_up`'s datagram until it arrives (at most 5 s), so both data paths are up
/// before a matrix runs.
fn wait_until_up(sockets: &BTreeMap<Host, PacketSocket>, warm_up: &WarmUp) {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut n = 0u16;
    loop {
        let (frame, ip) = (warm_up.datagram)(n);
        sockets[&warm_up.from].send(&frame);
        let got = sockets[&warm_up.to].recv_incoming(Duration::from_millis(200), 1000);
        if got
            .iter()
            .any(|f| f.len() >= 14 + ip.len() && f[14..14 + ip.len()] == ip[..])
        {
            return;
        }
        n += 1;
        assert!(
            Instant::now() < deadline,
            "{:?} -> {:?}: no warm-up datagram arrived within 5 s",
            warm_up.from,
            warm_up.to
        );
    }
}

/// Runs `tool ARGS FILE` in `ns` with `script` in FILE (a temporary file).
fn load(ns: &Netns, prefix: &Prefix, tool: &str, args: &[&str], script: &str) {
    let file = std::env::temp_dir().join(format!("{prefix}-{tool}"));
    std::fs::write(&file, script).unwrap();
    let mut argv = args.to_vec();
    argv.push(file.to_str().unwrap());
    let loaded = ns.exec_ok(tool, &argv);
    let _ = std::fs::remove_file(&file);
    if let Err(e) = loaded {
        panic!("loading the translated rules with {tool}: {e}\n{script}");
    }
}

/// A printable table of the probes with the verdicts of each backend; `*` marks rows
/// where a backend differs from the expectation.
pub fn render(probes: &[Probe], columns: &[(&str, &[bool])]) -> String {
    let mut s = format!("{:<3} {:<64} {:<8}", "#", "probe", "expect");
    for (name, _) in columns {
        s.push_str(&format!(" {name:<8}"));
    }
    s.push('\n');
    let word = |b: bool| if b { "pass" } else { "drop" };
    for (i, p) in probes.iter().enumerate() {
        let bad = columns.iter().any(|(_, v)| v[i] != p.expect);
        s.push_str(&format!(
            "{:<3} {:<64} {:<8}",
            i + 1,
            p.name,
            word(p.expect)
        ));
        for (_, v) in columns {
            s.push_str(&format!(" {:<8}", word(v[i])));
        }
        if bad {
            s.push_str(" *");
        }
        s.push('\n');
    }
    s
}

/// Fails unless every probe got its expected verdict from the kernel.
pub fn assert_kernel_as_expected(probes: &[Probe], kernel: &[bool]) {
    let table = render(probes, &[("kernel", kernel)]);
    eprintln!("{table}");
    let wrong = probes
        .iter()
        .zip(kernel)
        .filter(|(p, k)| p.expect != **k)
        .count();
    assert_eq!(
        wrong,
        0,
        "{wrong} of {} probes differ from the expected table:\n{table}",
        probes.len()
    );
}

/// Fails unless Pollux gave every probe the kernel's verdict and the expected one;
/// `polluxd` is how the daemon ended, for the failure message.
pub fn assert_pollux_as_kernel(
    probes: &[Probe],
    kernel: &[bool],
    pollux: &[bool],
    polluxd: impl Debug,
) {
    let table = render(probes, &[("kernel", kernel), ("pollux", pollux)]);
    eprintln!("{table}");
    let differ: Vec<usize> = (0..probes.len())
        .filter(|&i| pollux[i] != kernel[i])
        .map(|i| i + 1)
        .collect();
    let unexpected = (0..probes.len())
        .filter(|&i| pollux[i] != probes[i].expect)
        .count();
    assert!(
        differ.is_empty() && unexpected == 0,
        "pollux differs from the kernel on {} and from the expected table on {unexpected} of {} probes \
         (rows {differ:?}):\n{table}\npolluxd: {polluxd:?}",
        differ.len(),
        probes.len(),
    );
}
