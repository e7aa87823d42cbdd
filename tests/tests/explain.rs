//! Explain on `mem` ports, from a desired state compiled by the control plane: for a
//! matrix of flows (switched, flooded, VLAN push and pop, routed, waiting for ARP, SNAT
//! new and established, floating IP in, dropped by port security, security groups, no
//! route and TTL), what `Worker::explain` answers is what really happens when the same
//! frame is then sent (the same frames out of the same ports, or the same drop), and the
//! explain pass leaves every table (FDB, neighbours, connections), counter, rate limit and
//! the pool as they were.

use std::collections::BTreeMap;

use pollux_control::compile::{compile, Identities};
use pollux_control::model::DesiredState;
use pollux_control::validate::validate;
use pollux_dataplane::conntrack::Dir;
use pollux_dataplane::drop::DropReason;
use pollux_dataplane::pipeline::explain::{ConnOwner, Explanation};
use pollux_dataplane::pipeline::Stage;
use pollux_dataplane::port::PortId;
use pollux_dataplane::secgroup::{Direction, RuleVerdict};
use pollux_dataplane::worker::WorkerConfig;
use pollux_drivers::mem::MemPortConfig;
use pollux_tests::frames::{arp, ipv4, tcp, udp, BROADCAST};
use pollux_tests::harness::{MemSwitch, POOL_FRAMES};

const SYN: u8 = 0x02;
const ACK: u8 = 0x10;

const VM1_MAC: [u8; 6] = [0xfa, 0x16, 0x3e, 0, 0, 1];
const VM2_MAC: [u8; 6] = [0xfa, 0x16, 0x3e, 0, 0, 2];
const VM3_MAC: [u8; 6] = [0xfa, 0x16, 0x3e, 0, 0, 3];
const VM4_MAC: [u8; 6] = [0xfa, 0x16, 0x3e, 0, 0, 4];
const UPSTREAM_MAC: [u8; 6] = [0x02, 0xee, 0, 0, 0, 1];
const HOST_B_MAC: [u8; 6] = [0x02, 0xee, 0, 0, 0, 2];

const VM1_IP: [u8; 4] = [198, 18, 1, 10];
const VM2_IP: [u8; 4] = [198, 18, 1, 11];
const VM3_IP: [u8; 4] = [198, 18, 2, 10];
const VM3_FIP: [u8; 4] = [203, 0, 113, 20];
const VM4_IP: [u8; 4] = [198, 18, 3, 10];
const HOST_B_IP: [u8; 4] = [198, 18, 2, 50];
const GW_A: [u8; 4] = [198, 18, 1, 1];
const GW_B: [u8; 4] = [198, 18, 2, 1];
const GW_C: [u8; 4] = [198, 18, 3, 1];
const UPSTREAM: [u8; 4] = [203, 0, 113, 1];
const ROUTER_EXT: [u8; 4] = [203, 0, 113, 10];
const INTERNET: [u8; 4] = [203, 0, 113, 200];
const EXT_VID: u16 = 300;
const B_VID: u16 = 100;

/// Network `a` (local): vm1 (allows all) and vm2 (web: TCP 80 in only). Network `b`
/// (VLAN 100 on the uplink): vm3, with a floating IP. Router r1 joins a and b, with SNAT
/// to `ext` (VLAN 300). Network `c` (local): vm4 behind router r2, which has no default
/// route.
const STATE: &str = r#"
[[uplinks]]
name = "uplink0"
physnet = "physnet1"
binding = { driver = "mem" }

[[networks]]
id = "a"
network_type = "local"

[[networks]]
id = "b"
network_type = "vlan"
physical_network = "physnet1"
segmentation_id = 100

[[networks]]
id = "c"
network_type = "local"

[[networks]]
id = "ext"
network_type = "vlan"
physical_network = "physnet1"
segmentation_id = 300

