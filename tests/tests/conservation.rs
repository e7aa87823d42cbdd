//! Property tests: whatever bytes arrive on whatever port, the worker never panics, every
//! frame is accounted for exactly once, and no frame leaks from the pool, jumbo frames
//! (chains of pool frames) included.

use pollux_dataplane::overlay::EndpointSpec;
use pollux_dataplane::pipeline::Stage;
use pollux_dataplane::port::PortId;
use pollux_dataplane::port_security::{Ipv4Source, Ipv6Source, PortSecurity};
use pollux_dataplane::secgroup::{RuleName, RuleSet, SgPolicy, SgRemote, SgRule, SgTables};
use pollux_dataplane::snapshot::{NetworkUid, PhysnetId, Segment, SnapshotBuilder};
use pollux_dataplane::worker::WorkerConfig;
use pollux_drivers::mem::MemPortConfig;
use pollux_tests::frames::{frame, ipv4, ipv6_frame, mac, BROADCAST};
use pollux_tests::harness::{MemSwitch, POOL_FRAMES};
use proptest::prelude::*;

const PORTS: [u16; 8] = [0, 1, 2, 3, 4, 5, 6, 7];
/// The uplink's tunnel endpoint and the one remote host of networks 4, 5 and 6.
const LOCAL_IP: [u8; 4] = [198, 18, 0, 1];
const REMOTE_IP: [u8; 4] = [198, 18, 0, 2];

fn topology() -> SnapshotBuilder {
    let phys = PhysnetId(1);
    let mut b = SnapshotBuilder::new();
    b.network(
        NetworkUid(1),
        Segment::Vlan {
            physnet: phys,
            vid: 100,
        },
    )
    .network(NetworkUid(2), Segment::Flat { physnet: phys })
    .network(NetworkUid(3), Segment::Local)
    .uplink(PortId(0), phys)
    .access_port(PortId(1), NetworkUid(1), &[mac(1)])
    .access_port(PortId(2), NetworkUid(1), &[mac(2)])
    .access_port(PortId(3), NetworkUid(2), &[mac(3)])
    // Port 2 has port security, port 1 the checksum-offload stage (as AF_XDP ports do).
    .port_security(
        PortId(2),
        PortSecurity::new(
            &[mac(2)],
            &[Ipv4Source::new(mac(2), [198, 18, 1, 2].into(), 32)],
        ),
    )
    .enable_stage(PortId(1), Stage::ChecksumOffload);
    // Port 4 is attached but not configured.
    // Network 4 is VXLAN (VNI 7) with port 5 here and mac(6) at the remote host.
    b.network(NetworkUid(4), Segment::Vxlan { vni: 7 })
        .tunnel_endpoint(EndpointSpec {
            uplink: PortId(0),
            local_ip: LOCAL_IP.into(),
        })
        .access_port(PortId(5), NetworkUid(4), &[mac(5)])
        .tunnel_port(PortId(10), REMOTE_IP.into())
        .remote_port(NetworkUid(4), PortId(10), &[mac(6)])
        .arp_entry(NetworkUid(4), [203, 0, 113, 6].into(), mac(6));
    // Network 5 is Geneve (VNI 7) with port 6 here, network 6 GRE (key 7) with port 7
    // here, both with mac(8) at the same remote host.
    b.network(NetworkUid(5), Segment::Geneve { vni: 7 })
        .network(NetworkUid(6), Segment::Gre { key: 7 })
        .access_port(PortId(6), NetworkUid(5), &[mac(7)])
        .access_port(PortId(7), NetworkUid(6), &[mac(7)])
        .remote_port(NetworkUid(5), PortId(10), &[mac(8)])
        .remote_port(NetworkUid(6), PortId(10), &[mac(8)]);
    b
}

