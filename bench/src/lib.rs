//! Scenarios for the Pollux pipeline benchmarks, shared by the criterion benchmark and
//! the callgrind instruction counter so both measure exactly the same work.
//!
//! Each scenario is one worker on `mem` ports with a frame that takes one path through
//! the pipeline. A round offers one burst of 64 identical 64-byte frames, runs one worker
//! pass (receive copy-in, classify, L2, for the routed scenarios L3, output, transmit
//! copy-out), and empties the output rings outside the measured pass.

pub mod compare;
pub mod lpm;

use pollux_dataplane::conntrack::ConnConfig;
use pollux_dataplane::overlay::{vtep_mac, EndpointSpec};
use pollux_dataplane::packet::MAX_BURST;
use pollux_dataplane::port::PortId;
use pollux_dataplane::port_security::{Ipv4Source, Ipv6Source, PortSecurity};
use pollux_dataplane::qos::PortQos;
use pollux_dataplane::ratelimit::ByteRate;
use pollux_dataplane::routing::{InterfaceSpec, RouteSpec, RouterSpec, RouterUid};
use pollux_dataplane::secgroup::{RuleName, RuleSet, SgPolicy, SgRemote, SgRule, SgTables};
use pollux_dataplane::snapshot::{NetworkUid, PhysnetId, Segment, SnapshotBuilder};
use pollux_dataplane::worker::WorkerConfig;
use pollux_drivers::mem::MemPortConfig;
use pollux_tests::frames::{
    arp, frame, geneve, gre, ipv4, ipv6_frame, mac, udp, udp6, vxlan, BROADCAST,
};
use pollux_tests::harness::{MemSwitch, POOL_FRAMES};

/// One forwarding path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scenario {
    /// VM port to VM port on one network, destination MAC static.
    AccessToAccess,
    /// The same with port security on the sending port: a UDP/IPv4 frame from its fixed IP.
    AccessPortSecurity,
    /// VM port to a MAC learned behind the uplink: 802.1Q push.
    AccessToUplink,
    /// Uplink (tagged) to a VM port: 802.1Q pop, source learning refresh.
    UplinkToAccess,
    /// Broadcast from a VM port to 8 other ports of its network (7 VMs and the uplink).
    Flood8,
    /// UDP from a VM through a router with 10 routes to a VM on another network.
    Route10,
    /// The same through a router whose table holds 1,000,000 routes.
    Route1M,
    /// UDP from a VM through a router's SNAT to the external network (VLAN push), the
    /// session established: the steady state of a NATed flow.
    SnatSteady,
    /// [`Scenario::SnatSteady`] through a router that counts 10 metering labels (each an
    /// egress and an ingress rule and an excluded prefix), to set against it.
    SnatMetered10,
    /// VM port to a remote port of a VXLAN network (l2population): encapsulated out of
    /// the uplink.
    VxlanEncap,
    /// VXLAN from the remote host on the uplink, decapsulated to a VM port.
    VxlanDecap,
    /// [`Scenario::VxlanEncap`] on a Geneve network.
    GeneveEncap,
    /// [`Scenario::VxlanDecap`] on a Geneve network (no options).
    GeneveDecap,
    /// [`Scenario::VxlanEncap`] on a GRE network.
    GreEncap,
    /// [`Scenario::VxlanDecap`] on a GRE network (key, no checksum or sequence number).
    GreDecap,
    /// UDP between two VM ports with port security and stateful security groups of 10
    /// rules each, the connection established: a conntrack hit in each port's zone.
    SgEstablished10,
    /// The same with 10,000 rules per port: the established path ignores the rules.
    SgEstablished10k,
    /// The same as [`Scenario::SgEstablished10`], every packet a new connection (a new
    /// source and destination port): the rules evaluated and a connection inserted in each
    /// port's zone.
    SgNew10,
    /// New connections with 1,000 rules per port.
    SgNew1k,
    /// [`Scenario::SgEstablished10`] over IPv6 (2001:db8::/32 addresses from allowed
    /// address pairs, IPv6 rules): a hit in the IPv6 connection table.
    SgEstablished10Ipv6,
    /// New connections with 10,000 rules per port.
    SgNew10k,
    /// [`Scenario::AccessToAccess`] from a port with a QoS egress bandwidth limit whose
    /// bucket is deep enough that every frame passes: the cost of policing.
    AccessQosPoliced,
    /// The UDP/IPv4 frame of [`Scenario::AccessPortSecurity`] (without port security) from
    /// a port whose QoS policy marks DSCP EF: the rewrite with its checksum update.
    AccessQosMarked,
}