[[subnets]]
id = "a-v4"
network_id = "a"
cidr = "198.18.1.0/24"
gateway_ip = "198.18.1.1"
enable_dhcp = false

[[subnets]]
id = "b-v4"
network_id = "b"
cidr = "198.18.2.0/24"
gateway_ip = "198.18.2.1"
enable_dhcp = false

[[subnets]]
id = "c-v4"
network_id = "c"
cidr = "198.18.3.0/24"
gateway_ip = "198.18.3.1"
enable_dhcp = false

[[subnets]]
id = "ext-v4"
network_id = "ext"
cidr = "203.0.113.0/25"
gateway_ip = "203.0.113.1"
enable_dhcp = false

[[ports]]
id = "vm1"
network_id = "a"
mac_address = "fa:16:3e:00:00:01"
fixed_ips = [{ subnet_id = "a-v4", ip_address = "198.18.1.10" }]
security_groups = ["all"]
binding = { driver = "mem" }

[[ports]]
id = "vm2"
network_id = "a"
mac_address = "fa:16:3e:00:00:02"
fixed_ips = [{ subnet_id = "a-v4", ip_address = "198.18.1.11" }]
security_groups = ["web"]
binding = { driver = "mem" }

[[ports]]
id = "vm3"
network_id = "b"
mac_address = "fa:16:3e:00:00:03"
fixed_ips = [{ subnet_id = "b-v4", ip_address = "198.18.2.10" }]
security_groups = ["all"]
binding = { driver = "mem" }

[[ports]]
id = "vm4"
network_id = "c"
mac_address = "fa:16:3e:00:00:04"
fixed_ips = [{ subnet_id = "c-v4", ip_address = "198.18.3.10" }]
security_groups = ["all"]
binding = { driver = "mem" }

[[routers]]
id = "r1"
interfaces = ["a-v4", "b-v4"]
external_gateway_info = { network_id = "ext", external_fixed_ip = "203.0.113.10", enable_snat = true }

[[routers]]
id = "r2"
interfaces = ["c-v4"]

[[floating_ips]]
id = "fip3"
floating_ip_address = "203.0.113.20"
port_id = "vm3"

[[security_groups]]
id = "all"
rules = [{ direction = "ingress" }, { direction = "egress" }]

[[security_groups]]
id = "web"
rules = [
  { direction = "ingress", protocol = "tcp", port_range_min = 80, port_range_max = 80 },
  { direction = "egress" },
]
"#;

struct Lab {
    sw: MemSwitch,
    ids: Identities,
    r1_mac: [u8; 6],
    r2_mac: [u8; 6],
}

/// Everything an explain pass must leave as it was, in comparable form.
#[derive(Debug, PartialEq, Eq)]
struct State {
    fdb: String,
    neighbors: String,
    connections: String,
    conn_stats: String,
    counters: String,
    rule_hits: String,
    free_frames: usize,
    trace: bool,
}

impl Lab {
    fn new() -> Self {
        let desired = DesiredState::from_toml_str(STATE).expect("parses");
        let valid = validate(&desired).unwrap_or_else(|e| panic!("valid: {e:?}"));
        let c = compile(&valid, &Identities::default(), 1).expect("compiles");
        let ports: Vec<u16> = c.ports.iter().map(|p| p.id.0).collect();
        let routers = c.snapshot.routing().routers();
        let macs: Vec<[u8; 6]> = routers.iter().map(|r| r.mac.0).collect();
        let sw = MemSwitch::with_snapshot(
            c.snapshot,
            &ports,
            WorkerConfig::default(),
            MemPortConfig::default(),
            POOL_FRAMES,
        );
        let mut lab = Lab {
            sw,
            ids: c.identities,
            r1_mac: macs[0],
            r2_mac: macs[1],
        };
        assert_eq!(macs.len(), 2);
        // The routers' uids are in their MACs' low bytes: r1 was compiled first.
        if lab.r1_mac > lab.r2_mac {
            std::mem::swap(&mut lab.r1_mac, &mut lab.r2_mac);
        }
        lab
    }

