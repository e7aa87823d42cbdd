//! The router's forwarding cache (`dataplane/src/l3/fast.rs`) against the full path.
//!
//! Within a burst, the rest of a run of one destination (or one NAT flow) is forwarded
//! from what its first packet worked out. A burst of one packet never uses the cache, so
//! the same traffic offered one packet per burst is the full path's answer: the property
//! below offers random bursts of routed, translated and malformed packets both ways and
//! requires the same frames on every port, the same counters and drops.

use std::collections::BTreeMap;

use pollux_dataplane::conntrack::ConnConfig;
use pollux_tests::frames::{internet_checksum, ipv4, tcp, transport_checksum, udp};
use pollux_tests::harness::MemSwitch;
use pollux_tests::router_lab::*;
use proptest::prelude::*;

fn switch() -> MemSwitch {
    switch_of(&topology(1500, Vec::new()), ConnConfig::with_capacity(1024))
}

/// A packet of the test's traffic.
#[derive(Clone, Copy, Debug)]
enum Flow {
    /// VM1 to VM2 across the router, UDP with source port `0`.
    Routed(u16),
    /// VM1 to VM2, TCP.
    RoutedTcp,
    /// VM1 to VM3, on VM1's own network through the router's MAC (a second destination).
    SameNetwork,
    /// VM1 to the internet through SNAT, UDP from port `0`.
    Snat(u16),
    /// VM1 to the internet through SNAT, TCP.
    SnatTcp,
    /// The internet's UDP reply to a SNAT session's port `0`, on the uplink.
    Reply(u16),
    /// The internet to VM2's floating IP, UDP, on the uplink.
    ToFloating,
}

impl Flow {
    fn arrives_on_uplink(self) -> bool {
        matches!(self, Flow::Reply(_) | Flow::ToFloating)
    }
}

/// What is done to a packet after it is built.
#[derive(Clone, Copy, Debug)]
enum Mutation {
    None,
    /// The IPv4 header checksum made wrong.
    BadChecksum,
    /// One option word (a NOP-padded header of 24 bytes).
    Options,
    /// More fragments set: a first fragment.
    FirstFragment,
    /// A fragment offset: a later fragment.
    LaterFragment,
    /// Two bytes of Ethernet padding after the datagram.
    Padded,
    /// A total length beyond the frame.
    Truncated,
    /// The UDP checksum left out (zero).
    NoUdpChecksum,
}

fn flow() -> impl Strategy<Value = Flow> {
    prop_oneof![
        (40000u16..40002).prop_map(Flow::Routed),
        Just(Flow::RoutedTcp),
        Just(Flow::SameNetwork),
        (40000u16..40002).prop_map(Flow::Snat),
        Just(Flow::SnatTcp),
        (40000u16..40002).prop_map(Flow::Reply),
        Just(Flow::ToFloating),
    ]
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        6 => Just(Mutation::None),
        1 => Just(Mutation::BadChecksum),
        1 => Just(Mutation::Options),
        1 => Just(Mutation::FirstFragment),
        1 => Just(Mutation::LaterFragment),
        1 => Just(Mutation::Padded),
        1 => Just(Mutation::Truncated),
        1 => Just(Mutation::NoUdpChecksum),
    ]
}

fn ttl() -> impl Strategy<Value = u8> {
    prop_oneof![8 => Just(64u8), 1 => Just(0u8), 1 => Just(1u8), 1 => Just(2u8)]
}