/// Geneve and GRE packets to the endpoint, plausible or broken: identifier, source,
/// options, checksum and sequence flags and the inner frame vary; some are cut short,
/// some have a byte changed in the outer or tunnel headers.
fn geneve_gre_frame() -> impl Strategy<Value = Vec<u8>> {
    let id = prop_oneof![Just(7u32), any::<u32>()];
    let src = prop_oneof![Just(REMOTE_IP), any::<[u8; 4]>()];
    let inner = prop_oneof![
        (any::<u32>(), 14usize..200).prop_map(|(seq, len)| frame(mac(7), mac(8), None, seq, len)),
        (any::<u32>(), 14usize..200).prop_map(|(seq, len)| frame(
            BROADCAST,
            mac(9),
            None,
            seq,
            len
        )),
        proptest::collection::vec(any::<u8>(), 0..100),
    ];
    let damage = prop_oneof![Just(None), (14usize..60, any::<u8>()).prop_map(Some),];
    let shape = (
        any::<bool>(),
        0usize..4,
        any::<[u8; 16]>(),
        any::<bool>(),
        any::<Option<u32>>(),
    );
    (id, src, inner, damage, any::<u16>(), shape).prop_map(
        |(id, src, inner, damage, cut, (is_geneve, words, opts, csum, seq))| {
            let vtep = pollux_dataplane::overlay::vtep_mac(LOCAL_IP.into());
            let remote = [0x02, 0xbb, 0, 0, 0, 2];
            let mut f = if is_geneve {
                pollux_tests::frames::geneve(
                    vtep,
                    remote,
                    src,
                    LOCAL_IP,
                    id & 0x00ff_ffff,
                    &opts[..words * 4],
                    &inner,
                )
            } else {
                pollux_tests::frames::gre(vtep, remote, src, LOCAL_IP, id, csum, seq, &inner)
            };
            if let Some((at, byte)) = damage {
                if at < f.len() {
                    f[at] = byte;
                }
            }
            if cut % 4 == 0 {
                f.truncate(usize::from(cut) % (f.len() + 1));
            }
            f
        },
    )
}

/// VXLAN packets to the endpoint, plausible or broken: VNI, source, lengths, flags and
/// the inner frame vary; some are cut short, some have a byte changed in the outer headers.
fn vxlan_frame() -> impl Strategy<Value = Vec<u8>> {
    let vni = prop_oneof![Just(7u32), any::<u32>()];
    let src = prop_oneof![Just(REMOTE_IP), any::<[u8; 4]>()];
    let inner = prop_oneof![
        (any::<u32>(), 14usize..200).prop_map(|(seq, len)| frame(mac(5), mac(6), None, seq, len)),
        (any::<u32>(), 14usize..200).prop_map(|(seq, len)| frame(
            BROADCAST,
            mac(9),
            None,
            seq,
            len
        )),
        proptest::collection::vec(any::<u8>(), 0..100),
    ];
    let damage = prop_oneof![Just(None), (14usize..50, any::<u8>()).prop_map(Some),];
    (vni, src, inner, damage, any::<u16>()).prop_map(|(vni, src, inner, damage, cut)| {
        let vtep = pollux_dataplane::overlay::vtep_mac(LOCAL_IP.into());
        let mut f = vtep.to_vec();
        f.extend_from_slice(&[0x02, 0xbb, 0, 0, 0, 2, 0x08, 0x00]);
        let total = (36 + inner.len()) as u16;
        f.extend_from_slice(&[0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 17, 0, 0]);
        f[16..18].copy_from_slice(&total.to_be_bytes());
        f.extend_from_slice(&src);
        f.extend_from_slice(&LOCAL_IP);
        f.extend_from_slice(&[0xc0, 0x00, 0x12, 0xb5]);
        f.extend_from_slice(&(total - 20).to_be_bytes());
        f.extend_from_slice(&[0, 0, 0x08, 0, 0, 0]);
        f.extend_from_slice(&(vni << 8).to_be_bytes());
        f.extend_from_slice(&inner);
        if let Some((at, byte)) = damage {
            f[at] = byte;
        }
        if cut % 4 == 0 {
            f.truncate(usize::from(cut) % (f.len() + 1));
        }
        f
    })
}