    fn port(&self, name: &str) -> u16 {
        let key = if name.starts_with("uplink") {
            format!("uplink:{name}")
        } else {
            format!("port:{name}")
        };
        self.ids.port(&key).expect("port has an id").0
    }

    fn name(&self, id: u16) -> String {
        self.ids
            .port_key(PortId(id))
            .expect("known port")
            .trim_start_matches("port:")
            .trim_start_matches("uplink:")
            .to_owned()
    }

    fn state(&self) -> State {
        let w = &self.sw.worker;
        State {
            fdb: format!("{:?}", w.macs().entries().collect::<Vec<_>>()),
            neighbors: format!("{:?}", w.router().neighbors().entries().collect::<Vec<_>>()),
            connections: format!("{:?}", w.sessions().iter().collect::<Vec<_>>()),
            conn_stats: format!("{:?}", w.sessions().stats()),
            counters: format!("{:?}", *w.counters()),
            rule_hits: format!(
                "{:?}",
                self.sw
                    .publisher
                    .current()
                    .security_groups()
                    .rule_hits()
                    .map(|(rule, n)| (format!("{rule:?}"), n))
                    .collect::<Vec<_>>()
            ),
            free_frames: w.pool().available(),
            trace: w.trace().is_some(),
        }
    }

    /// Explains `frame` on `port`, checks that nothing changed, then really sends it and
    /// checks that the answer was right. Returns the explanation and what was sent.
    fn check(&mut self, port: &str, frame: &[u8]) -> (Explanation, BTreeMap<String, Vec<Vec<u8>>>) {
        let id = self.port(port);
        let before = self.state();
        let drops_before = self.drops();
        let ex = self.sw.worker.explain(PortId(id), frame).expect("explains");
        assert_eq!(self.state(), before, "explain changed the worker's state");
        assert_eq!(ex.in_port, PortId(id));
        assert_eq!(ex.generation, 1);
        let out = self.sw.exchange(id, frame);
        let real: BTreeMap<String, Vec<Vec<u8>>> =
            out.into_iter().map(|(p, f)| (self.name(p), f)).collect();
        let mut said: BTreeMap<String, Vec<Vec<u8>>> = BTreeMap::new();
        for e in &ex.sent {
            said.entry(self.name(e.port.0))
                .or_default()
                .push(e.frame.clone());
        }
        assert_eq!(said, real, "explain: {ex:#?}");
        let drops_after = self.drops();
        let real_drops: Vec<(Stage, DropReason)> = drops_after
            .iter()
            .filter(|(k, n)| drops_before.get(k).copied().unwrap_or(0) < **n)
            .flat_map(|(&k, &n)| {
                std::iter::repeat_n(k, (n - drops_before.get(&k).copied().unwrap_or(0)) as usize)
            })
            .collect();
        let said_drops: Vec<(Stage, DropReason)> =
            ex.dropped.iter().map(|d| (d.stage, d.reason)).collect();
        assert_eq!(said_drops, real_drops, "explain: {ex:#?}");
        self.sw.assert_conserved();
        (ex, real)
    }

    fn drops(&self) -> BTreeMap<(Stage, DropReason), u64> {
        let c = self.sw.counters();
        let mut m = BTreeMap::new();
        for stage in Stage::ALL {
            for &reason in DropReason::ALL {
                let n = c.stage_dropped(stage, reason);
                if n > 0 {
                    m.insert((stage, reason), n);
                }
            }
        }
        m
    }