impl Scenario {
    /// Every scenario.
    pub const ALL: [Scenario; 23] = [
        Scenario::AccessToAccess,
        Scenario::AccessPortSecurity,
        Scenario::AccessToUplink,
        Scenario::UplinkToAccess,
        Scenario::Flood8,
        Scenario::Route10,
        Scenario::Route1M,
        Scenario::SnatSteady,
        Scenario::VxlanEncap,
        Scenario::VxlanDecap,
        Scenario::GeneveEncap,
        Scenario::GeneveDecap,
        Scenario::GreEncap,
        Scenario::GreDecap,
        Scenario::SgEstablished10,
        Scenario::SgEstablished10k,
        Scenario::SgNew10,
        Scenario::SgNew1k,
        Scenario::SgNew10k,
        Scenario::AccessQosPoliced,
        Scenario::AccessQosMarked,
        Scenario::SgEstablished10Ipv6,
        Scenario::SnatMetered10,
    ];

    /// Name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::AccessToAccess => "access_to_access",
            Scenario::AccessPortSecurity => "access_port_security",
            Scenario::AccessToUplink => "access_to_uplink_push",
            Scenario::UplinkToAccess => "uplink_to_access_pop",
            Scenario::Flood8 => "flood_8_ports",
            Scenario::Route10 => "route_10_routes",
            Scenario::Route1M => "route_1m_routes",
            Scenario::SnatSteady => "snat_steady",
            Scenario::SnatMetered10 => "snat_metered_10_labels",
            Scenario::VxlanEncap => "vxlan_encap",
            Scenario::VxlanDecap => "vxlan_decap",
            Scenario::GeneveEncap => "geneve_encap",
            Scenario::GeneveDecap => "geneve_decap",
            Scenario::GreEncap => "gre_encap",
            Scenario::GreDecap => "gre_decap",
            Scenario::SgEstablished10 => "sg_established_10_rules",
            Scenario::SgEstablished10k => "sg_established_10k_rules",
            Scenario::SgNew10 => "sg_new_10_rules",
            Scenario::SgNew1k => "sg_new_1k_rules",
            Scenario::SgNew10k => "sg_new_10k_rules",
            Scenario::AccessQosPoliced => "access_qos_policed",
            Scenario::AccessQosMarked => "access_qos_marked",
            Scenario::SgEstablished10Ipv6 => "sg_established_10_rules_ipv6",
        }
    }

    /// Routes in the router's table, for the routing scenarios.
    fn routes(self) -> Option<usize> {
        match self {
            Scenario::Route10 | Scenario::SnatSteady | Scenario::SnatMetered10 => Some(10),
            Scenario::Route1M => Some(1_000_000),
            _ => None,
        }
    }

    /// The overlay segment of the overlay scenarios, and whether the scenario
    /// encapsulates (else it decapsulates).
    fn overlay(self) -> Option<(Segment, bool)> {
        match self {
            Scenario::VxlanEncap => Some((Segment::Vxlan { vni: 100 }, true)),
            Scenario::VxlanDecap => Some((Segment::Vxlan { vni: 100 }, false)),
            Scenario::GeneveEncap => Some((Segment::Geneve { vni: 100 }, true)),
            Scenario::GeneveDecap => Some((Segment::Geneve { vni: 100 }, false)),
            Scenario::GreEncap => Some((Segment::Gre { key: 100 }, true)),
            Scenario::GreDecap => Some((Segment::Gre { key: 100 }, false)),
            _ => None,
        }
    }

    /// Rules per port and whether every packet opens a new connection, for the
    /// security-group scenarios.
    fn security_groups(self) -> Option<(usize, bool)> {
        match self {
            Scenario::SgEstablished10 => Some((10, false)),
            Scenario::SgEstablished10k => Some((10_000, false)),
            Scenario::SgNew10 => Some((10, true)),
            Scenario::SgNew1k => Some((1_000, true)),
            Scenario::SgNew10k => Some((10_000, true)),
            _ => None,
        }
    }

    /// The scenario with this name.
    pub fn from_name(name: &str) -> Option<Scenario> {
        Scenario::ALL.into_iter().find(|s| s.name() == name)
    }
}