/// Frames with an IPv4, ARP or IPv6 EtherType and a header that is plausible or random,
/// for the stages that read past Ethernet (port security, checksum offload); some of
/// them longer than a pool frame, so chained.
fn l3_frame() -> impl Strategy<Value = Vec<u8>> {
    let l3 = prop_oneof![
        4 => proptest::collection::vec(any::<u8>(), 0..200),
        1 => proptest::collection::vec(any::<u8>(), 1780..9000),
    ];
    let ethertype = prop_oneof![Just(0x0800u16), Just(0x0806), Just(0x86dd)];
    let src = prop_oneof![Just(mac(1)), Just(mac(2)), Just(mac(3)), any::<[u8; 6]>()];
    (src, ethertype, any::<bool>(), l3).prop_map(|(src, ethertype, plausible, mut l3)| {
        if plausible && l3.len() >= 20 && ethertype == 0x0800 {
            // Version 4, IHL 5, the length it has, UDP or TCP from 198.18.1.2.
            let total = l3.len() as u16;
            l3[0] = 0x45;
            l3[2..4].copy_from_slice(&total.to_be_bytes());
            l3[6] &= 0x40;
            l3[9] = if l3[9] & 1 == 0 { 17 } else { 6 };
            l3[12..16].copy_from_slice(&[198, 18, 1, 2]);
        }
        let mut f = BROADCAST.to_vec();
        f.extend_from_slice(&src);
        f.extend_from_slice(&ethertype.to_be_bytes());
        f.extend_from_slice(&l3);
        f
    })
}

/// Frames that exercise the parser's branches: random bytes, well-formed frames to
/// interesting addresses with random tags, and truncated or over-long versions of them.
fn any_frame() -> impl Strategy<Value = Vec<u8>> {
    let addr = prop_oneof![
        Just(BROADCAST),
        (1u8..6).prop_map(mac),
        Just([0x01, 0x00, 0x5e, 0, 0, 1]),
        any::<[u8; 6]>(),
    ];
    let tag = prop_oneof![
        Just(None),
        Just(Some(100u16)),
        Just(Some(0)),
        (0u16..4096).prop_map(Some)
    ];
    let structured = (addr.clone(), addr, tag, 14usize..1600, any::<u32>())
        .prop_map(|(dst, src, vid, len, seq)| frame(dst, src, vid, seq, len));
    let tpids = prop_oneof![Just([0x81u8, 0x00]), Just([0x88, 0xa8])];
    let stacked = (tpids.clone(), tpids, 14usize..40).prop_map(|(a, b, len)| {
        let mut f = frame(BROADCAST, mac(9), Some(100), 0, len.max(22));
        f[12..14].copy_from_slice(&a);
        f[16..18].copy_from_slice(&b);
        f.truncate(len);
        f
    });
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..80),
        l3_frame(),
        structured.clone(),
        (structured.clone(), 0usize..20).prop_map(|(f, n)| f[..n.min(f.len())].to_vec()),
        (structured, prop_oneof![1700usize..2100, 2100usize..9300]).prop_map(|(mut f, n)| {
            f.resize(n, 0xee);
            f
        }),
        stacked,
        vxlan_frame(),
        geneve_gre_frame(),
        // Towards the remote host, and underlay ARP for the endpoint.
        (any::<u32>(), 14usize..300).prop_map(|(seq, len)| frame(mac(6), mac(5), None, seq, len)),
        (any::<u32>(), 14usize..300).prop_map(|(seq, len)| frame(mac(8), mac(7), None, seq, len)),
        Just(arp_for_local_ip()),
    ]
}