    /// Every VM announces itself to its router, and the upstream gateway to r1, so that
    /// routed flows do not wait for ARP.
    fn announce(&mut self) {
        for (port, mac, ip, gw) in [
            ("vm1", VM1_MAC, VM1_IP, GW_A),
            ("vm2", VM2_MAC, VM2_IP, GW_A),
            ("vm3", VM3_MAC, VM3_IP, GW_B),
            ("vm4", VM4_MAC, VM4_IP, GW_C),
        ] {
            let id = self.port(port);
            let out = self
                .sw
                .exchange(id, &arp(1, BROADCAST, mac, ip, [0; 6], gw));
            assert_eq!(out[&id].len(), 1, "the router answers ARP on {port}");
        }
        let uplink = self.port("uplink0");
        let upstream = tagged(
            &arp(1, BROADCAST, UPSTREAM_MAC, UPSTREAM, [0; 6], ROUTER_EXT),
            EXT_VID,
        );
        let out = self.sw.exchange(uplink, &upstream);
        assert_eq!(out[&uplink].len(), 1);
    }
}

fn tagged(frame: &[u8], vid: u16) -> Vec<u8> {
    let mut f = frame.to_vec();
    f.splice(12..12, [0x81, 0x00, (vid >> 8) as u8, vid as u8]);
    f
}

fn tcp_frame(
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    src: [u8; 4],
    dst: [u8; 4],
    ttl: u8,
    dport: u16,
    flags: u8,
) -> Vec<u8> {
    let seg = tcp(src, dst, 40000, dport, 1, 0, flags, 8192, b"");
    ipv4(dst_mac, src_mac, None, src, dst, ttl, 6, &seg)
}

fn ttl_of(frame: &[u8]) -> u8 {
    let l3 = if frame[12..14] == [0x81, 0x00] {
        18
    } else {
        14
    };
    frame[l3 + 8]
}

#[test]
fn switched_flooded_and_vlan_tagged_flows_are_explained_as_they_happen() {
    let mut lab = Lab::new();
    // Flooded: vm2's MAC is static, but an unknown one floods network a (vm2 only: vm1
    // sent it, and a is local).
    let unknown = [0xfa, 0x16, 0x3e, 9, 9, 9];
    let (ex, real) = lab.check(
        "vm1",
        &tcp_frame(unknown, VM1_MAC, VM1_IP, [198, 18, 1, 99], 64, 80, SYN),
    );
    assert!(ex
        .steps
        .iter()
        .any(|s| s.next == pollux_dataplane::packet::Next::Flood));
    assert_eq!(real.keys().collect::<Vec<_>>(), ["vm2"]);

    // Switched to vm2, which allows TCP 80 in.
    let frame = tcp_frame(VM2_MAC, VM1_MAC, VM1_IP, VM2_IP, 64, 80, SYN);
    let (ex, real) = lab.check("vm1", &frame);
    assert_eq!(real["vm2"], [frame]);
    assert!(ex.dropped.is_empty());
    // A bare ACK before any reply is outside the connection's window: dropped, as
    // explained.
    let (ex, _) = lab.check(
        "vm1",
        &tcp_frame(VM2_MAC, VM1_MAC, VM1_IP, VM2_IP, 64, 80, ACK),
    );
    assert_eq!(ex.dropped[0].reason, DropReason::SgInvalid);
    // The connection is known to both ports' groups: vm2's answer matches it on both.
    let seg = tcp(VM2_IP, VM1_IP, 80, 40000, 500, 2, SYN | ACK, 8192, b"");
    let answer = ipv4(VM1_MAC, VM2_MAC, None, VM2_IP, VM1_IP, 64, 6, &seg);
    let (ex, real) = lab.check("vm2", &answer);
    assert_eq!(real["vm1"], [answer]);
    for vm in ["vm1", "vm2"] {
        let owner = ConnOwner::Port(PortId(lab.port(vm)));
        assert!(
            ex.connections
                .iter()
                .any(|c| c.owner == owner && c.dir == Dir::Reply),
            "{vm}: {ex:#?}"
        );
    }

    // VLAN push: vm3 (network b) to a host behind the uplink, flooded out tagged 100.
    let frame = tcp_frame(HOST_B_MAC, VM3_MAC, VM3_IP, HOST_B_IP, 64, 22, SYN);
    let (_, real) = lab.check("vm3", &frame);
    assert_eq!(real["uplink0"], [tagged(&frame, B_VID)]);

    // VLAN pop: the host answers, tagged 100, to vm3.
    let reply = tcp_frame(VM3_MAC, HOST_B_MAC, HOST_B_IP, VM3_IP, 64, 40000, SYN | ACK);
    let (ex, real) = lab.check("uplink0", &tagged(&reply, B_VID));
    assert_eq!(real["vm3"].len(), 1);
    assert_eq!(ex.sent[0].frame[12..14], [0x08, 0x00], "untagged to the VM");
}