/// Frame size of every scenario (without FCS), the RFC 2544 minimum.
pub const FRAME_LEN: usize = 60;
/// Frames offered per round.
pub const BURST: usize = MAX_BURST;

const UPLINK: u16 = 0;
const OUTSIDE_MAC: u8 = 200;

/// A ready-to-run scenario.
#[derive(Debug)]
pub struct Bench {
    sw: MemSwitch,
    input: u16,
    frame: Vec<u8>,
    /// Frames each round emits (BURST, or BURST * 8 for the flood).
    pub emitted_per_round: usize,
    /// Frames offered so far, when each must open a new connection (its ports follow).
    new_flows: Option<u32>,
}

impl Bench {
    /// Sets up `scenario` and warms it up (learning done, caches and rings primed).
    pub fn new(scenario: Scenario) -> Self {
        if let Some(routes) = scenario.routes() {
            return Bench::routed(scenario, routes);
        }
        if let Some((segment, _)) = scenario.overlay() {
            return Bench::overlay(scenario, segment);
        }
        if let Some((rules, new_flows)) = scenario.security_groups() {
            return Bench::security_groups(rules, new_flows, false);
        }
        if scenario == Scenario::SgEstablished10Ipv6 {
            return Bench::security_groups(10, false, true);
        }
        let phys = PhysnetId(1);
        let net = NetworkUid(1);
        let mut b = SnapshotBuilder::new();
        b.network(
            net,
            Segment::Vlan {
                physnet: phys,
                vid: 100,
            },
        )
        .uplink(PortId(UPLINK), phys);
        for p in 1..=8u16 {
            b.access_port(PortId(p), net, &[mac(p as u8)]);
        }
        const VM1_IP: [u8; 4] = [198, 18, 1, 10];
        if scenario == Scenario::AccessPortSecurity {
            let policy =
                PortSecurity::new(&[mac(1)], &[Ipv4Source::new(mac(1), VM1_IP.into(), 32)]);
            b.port_security(PortId(1), policy);
        }
        match scenario {
            Scenario::AccessQosPoliced => {
                // Deep enough for every frame a benchmark sends at a standing clock.
                let rate = ByteRate {
                    max_kbps: 10_000_000,
                    burst_kbit: u32::MAX,
                };
                b.qos(
                    PortId(1),
                    PortQos {
                        egress: Some(rate),
                        ..PortQos::default()
                    },
                );
            }
            Scenario::AccessQosMarked => {
                b.qos(
                    PortId(1),
                    PortQos {
                        dscp: Some(46),
                        ..PortQos::default()
                    },
                );
            }
            _ => {}
        }
        let ports: Vec<u16> = (0..=8).collect();
        let mut sw = MemSwitch::new(&b, &ports);
        // Learn the outside MAC on the uplink, as real traffic would have.
        sw.send(
            UPLINK,
            &frame(BROADCAST, mac(OUTSIDE_MAC), Some(100), 0, FRAME_LEN),
        );
        sw.run();
        sw.collect();
        let (input, frame, fanout) = match scenario {
            Scenario::AccessToAccess | Scenario::AccessQosPoliced => {
                (1, frame(mac(2), mac(1), None, 0, FRAME_LEN), 1)
            }
            Scenario::AccessPortSecurity | Scenario::AccessQosMarked => {
                let payload = udp(VM1_IP, [198, 18, 1, 11], 40000, 9, &[0; 18]);
                let f = ipv4(
                    mac(2),
                    mac(1),
                    None,
                    VM1_IP,
                    [198, 18, 1, 11],
                    64,
                    17,
                    &payload,
                );
                assert_eq!(f.len(), FRAME_LEN);
                (1, f, 1)
            }
            Scenario::AccessToUplink => (1, frame(mac(OUTSIDE_MAC), mac(1), None, 0, FRAME_LEN), 1),
            Scenario::UplinkToAccess => (
                UPLINK,
                frame(mac(2), mac(OUTSIDE_MAC), Some(100), 0, FRAME_LEN),
                1,
            ),
            Scenario::Flood8 => (1, frame(BROADCAST, mac(1), None, 0, FRAME_LEN), 8),
            Scenario::Route10
            | Scenario::Route1M
            | Scenario::SnatSteady
            | Scenario::SnatMetered10
            | Scenario::VxlanEncap
            | Scenario::VxlanDecap
            | Scenario::GeneveEncap
            | Scenario::GeneveDecap
            | Scenario::GreEncap
            | Scenario::GreDecap => {
                unreachable!("routed and overlay scenarios have their own set-up")
            }
            _ => unreachable!("security-group scenarios are set up by Bench::security_groups"),
        };
        let mut bench = Bench {
            sw,
            input,
            frame,
            emitted_per_round: BURST * fanout,
            new_flows: None,
        };
        for _ in 0..100 {
            bench.round();
        }
        bench.sw.assert_conserved();
        bench
    }