/// The remote host asking for the endpoint's MAC (which teaches its own).
fn arp_for_local_ip() -> Vec<u8> {
    pollux_tests::frames::arp(
        1,
        BROADCAST,
        [0x02, 0xbb, 0, 0, 0, 2],
        REMOTE_IP,
        [0; 6],
        LOCAL_IP,
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn every_frame_is_accounted_for(inputs in proptest::collection::vec((0usize..PORTS.len(), any_frame()), 1..120)) {
        // Ring slots for jumbo frames: what is larger than a pool frame arrives chained.
        let ring = MemPortConfig { depth: 1024, max_frame: 9216 };
        let mut sw = MemSwitch::with(&topology(), &PORTS, WorkerConfig::default(), ring, POOL_FRAMES);
        let mut offered = 0u64;
        for (i, f) in &inputs {
            // Frames larger than a ring slot never reach the port; that is the wire's limit.
            if sw.wires.get_mut(&PORTS[*i]).unwrap().send(f) {
                offered += 1;
            }
            // Run now and then so some frames share a burst and some do not.
            if f.len() % 3 == 0 {
                sw.run();
            }
        }
        sw.run();
        let c = sw.counters();
        let port_rx_dropped: u64 = PORTS
            .iter()
            .map(|&p| sw.worker.ports().get(PortId(p)).unwrap().stats().rx_dropped)
            .sum();
        prop_assert_eq!(c.rx_packets.get() + port_rx_dropped, offered);
        let emitted: usize = sw.collect().values().map(Vec::len).sum();
        prop_assert_eq!(emitted as u64, c.tx_packets.get());
        sw.assert_conserved();
    }
}

/// Frames that mostly reuse a few addresses, so learning and forwarding interact.
fn chatty_frame() -> impl Strategy<Value = Vec<u8>> {
    let station = prop_oneof![(1u8..4).prop_map(mac), (60u8..64).prop_map(mac)];
    let dst = prop_oneof![1 => Just(BROADCAST), 4 => station.clone()];
    (dst, station, any::<u32>()).prop_map(|(dst, src, seq)| frame(dst, src, Some(100), seq, 64))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    /// Batching is invisible: a sequence of frames from the uplink leaves every port the
    /// same whether the worker takes it in one burst or one frame per pass.
    #[test]
    fn bursts_forward_like_single_frames(frames in proptest::collection::vec(chatty_frame(), 1..64)) {
        let mut one_by_one = MemSwitch::new(&topology(), &PORTS);
        for f in &frames {
            one_by_one.send(0, f);
            one_by_one.run();
        }
        let mut burst = MemSwitch::new(&topology(), &PORTS);
        for f in &frames {
            burst.send(0, f);
        }
        prop_assert_eq!(burst.run(), frames.len());
        prop_assert_eq!(burst.collect(), one_by_one.collect());
        prop_assert_eq!(burst.counters().drop_summary(), one_by_one.counters().drop_summary());
        burst.assert_conserved();
    }
}

/// The topology with security groups: port 2 (port security) allows TCP 80 and ICMP in
/// and UDP out, statefully; port 3 gets port security with a stateless group allowing
/// UDP both ways.
fn topology_with_groups() -> SnapshotBuilder {
    let mut b = topology();
    b.port_security(
        PortId(3),
        PortSecurity::new(
            &[mac(3)],
            &[Ipv4Source::new(mac(3), [198, 18, 1, 3].into(), 32)],
        )
        .with_ipv6(&[Ipv6Source::new(mac(3), ip6(3).into(), 128)]),
    );
    let rule = |proto, lo, hi, id| SgRule {
        proto,
        lo,
        hi,
        remote: SgRemote::Any,
        id,
    };
    let rule6 = |proto, lo, hi, id| SgRule::<u128> {
        proto,
        lo,
        hi,
        remote: SgRemote::Any,
        id,
    };
    let stateful = SgPolicy {
        ingress: RuleSet::build(&[rule(Some(6), 80, 80, 0), rule(Some(1), 0, u16::MAX, 1)]),
        egress: RuleSet::build(&[rule(Some(17), 0, u16::MAX, 2)]),
        ingress6: RuleSet::build(&[rule6(Some(6), 80, 80, 0), rule6(Some(58), 0, u16::MAX, 1)]),
        egress6: RuleSet::build(&[rule6(Some(17), 0, u16::MAX, 2)]),
        stateful: true,
        version: 1,
    };
    let stateless = SgPolicy {
        ingress: RuleSet::build(&[rule(Some(17), 0, u16::MAX, 3)]),
        egress: RuleSet::build(&[rule(Some(17), 0, u16::MAX, 3)]),
        ingress6: RuleSet::build(&[rule6(Some(17), 0, u16::MAX, 3)]),
        egress6: RuleSet::build(&[rule6(Some(17), 0, u16::MAX, 3)]),
        stateful: false,
        version: 2,
    };
    let names = (0..4)
        .map(|i| RuleName {
            group: "g".into(),
            rule: format!("r{i}"),
        })
        .collect();
    b.security_groups(SgTables::new(
        vec![stateful, stateless],
        &[(PortId(2), 0), (PortId(3), 1)],
        Vec::new(),
        names,
    ));
    b
}

/// IPv4 flows between the hosts of ports 1 to 3 (and strangers): TCP with any flags and
/// numbers, UDP, ICMP echo and errors quoting random bytes, fragments, truncations.
fn flow_frame() -> impl Strategy<Value = Vec<u8>> {
    let host = 1u8..5;
    (
        host.clone(),
        host,
        prop_oneof![Just(6u8), Just(17), Just(1)],
        prop_oneof![Just(80u16), Just(53), any::<u16>()],
        prop_oneof![Just(1000u16), any::<u16>()],
        any::<u8>(),
        proptest::collection::vec(any::<u8>(), 0..60),
        (any::<bool>(), 0usize..80),
    )
        .prop_map(
            |(s, d, proto, dport, sport, flags, body, (fragment, cut))| {
                let mut l4 = Vec::new();
                match proto {
                    1 => {
                        l4.extend_from_slice(&[[8, 0, 3, 11][usize::from(flags & 3)], 0, 0, 0]);
                        l4.extend_from_slice(&sport.to_be_bytes());
                        l4.extend_from_slice(&[0, 1]);
                    }
                    _ => {
                        l4.extend_from_slice(&sport.to_be_bytes());
                        l4.extend_from_slice(&dport.to_be_bytes());
                        if proto == 6 {
                            l4.extend_from_slice(&u32::from(dport).to_be_bytes());
                            l4.extend_from_slice(&u32::from(sport).to_be_bytes());
                            l4.extend_from_slice(&[0x50, flags & 0x17, 0xff, 0xff, 0, 0, 0, 0]);
                        } else {
                            l4.extend_from_slice(&[0, 8, 0, 0]);
                        }
                    }
                }
                l4.extend_from_slice(&body);
                let mut f = ipv4(
                    mac(d),
                    mac(s),
                    None,
                    [198, 18, 1, s],
                    [198, 18, 1, d],
                    64,
                    proto,
                    &l4,
                );
                if fragment {
                    // More fragments, or a later fragment.
                    f[20] = if flags & 1 == 0 { 0x20 } else { 0x00 };
                    f[21] = if flags & 1 == 0 { 0 } else { 8 };
                }
                if cut > 0 && cut < f.len() {
                    f.truncate(f.len() - cut);
                }
                f
            },
        )
}

/// An IPv6 address of host `n` in 2001:db8:1::/64.
fn ip6(n: u8) -> [u8; 16] {
    [0x20, 0x01, 0x0d, 0xb8, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, n]
}

/// IPv6 flows between the hosts of ports 1 to 3 (and strangers), from their global or
/// link-local addresses or `::`: TCP, UDP, ICMPv6 (echo, errors, neighbour discovery,
/// router advertisements) behind random chains of extension headers (fragments among
/// them, chains too long or cut), truncations.
fn flow6_frame() -> impl Strategy<Value = Vec<u8>> {
    let host = 1u8..5;
    (
        (host.clone(), host, 0u8..3),
        prop_oneof![Just(6u8), Just(17), Just(58)],
        prop_oneof![Just(80u16), Just(53), Just(546), any::<u16>()],
        prop_oneof![Just(1000u16), Just(547), any::<u16>()],
        any::<u8>(),
        proptest::collection::vec(prop_oneof![Just(0u8), Just(43), Just(44), Just(60)], 0..10),
        proptest::collection::vec(any::<u8>(), 0..40),
        0usize..80,
    )
        .prop_map(
            |((s, d, from), proto, dport, sport, flags, chain, body, cut)| {
                let mut l4 = Vec::new();
                match proto {
                    58 => {
                        let ty = [128, 129, 1, 3, 135, 136, 134, 143][usize::from(flags & 7)];
                        l4.extend_from_slice(&[ty, 0, 0, 0]);
                        l4.extend_from_slice(&sport.to_be_bytes());
                        l4.extend_from_slice(&[0, 1]);
                    }
                    _ => {
                        l4.extend_from_slice(&sport.to_be_bytes());
                        l4.extend_from_slice(&dport.to_be_bytes());
                        if proto == 6 {
                            l4.extend_from_slice(&u32::from(dport).to_be_bytes());
                            l4.extend_from_slice(&u32::from(sport).to_be_bytes());
                            l4.extend_from_slice(&[0x50, flags & 0x17, 0xff, 0xff, 0, 0, 0, 0]);
                        } else {
                            l4.extend_from_slice(&[0, 8, 0, 0]);
                        }
                    }
                }
                l4.extend_from_slice(&body);
                // The extension headers, each naming the next, the last the protocol.
                let mut payload = Vec::new();
                for (k, &h) in chain.iter().enumerate() {
                    let next = chain.get(k + 1).copied().unwrap_or(proto);
                    match h {
                        44 => {
                            let offset: u16 = if flags & 0x40 != 0 { 8 } else { 0 };
                            payload.push(next);
                            payload.push(0);
                            payload
                                .extend_from_slice(&(offset | u16::from(flags >> 7)).to_be_bytes());
                            payload.extend_from_slice(&u32::from(sport).to_be_bytes());
                        }
                        _ => payload.extend_from_slice(&[next, 0, 1, 4, 0, 0, 0, 0]),
                    }
                }
                payload.extend_from_slice(&l4);
                let src = match from {
                    0 => ip6(s),
                    1 => pollux_dataplane::wire::ipv6::link_local_from_mac(mac(s)).octets(),
                    _ => [0; 16],
                };
                let first = chain.first().copied().unwrap_or(proto);
                let mut f = ipv6_frame(mac(d), mac(s), src, ip6(d), first, &payload);
                if cut > 0 && cut < f.len() {
                    f.truncate(f.len() - cut);
                }
                f
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// With security groups (stateful and stateless, both directions, flooding), every
    /// frame is still accounted for exactly once and none leaks.
    #[test]
    fn every_frame_is_accounted_for_with_security_groups(
        inputs in proptest::collection::vec(
            (
                0usize..PORTS.len(),
                prop_oneof![3 => flow_frame(), 2 => flow6_frame(), 1 => any_frame()],
            ),
            1..120,
        ),
    ) {
        let mut sw = MemSwitch::new(&topology_with_groups(), &PORTS);
        let mut offered = 0u64;
        for (i, f) in &inputs {
            if sw.wires.get_mut(&PORTS[*i]).unwrap().send(f) {
                offered += 1;
            }
            if f.len() % 3 == 0 {
                sw.run();
            }
        }
        sw.run();
        let c = sw.counters();
        let port_rx_dropped: u64 = PORTS
            .iter()
            .map(|&p| sw.worker.ports().get(PortId(p)).unwrap().stats().rx_dropped)
            .sum();
        prop_assert_eq!(c.rx_packets.get() + port_rx_dropped, offered);
        let emitted: usize = sw.collect().values().map(Vec::len).sum();
        prop_assert_eq!(emitted as u64, c.tx_packets.get());
        sw.assert_conserved();
    }
}