#[test]
fn routed_nat_and_floating_ip_flows_are_explained_as_they_happen() {
    let mut lab = Lab::new();
    // Before any ARP: the routed packet would wait for vm3's MAC, after an ARP request.
    let frame = tcp_frame(lab.r1_mac, VM1_MAC, VM1_IP, VM3_IP, 64, 22, SYN);
    let (ex, real) = lab.check("vm1", &frame);
    assert_eq!(
        ex.waiting_for.map(|(_, ip)| ip),
        Some(u32::from_be_bytes(VM3_IP))
    );
    assert!(real.contains_key("vm3"), "the ARP request went out on b");
    // Its answer releases the real packet, which the explain pass never queued.
    let vm3 = lab.port("vm3");
    let _ = lab
        .sw
        .exchange(vm3, &arp(2, lab.r1_mac, VM3_MAC, VM3_IP, lab.r1_mac, GW_B));
    lab.announce();

    // Routed: the router's MACs, TTL down by one, the SG connection on vm3 then known.
    let frame = tcp_frame(lab.r1_mac, VM1_MAC, VM1_IP, VM3_IP, 64, 22, SYN);
    let (ex, real) = lab.check("vm1", &frame);
    let out = &real["vm3"][0];
    assert_eq!(out[..6], VM3_MAC);
    assert_eq!(out[6..12], lab.r1_mac);
    assert_eq!(ttl_of(out), 63);
    assert!(ex.steps.iter().any(|s| s.stage == Stage::L3));

    // SNAT, new: out of the uplink tagged 300 from the gateway's address; no session
    // created by the explain pass (checked in `check`), one by the real packet.
    let frame = tcp_frame(lab.r1_mac, VM1_MAC, VM1_IP, INTERNET, 64, 443, SYN);
    let sessions = lab.sw.worker.sessions().len();
    let (ex, real) = lab.check("vm1", &frame);
    let out = &real["uplink0"][0];
    assert_eq!(out[14..16], EXT_VID.to_be_bytes());
    assert_eq!(out[18 + 12..18 + 16], ROUTER_EXT);
    assert!(!ex
        .connections
        .iter()
        .any(|c| matches!(c.owner, ConnOwner::Router(_))));
    assert!(lab.sw.worker.sessions().len() > sessions);

    // SNAT, established: the session matched, the same translation (a retransmitted
    // SYN: a bare ACK before the answer is outside the security group's window).
    let frame = tcp_frame(lab.r1_mac, VM1_MAC, VM1_IP, INTERNET, 64, 443, SYN);
    let (ex, _) = lab.check("vm1", &frame);
    assert!(
        ex.connections
            .iter()
            .any(|c| matches!(c.owner, ConnOwner::Router(_))),
        "{ex:#?}"
    );

    // Floating IP in: to vm3's fixed address.
    let seg = udp(INTERNET, VM3_FIP, 5353, 53, b"q");
    let frame = tagged(
        &ipv4(
            lab.r1_mac,
            UPSTREAM_MAC,
            None,
            INTERNET,
            VM3_FIP,
            60,
            17,
            &seg,
        ),
        EXT_VID,
    );
    let (_, real) = lab.check("uplink0", &frame);
    let out = &real["vm3"][0];
    assert_eq!(out[14 + 16..14 + 20], VM3_IP);
}