    /// A router between network A (VM port 1), network B (VM port 2) and an external
    /// VLAN network on the uplink, with `routes` routes in its table; the frame goes from
    /// VM 1 to VM 2 (routing) or, for [`Scenario::SnatSteady`], to a host beyond the
    /// external gateway (routing, SNAT, VLAN push). Neighbours are resolved first.
    fn routed(scenario: Scenario, routes: usize) -> Self {
        const ROUTER_MAC: [u8; 6] = [0x02, 0x70, 0x6c, 0, 0, 1];
        let (net_a, net_b, net_ext) = (NetworkUid(1), NetworkUid(2), NetworkUid(3));
        let phys = PhysnetId(1);
        let iface = |network, ip: [u8; 4], prefix_len| InterfaceSpec {
            network,
            ip: ip.into(),
            prefix_len,
            mtu: 1500,
        };
        let mut extra = vec![RouteSpec {
            destination: [0, 0, 0, 0].into(),
            prefix_len: 0,
            nexthop: [203, 0, 113, 1].into(),
        }];
        // A BGP-like spread of /24s over the whole space, each via a host on network B;
        // none of them covers the destinations used below.
        let mut x: u32 = 0x2545_f491;
        while extra.len() < routes.saturating_sub(3) {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            let destination = x & 0xffff_ff00;
            if destination >> 17 == u32::from_be_bytes([198, 18, 0, 0]) >> 17
                || destination >> 8 == u32::from_be_bytes([203, 0, 113, 0]) >> 8
            {
                continue;
            }
            extra.push(RouteSpec {
                destination: destination.into(),
                prefix_len: 24,
                nexthop: [198, 18, 2, 254].into(),
            });
        }
        let mut b = SnapshotBuilder::new();
        b.network(net_a, Segment::Local)
            .network(net_b, Segment::Local)
            .network(
                net_ext,
                Segment::Vlan {
                    physnet: phys,
                    vid: 300,
                },
            )
            .access_port(PortId(1), net_a, &[mac(1)])
            .access_port(PortId(2), net_b, &[mac(2)])
            .uplink(PortId(UPLINK), phys)
            .router(RouterSpec {
                uid: RouterUid(1),
                mac: ROUTER_MAC,
                interfaces: vec![
                    iface(net_a, [198, 18, 1, 1], 24),
                    iface(net_b, [198, 18, 2, 1], 24),
                    iface(net_ext, [203, 0, 113, 10], 25),
                ],
                routes: extra,
                external: Some(2),
                enable_snat: true,
                floating_ips: Vec::new(),
                metering: if scenario == Scenario::SnatMetered10 {
                    ten_labels()
                } else {
                    Vec::new()
                },
            });
        let mut sw = MemSwitch::new(&b, &[UPLINK, 1, 2]);
        // The hosts announce themselves (ARP requests for their gateways).
        let mut upstream = arp(
            1,
            BROADCAST,
            mac(OUTSIDE_MAC),
            [203, 0, 113, 1],
            [0; 6],
            [203, 0, 113, 10],
        );
        upstream.splice(12..12, [0x81, 0x00, 0x01, 0x2c]);
        for (port, f) in [
            (
                1,
                arp(
                    1,
                    BROADCAST,
                    mac(1),
                    [198, 18, 1, 10],
                    [0; 6],
                    [198, 18, 1, 1],
                ),
            ),
            (
                2,
                arp(
                    1,
                    BROADCAST,
                    mac(2),
                    [198, 18, 2, 10],
                    [0; 6],
                    [198, 18, 2, 1],
                ),
            ),
            (UPLINK, upstream),
        ] {
            sw.send(port, &f);
            sw.run();
        }
        sw.collect();
        let dst = match scenario {
            Scenario::SnatSteady | Scenario::SnatMetered10 => [203, 0, 113, 200],
            _ => [198, 18, 2, 10],
        };
        let payload = udp([198, 18, 1, 10], dst, 40000, 9, &[0; 18]);
        let frame = ipv4(
            ROUTER_MAC,
            mac(1),
            None,
            [198, 18, 1, 10],
            dst,
            64,
            17,
            &payload,
        );
        assert_eq!(frame.len(), FRAME_LEN);
        let output = match scenario {
            Scenario::SnatSteady | Scenario::SnatMetered10 => UPLINK,
            _ => 2,
        };
        let mut bench = Bench {
            sw,
            input: 1,
            frame,
            emitted_per_round: BURST,
            new_flows: None,
        };
        for _ in 0..100 {
            bench.round();
        }
        bench.sw.send(1, &bench.frame.clone());
        bench.sw.run();
        let out = bench.sw.collect();
        assert_eq!(out.keys().copied().collect::<Vec<_>>(), [output], "{out:?}");
        bench.sw.assert_conserved();
        bench
    }