/// The frame of one packet, and the port it is offered on.
fn frame(flow: Flow, ttl: u8, mutation: Mutation, seq: u32) -> (u16, Vec<u8>) {
    let data = seq.to_be_bytes();
    let (port, mac, vid, src, dst, proto, l4) = match flow {
        Flow::Routed(sport) => (
            VM1,
            VM1_MAC,
            None,
            VM1_IP,
            VM2_IP,
            17,
            udp(VM1_IP, VM2_IP, sport, 7, &data),
        ),
        Flow::RoutedTcp => (
            VM1,
            VM1_MAC,
            None,
            VM1_IP,
            VM2_IP,
            6,
            tcp(VM1_IP, VM2_IP, 40100, 80, seq, 1, 0x10, 512, &data),
        ),
        Flow::SameNetwork => (
            VM1,
            VM1_MAC,
            None,
            VM1_IP,
            VM3_IP,
            17,
            udp(VM1_IP, VM3_IP, 40200, 7, &data),
        ),
        Flow::Snat(sport) => (
            VM1,
            VM1_MAC,
            None,
            VM1_IP,
            INTERNET,
            17,
            udp(VM1_IP, INTERNET, sport, 53, &data),
        ),
        Flow::SnatTcp => (
            VM1,
            VM1_MAC,
            None,
            VM1_IP,
            INTERNET,
            6,
            tcp(VM1_IP, INTERNET, 40300, 443, seq, 1, 0x18, 512, &data),
        ),
        Flow::Reply(dport) => (
            UPLINK,
            UPSTREAM_MAC,
            Some(EXT_VID),
            INTERNET,
            ROUTER_EXT,
            17,
            udp(INTERNET, ROUTER_EXT, 53, dport, &data),
        ),
        Flow::ToFloating => (
            UPLINK,
            UPSTREAM_MAC,
            Some(EXT_VID),
            INTERNET,
            VM2_FIP,
            17,
            udp(INTERNET, VM2_FIP, 5000, 7, &data),
        ),
    };
    let mut l4 = l4;
    if let (Mutation::NoUdpChecksum, 17) = (mutation, proto) {
        l4[6] = 0;
        l4[7] = 0;
    }
    let mut f = ipv4(ROUTER_MAC, mac, vid, src, dst, ttl, proto, &l4);
    let l3 = if vid.is_some() { 18 } else { 14 };
    let fix_checksum = |f: &mut Vec<u8>| {
        let ihl = usize::from(f[l3] & 0x0f) * 4;
        f[l3 + 10] = 0;
        f[l3 + 11] = 0;
        let c = internet_checksum(&f[l3..l3 + ihl]);
        f[l3 + 10..l3 + 12].copy_from_slice(&c.to_be_bytes());
    };
    match mutation {
        Mutation::None | Mutation::NoUdpChecksum => {}
        Mutation::BadChecksum => f[l3 + 10] ^= 0x40,
        Mutation::Options => {
            f.splice(l3 + 20..l3 + 20, [1, 1, 1, 0]);
            f[l3] = 0x46;
            let total = u16::from_be_bytes([f[l3 + 2], f[l3 + 3]]) + 4;
            f[l3 + 2..l3 + 4].copy_from_slice(&total.to_be_bytes());
            fix_checksum(&mut f);
        }
        Mutation::FirstFragment => {
            f[l3 + 6] |= 0x20;
            fix_checksum(&mut f);
        }
        Mutation::LaterFragment => {
            f[l3 + 7] = 4;
            fix_checksum(&mut f);
        }
        Mutation::Padded => f.extend_from_slice(&[0, 0]),
        Mutation::Truncated => {
            let total = u16::from_be_bytes([f[l3 + 2], f[l3 + 3]]) + 8;
            f[l3 + 2..l3 + 4].copy_from_slice(&total.to_be_bytes());
            fix_checksum(&mut f);
        }
    }
    (port, f)
}

/// Every port's frames, sorted (frames the router originates, such as ICMP errors, leave
/// after the burst that caused them, so their place among the forwarded frames depends on
/// how the traffic was cut into bursts; the forwarded frames' own order is checked by the
/// deterministic tests).
type Seen = BTreeMap<u16, Vec<Vec<u8>>>;

fn add(seen: &mut Seen, out: Seen) {
    for (port, frames) in out {
        seen.entry(port).or_default().extend(frames);
    }
}

fn sorted(mut seen: Seen) -> Seen {
    for frames in seen.values_mut() {
        frames.sort();
    }
    seen
}

type Burst = Vec<(Flow, u8, Mutation)>;