#[test]
fn drops_are_explained_with_their_stage_and_reason() {
    let mut lab = Lab::new();
    lab.announce();
    let cases: [(&str, Vec<u8>, Stage, DropReason); 4] = [
        // Port security: vm1 sending from vm2's address.
        (
            "vm1",
            tcp_frame(VM2_MAC, VM1_MAC, [198, 18, 1, 77], VM2_IP, 64, 80, SYN),
            Stage::PortSecurity,
            DropReason::SpoofedIp,
        ),
        // Security groups: vm2 takes TCP 80 only.
        (
            "vm1",
            tcp_frame(VM2_MAC, VM1_MAC, VM1_IP, VM2_IP, 64, 22, SYN),
            Stage::SgIngress,
            DropReason::SgNoRule,
        ),
        // No route: r2 has no default route.
        (
            "vm4",
            tcp_frame(lab.r2_mac, VM4_MAC, VM4_IP, [198, 18, 99, 1], 64, 80, SYN),
            Stage::L3,
            DropReason::NoRoute,
        ),
        // TTL: the router would answer with a time exceeded (which the explain pass
        // shows among what it would send).
        (
            "vm1",
            tcp_frame(lab.r1_mac, VM1_MAC, VM1_IP, VM3_IP, 1, 22, SYN),
            Stage::L3,
            DropReason::TtlExpired,
        ),
    ];
    for (port, frame, stage, reason) in cases {
        let (ex, _) = lab.check(port, &frame);
        assert_eq!(
            ex.dropped.first().map(|d| (d.stage, d.reason)),
            Some((stage, reason)),
            "{ex:#?}"
        );
    }
}

#[test]
fn a_frame_for_no_attached_port_or_too_long_is_refused() {
    let mut lab = Lab::new();
    assert!(lab.sw.worker.explain(PortId(999), &[0; 60]).is_err());
    let vm1 = lab.port("vm1");
    assert!(lab
        .sw
        .worker
        .explain(PortId(vm1), &vec![0; 65_536])
        .is_err());
    // A runt is explained as the drop it is.
    let before = lab.state();
    let ex = lab
        .sw
        .worker
        .explain(PortId(vm1), &[0; 10])
        .expect("explains");
    assert_eq!(ex.dropped[0].reason, DropReason::Runt);
    assert_eq!(lab.state(), before);
}

/// The security groups' part of an answer: the rule (group and rule id) that lets the
/// packet out of the sender's VM and into the receiver's, or that no rule of the
/// receiver's groups allows it, which is what then drops it.
/// A rule check as (port, direction, verdict, (group, rule)).
type Checked = (PortId, Direction, RuleVerdict, Option<(String, String)>);