    /// An overlay network (`segment`: VNI or key 100) with VM ports 1 and 2 here and a
    /// remote port (MAC `OUTSIDE_MAC`) on host 198.18.0.2, whose underlay MAC is known.
    fn overlay(scenario: Scenario, segment: Segment) -> Self {
        const LOCAL: [u8; 4] = [198, 18, 0, 1];
        const REMOTE: [u8; 4] = [198, 18, 0, 2];
        const REMOTE_MAC: [u8; 6] = [0x02, 0xbb, 0, 0, 0, 2];
        let net = NetworkUid(1);
        let mut b = SnapshotBuilder::new();
        b.network(net, segment)
            .uplink(PortId(UPLINK), PhysnetId(1))
            .tunnel_endpoint(EndpointSpec {
                uplink: PortId(UPLINK),
                local_ip: LOCAL.into(),
            })
            .tunnel_port(PortId(10), REMOTE.into())
            .remote_port(net, PortId(10), &[mac(OUTSIDE_MAC)]);
        for p in 1..=2u16 {
            b.access_port(PortId(p), net, &[mac(p as u8)]);
        }
        let mut sw = MemSwitch::new(&b, &[UPLINK, 1, 2]);
        // The remote endpoint resolves ours, which teaches its MAC.
        sw.send(
            UPLINK,
            &arp(1, BROADCAST, REMOTE_MAC, REMOTE, [0; 6], LOCAL),
        );
        sw.run();
        sw.collect();
        let vtep = vtep_mac(LOCAL.into());
        let inner = frame(mac(2), mac(OUTSIDE_MAC), None, 0, FRAME_LEN);
        let (input, frame) = match (scenario.overlay(), segment) {
            (Some((_, true)), _) => (1, frame(mac(OUTSIDE_MAC), mac(1), None, 0, FRAME_LEN)),
            (_, Segment::Geneve { vni }) => (
                UPLINK,
                geneve(vtep, REMOTE_MAC, REMOTE, LOCAL, vni, &[], &inner),
            ),
            (_, Segment::Gre { key }) => (
                UPLINK,
                gre(vtep, REMOTE_MAC, REMOTE, LOCAL, key, false, None, &inner),
            ),
            _ => (UPLINK, vxlan(vtep, REMOTE_MAC, REMOTE, LOCAL, 100, &inner)),
        };
        let mut bench = Bench {
            sw,
            input,
            frame,
            emitted_per_round: BURST,
            new_flows: None,
        };
        for _ in 0..100 {
            bench.round();
        }
        bench.sw.assert_conserved();
        bench
    }