fn bursts() -> impl Strategy<Value = Vec<(bool, Burst)>> {
    prop::collection::vec(
        (
            any::<bool>(),
            prop::collection::vec((flow(), ttl(), mutation()), 1..10),
        ),
        1..12,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn bursts_are_forwarded_as_packets_one_at_a_time(bursts in bursts()) {
        let (mut whole, mut single) = (switch(), switch());
        let (mut seen_whole, mut seen_single) = (Seen::new(), Seen::new());
        let mut seq = 0u32;
        for (from_uplink, burst) in bursts {
            // One burst comes from one port: keep the packets of the side drawn.
            let packets: Vec<(u16, Vec<u8>)> = burst
                .into_iter()
                .filter(|(f, _, _)| f.arrives_on_uplink() == from_uplink)
                .map(|(f, ttl, m)| {
                    seq += 1;
                    frame(f, ttl, m, seq)
                })
                .collect();
            for (port, f) in &packets {
                whole.send(*port, f);
            }
            whole.run();
            add(&mut seen_whole, whole.collect());
            for (port, f) in &packets {
                add(&mut seen_single, single.exchange(*port, f));
            }
        }
        prop_assert_eq!(sorted(seen_whole), sorted(seen_single));
        let (a, b) = (whole.counters(), single.counters());
        prop_assert_eq!(a.drop_summary(), b.drop_summary());
        prop_assert_eq!(a.tx_packets.get(), b.tx_packets.get());
        prop_assert_eq!(a.icmp_errors.get(), b.icmp_errors.get());
        prop_assert_eq!(b.route_cache_hits.get(), 0, "a burst of one never uses the cache");
        whole.assert_conserved();
        single.assert_conserved();
    }
}

/// Checks an untagged routed frame's checksums (IPv4 header; UDP or TCP over the
/// pseudo-header) and returns its TTL.
fn checked_ttl(f: &[u8]) -> u8 {
    let h = &f[14..34];
    assert_eq!(internet_checksum(h), 0, "IPv4 header checksum");
    let total = usize::from(u16::from_be_bytes([h[2], h[3]]));
    let l4 = &f[34..14 + total];
    let src: [u8; 4] = h[12..16].try_into().unwrap();
    let dst: [u8; 4] = h[16..20].try_into().unwrap();
    assert_eq!(transport_checksum(src, dst, h[9], l4), 0, "L4 checksum");
    h[8]
}

#[test]
fn a_run_to_one_destination_is_forwarded_from_the_cache_in_order() {
    let mut sw = switch();
    for seq in 0..32 {
        sw.send(VM1, &frame(Flow::Routed(40000), 64, Mutation::None, seq).1);
    }
    sw.run();
    let out = sw.collect();
    let frames = &out[&VM2];
    assert_eq!(frames.len(), 32);
    for (seq, f) in frames.iter().enumerate() {
        assert_eq!(&f[..6], &VM2_MAC);
        assert_eq!(&f[6..12], &ROUTER_MAC);
        assert_eq!(checked_ttl(f), 63);
        assert_eq!(&f[42..46], &(seq as u32).to_be_bytes(), "order kept");
    }
    assert_eq!(sw.counters().route_cache_hits.get(), 31);
    sw.assert_conserved();
}

#[test]
fn a_run_of_one_translated_flow_is_forwarded_from_the_cache_both_ways() {
    let mut sw = switch();
    // The session is made by the first packet, which the cache does not take (a new
    // source NAT); the second is the first the session translates, and the rest of the
    // run follows it from the cache.
    for seq in 0..16 {
        sw.send(VM1, &frame(Flow::SnatTcp, 64, Mutation::None, seq).1);
    }
    sw.run();
    let out = sw.collect();
    let frames = &out[&UPLINK];
    assert_eq!(frames.len(), 16);
    for (seq, f) in frames.iter().enumerate() {
        let f = [&f[..12], &f[16..]].concat();
        assert_eq!(checked_ttl(&f), 63);
        assert_eq!(
            &f[26..30],
            &ROUTER_EXT,
            "translated to the gateway's address"
        );
        assert_eq!(
            &f[38..42],
            &(seq as u32).to_be_bytes(),
            "sequence numbers in order"
        );
    }
    assert_eq!(sw.counters().route_cache_hits.get(), 14);
    for seq in 0..16 {
        sw.send(
            UPLINK,
            &frame(Flow::Reply(40000), 64, Mutation::None, seq).1,
        );
    }
    // No UDP session for the replies' port yet: refused alike, none from the cache.
    sw.run();
    sw.collect();
    assert_eq!(sw.counters().route_cache_hits.get(), 14);
    sw.send(VM1, &frame(Flow::Snat(40000), 64, Mutation::None, 99).1);
    sw.run();
    sw.collect();
    for seq in 0..16 {
        sw.send(
            UPLINK,
            &frame(Flow::Reply(40000), 64, Mutation::None, seq).1,
        );
    }
    sw.run();
    let out = sw.collect();
    let frames = &out[&VM1];
    assert_eq!(frames.len(), 16);
    for f in frames {
        assert_eq!(checked_ttl(f), 63);
        assert_eq!(&f[30..34], &VM1_IP, "translated back");
        assert_eq!(&f[36..38], &40000u16.to_be_bytes());
    }
    assert_eq!(sw.counters().route_cache_hits.get(), 14 + 15);
    sw.assert_conserved();
}