#[test]
fn security_group_verdicts_name_the_rule() {
    let mut lab = Lab::new();
    lab.announce();
    let (vm1, vm2) = (PortId(lab.port("vm1")), PortId(lab.port("vm2")));
    let checks = |ex: &Explanation| -> Vec<Checked> {
        ex.rules
            .iter()
            .map(|r| {
                let rule = r.rule.as_ref().map(|n| (n.group.clone(), n.rule.clone()));
                (r.port, r.direction, r.verdict, rule)
            })
            .collect()
    };
    let named = |group: &str, rule: &str| Some((group.to_owned(), rule.to_owned()));
    // TCP 80 from vm1 to vm2: "all"'s egress rule (its second, all/1) lets it out of
    // vm1, "web"'s first rule (TCP 80 in) into vm2.
    let (ex, real) = lab.check(
        "vm1",
        &tcp_frame(VM2_MAC, VM1_MAC, VM1_IP, VM2_IP, 64, 80, SYN),
    );
    assert_eq!(real["vm2"].len(), 1);
    let said = checks(&ex);
    assert_eq!(said.len(), 2, "{said:?}");
    assert!(matches!(said[0].2, RuleVerdict::Rule(_)));
    assert!(matches!(said[1].2, RuleVerdict::Rule(_)));
    assert_eq!(
        (said[0].0, said[0].1, said[0].3.clone()),
        (vm1, Direction::Egress, named("all", "all/1"))
    );
    assert_eq!(
        (said[1].0, said[1].1, said[1].3.clone()),
        (vm2, Direction::Ingress, named("web", "web/0"))
    );
    // TCP 22: out of vm1 by the same rule; "web" has no rule for it, and the drop is
    // that (sg_no_rule, under sg_ingress).
    let (ex, real) = lab.check(
        "vm1",
        &tcp_frame(VM2_MAC, VM1_MAC, VM1_IP, VM2_IP, 64, 22, SYN),
    );
    assert!(real.values().all(Vec::is_empty));
    assert_eq!(
        checks(&ex),
        vec![(
            vm1,
            Direction::Egress,
            ex.rules[0].verdict,
            named("all", "all/1")
        )]
    );
    assert_eq!(
        ex.dropped
            .iter()
            .map(|d| (d.stage, d.reason))
            .collect::<Vec<_>>(),
        vec![(Stage::SgIngress, DropReason::SgNoRule)]
    );
    // DHCP from vm2 needs no rule: Neutron's implicit one.
    let (any, all) = ([0, 0, 0, 0], [255, 255, 255, 255]);
    let dhcp = ipv4(
        BROADCAST,
        VM2_MAC,
        None,
        any,
        all,
        64,
        17,
        &udp(any, all, 68, 67, &[0; 8]),
    );
    let ex = lab.sw.worker.explain(vm2, &dhcp).expect("explains");
    assert_eq!(
        ex.rules.first().map(|r| (r.port, r.direction, r.verdict)),
        Some((vm2, Direction::Egress, RuleVerdict::Implicit)),
        "{ex:#?}"
    );
    // A drop before the groups (port security) has no rule check: nothing decided it
    // but the reason.
    let spoofed = tcp_frame(VM2_MAC, VM1_MAC, [198, 18, 1, 77], VM2_IP, 64, 80, SYN);
    let (ex, _) = lab.check("vm1", &spoofed);
    assert!(ex.rules.is_empty(), "{:?}", ex.rules);
    assert_eq!(ex.dropped[0].reason, DropReason::SpoofedIp);
}

/// A trace of a packet that a port's security groups drop names that port and its
/// groups, as explain does (`trace.show`'s JSON, made here from the worker's record).
#[test]
fn a_traced_security_group_drop_names_the_port_and_its_groups() {
    let mut lab = Lab::new();
    lab.announce();
    let vm1 = lab.port("vm1");
    lab.sw
        .worker
        .trace_start(PortId(vm1), 1, Default::default());
    lab.sw.exchange(
        vm1,
        &tcp_frame(VM2_MAC, VM1_MAC, VM1_IP, VM2_IP, 64, 22, SYN),
    );
    let records = lab.sw.worker.trace().expect("tracing").records().to_vec();
    assert_eq!(records.len(), 1);
    let names: BTreeMap<PortId, String> = [vm1, lab.port("vm2")]
        .into_iter()
        .map(|p| (PortId(p), lab.name(p)))
        .collect();
    let groups_of = |p: PortId| vec![format!("groups of {}", names[&p])];
    let shown = pollux_control::service::trace::record_json(&records[0], &names, &groups_of);
    let refused: Vec<&serde_json::Value> = shown["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s.get("security_groups").is_some())
        .collect();
    assert_eq!(refused.len(), 1, "{shown:#}");
    assert_eq!(refused[0]["stage"], "sg_ingress");
    assert_eq!(refused[0]["port"], "vm2");
    assert_eq!(
        refused[0]["security_groups"],
        serde_json::json!(["groups of vm2"])
    );
}