    /// VM 1 (198.18.1.10) to VM 2 (198.18.1.11) on one network, both with port security
    /// and a stateful security group of `rules` rules per direction (a spread of remote
    /// prefixes of three lengths and port ranges, the rule that matches last in the list),
    /// UDP; with `new_flows`, every frame has ports no earlier frame had.
    fn security_groups(rules: usize, new_flows: bool, ipv6: bool) -> Self {
        const VM1_IP: [u8; 4] = [198, 18, 1, 10];
        const VM2_IP: [u8; 4] = [198, 18, 1, 11];
        const VM1_IP6: u128 = 0x2001_0db8_0000_0000_0000_0000_0000_0010;
        const VM2_IP6: u128 = 0x2001_0db8_0000_0000_0000_0000_0000_0011;
        let net = NetworkUid(1);
        let mut b = SnapshotBuilder::new();
        b.network(net, Segment::Local)
            .access_port(PortId(1), net, &[mac(1)])
            .access_port(PortId(2), net, &[mac(2)])
            .port_security(
                PortId(1),
                PortSecurity::new(&[mac(1)], &[Ipv4Source::new(mac(1), VM1_IP.into(), 32)])
                    .with_ipv6(&[Ipv6Source::new(mac(1), VM1_IP6.into(), 128)]),
            )
            .port_security(
                PortId(2),
                PortSecurity::new(&[mac(2)], &[Ipv4Source::new(mac(2), VM2_IP.into(), 32)])
                    .with_ipv6(&[Ipv6Source::new(mac(2), VM2_IP6.into(), 128)]),
            );
        let spread = |n: usize, allow: SgRule| -> Vec<SgRule> {
            let mut out: Vec<SgRule> = (0..n.saturating_sub(1))
                .map(|i| {
                    let i32 = i as u32;
                    let (addr, len) = match i % 3 {
                        0 => (0x0a00_0000 | i32 << 8 | 7, 32),
                        1 => (0x0b00_0000 | i32 << 8, 24),
                        _ => (0x0c00_0000 | (i32 & 0xff) << 16, 16),
                    };
                    let port = 1000 + (i % 50_000) as u16;
                    SgRule {
                        proto: Some(if i % 2 == 0 { 6 } else { 17 }),
                        lo: port,
                        hi: port.saturating_add((i % 7) as u16),
                        remote: SgRemote::Prefix { addr, len },
                        id: 0,
                    }
                })
                .collect();
            out.push(allow);
            out
        };
        let allow = |remote: [u8; 4]| SgRule {
            proto: Some(17),
            lo: 1,
            hi: u16::MAX,
            remote: SgRemote::Prefix {
                addr: u32::from_be_bytes(remote),
                len: 32,
            },
            id: 0,
        };
        // The IPv6 rules: the same spread, the prefixes moved into 2001:db8::/32.
        let six = |r: SgRule| SgRule::<u128> {
            proto: r.proto,
            lo: r.lo,
            hi: r.hi,
            remote: match r.remote {
                SgRemote::Prefix { addr, len } => SgRemote::Prefix {
                    addr: 0x2001_0db8 << 96 | u128::from(addr),
                    len: len + 96,
                },
                SgRemote::Any => SgRemote::Any,
                SgRemote::Set(s) => SgRemote::Set(s),
            },
            id: r.id,
        };
        let policy = |remote: [u8; 4], remote6: u128| {
            let mut rules6: Vec<SgRule<u128>> =
                spread(rules, allow(remote)).into_iter().map(six).collect();
            if let Some(last) = rules6.last_mut() {
                last.remote = SgRemote::Prefix {
                    addr: remote6,
                    len: 128,
                };
            }
            SgPolicy {
                ingress: RuleSet::build(&spread(rules, allow(remote))),
                egress: RuleSet::build(&spread(rules, allow(remote))),
                ingress6: RuleSet::build(&rules6),
                egress6: RuleSet::build(&rules6),
                stateful: true,
                version: 1,
            }
        };
        b.security_groups(SgTables::new(
            vec![policy(VM2_IP, VM2_IP6), policy(VM1_IP, VM1_IP6)],
            &[(PortId(1), 0), (PortId(2), 1)],
            Vec::new(),
            vec![RuleName {
                group: "bench".into(),
                rule: "any".into(),
            }],
        ));
        // Room for every connection the longest run opens, in both zones.
        let worker = WorkerConfig {
            conntrack: ConnConfig {
                owner_quota: 1 << 18,
                ..ConnConfig::with_capacity(1 << 18)
            },
            ..WorkerConfig::default()
        };
        let sw = MemSwitch::with_snapshot(
            b.build(1).expect("valid"),
            &[1, 2],
            worker,
            MemPortConfig::default(),
            POOL_FRAMES,
        );
        let frame = if ipv6 {
            let src = VM1_IP6.to_be_bytes();
            let dst = VM2_IP6.to_be_bytes();
            let payload = udp6(src, dst, 40000, 9, &[0; 18]);
            ipv6_frame(mac(2), mac(1), src, dst, 17, &payload)
        } else {
            let payload = udp(VM1_IP, VM2_IP, 40000, 9, &[0; 18]);
            let frame = ipv4(mac(2), mac(1), None, VM1_IP, VM2_IP, 64, 17, &payload);
            assert_eq!(frame.len(), FRAME_LEN);
            frame
        };
        let mut bench = Bench {
            sw,
            input: 1,
            frame,
            emitted_per_round: BURST,
            new_flows: new_flows.then_some(0),
        };
        for _ in 0..100 {
            bench.round();
        }
        bench.sw.assert_conserved();
        bench
    }

    /// Offers one burst outside the measured code.
    #[inline]
    pub fn offer(&mut self) {
        if let Some(n) = self.new_flows.as_mut() {
            let wire = self.sw.wires.get_mut(&self.input).expect("input port");
            for _ in 0..BURST {
                *n += 1;
                // Source port, then destination port: 2^32 distinct flows.
                self.frame[34..36].copy_from_slice(&(*n as u16).to_be_bytes());
                self.frame[36..38].copy_from_slice(&((*n >> 16) as u16 | 1).to_be_bytes());
                assert!(wire.send(&self.frame));
            }
            // Past 2^16 flows (beyond the instruction counts' short runs, which stay at a
            // standing clock) time moves: once past the unreplied-UDP timeout, then 20 ms a
            // round, so the worker's housekeeping expires connections as fast as they are
            // made and a long run measures connections made (and, amortized, expired), not
            // a full table refusing them.
            if *n >= 1 << 16 {
                if *n - (BURST as u32) < 1 << 16 {
                    self.sw.now_ns += 31_000_000_000;
                }
                self.sw.now_ns += 20_000_000;
            }
            return;
        }
        let n = self
            .sw
            .wires
            .get_mut(&self.input)
            .expect("input port")
            .send_repeated(&self.frame, BURST);
        assert_eq!(n, BURST);
    }

    /// One worker pass: the measured code.
    #[inline]
    pub fn poll(&mut self) -> usize {
        self.sw.worker.poll(self.sw.now_ns)
    }

    /// Empties every output ring outside the measured code; returns frames taken.
    #[inline]
    pub fn drain(&mut self) -> usize {
        self.sw
            .wires
            .values_mut()
            .map(|w| w.drain(usize::MAX, |_| {}))
            .sum()
    }

    /// offer + poll + drain, checking that the whole burst went where it should.
    pub fn round(&mut self) {
        self.offer();
        let received = self.poll();
        let emitted = self.drain();
        assert_eq!((received, emitted), (BURST, self.emitted_per_round));
    }
}

/// Ten metering labels as a project might have them: each counts what leaves from one
/// /28 of subnet A (the first one holds the benchmark's VM, the others do not), and
/// each excludes a prefix and counts ingress to its /28.
fn ten_labels() -> Vec<pollux_dataplane::metering::LabelMeterSpec> {
    use pollux_dataplane::metering::{LabelMeterSpec, MeterDirection, MeterMatch};
    (0..10u8)
        .map(|i| {
            let own = Some((u32::from_be_bytes([198, 18, 1, i * 16]), 28));
            let excluded = Some((u32::from_be_bytes([198, 19, i, 0]), 24));
            LabelMeterSpec {
                slot: u16::from(i),
                rules: vec![
                    (
                        MeterDirection::Egress,
                        MeterMatch::new(None, excluded),
                        true,
                    ),
                    (MeterDirection::Egress, MeterMatch::new(own, None), false),
                    (MeterDirection::Ingress, MeterMatch::new(None, own), false),
                ],
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::{Bench, Scenario};

    /// Three times the connection table's room in new flows, every one forwarded: the
    /// clock's moves let housekeeping expire them (a full table would drop, failing
    /// `round`'s check).
    #[test]
    fn new_flow_scenarios_never_fill_the_connection_table() {
        let mut bench = Bench::new(Scenario::SgNew10);
        for _ in 0..12_000 {
            bench.round();
        }
        bench.sw.assert_conserved();
    }
}
