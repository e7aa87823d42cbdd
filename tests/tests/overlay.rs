//! VXLAN overlay networks on mem ports: encapsulation byte for byte, decapsulation into
//! the right network, drops of unknown VNIs and endpoints, head-end replication to the
//! flood list, the ARP responder, learning remote MACs, and two VNIs with one subnet.

use std::net::Ipv4Addr;

use pollux_dataplane::counters::{Stage, WorkerCounters};
use pollux_dataplane::drop::DropReason;
use pollux_dataplane::overlay::{vtep_mac, EndpointSpec};
use pollux_dataplane::port::PortId;
use pollux_dataplane::snapshot::{NetworkUid, PhysnetId, Segment, SnapshotBuilder};
use pollux_tests::frames::{self, arp, frame, internet_checksum, mac, BROADCAST};
use pollux_tests::harness::MemSwitch;

const UPLINK: u16 = 0;
const VM1: u16 = 1; // net A, 203.0.113.1
const VM2: u16 = 2; // net A, 203.0.113.2
const VM3: u16 = 3; // net B, 203.0.113.1, same MAC as VM1
const TUN_B: u16 = 10; // host B, 198.18.0.2: ports on A and B
const TUN_C: u16 = 11; // host C, 198.18.0.3: ports on A only

const NET_A: NetworkUid = NetworkUid(1);
const NET_B: NetworkUid = NetworkUid(2);
const VNI_A: u32 = 100;
const VNI_B: u32 = 0x00ab_cdef;

const LOCAL: [u8; 4] = [198, 18, 0, 1];
const HOST_B: [u8; 4] = [198, 18, 0, 2];
const HOST_C: [u8; 4] = [198, 18, 0, 3];
const HOST_B_MAC: [u8; 6] = [0x02, 0xbb, 0, 0, 0, 2];
const HOST_C_MAC: [u8; 6] = [0x02, 0xcc, 0, 0, 0, 3];

const REMOTE_A_B: [u8; 6] = [0x02, 0, 0, 0, 0, 5]; // on A, at host B, 203.0.113.5
const REMOTE_A_C: [u8; 6] = [0x02, 0, 0, 0, 0, 6]; // on A, at host C, 203.0.113.6
const REMOTE_B_B: [u8; 6] = [0x02, 0, 0, 0, 0, 7]; // on B, at host B, 203.0.113.5

fn ip(last: u8) -> [u8; 4] {
    [203, 0, 113, last]
}

fn p(id: u16) -> PortId {
    PortId(id)
}

fn topology() -> SnapshotBuilder {
    let mut b = SnapshotBuilder::new();
    b.network(NET_A, Segment::Vxlan { vni: VNI_A })
        .network(NET_B, Segment::Vxlan { vni: VNI_B })
        .uplink(p(UPLINK), PhysnetId(0))
        .tunnel_endpoint(EndpointSpec {
            uplink: p(UPLINK),
            local_ip: Ipv4Addr::from(LOCAL),
        })
        .access_port(p(VM1), NET_A, &[mac(1)])
        .access_port(p(VM2), NET_A, &[mac(2)])
        .access_port(p(VM3), NET_B, &[mac(1)])
        .tunnel_port(p(TUN_B), Ipv4Addr::from(HOST_B))
        .tunnel_port(p(TUN_C), Ipv4Addr::from(HOST_C))
        .remote_port(NET_A, p(TUN_B), &[REMOTE_A_B])
        .remote_port(NET_A, p(TUN_C), &[REMOTE_A_C])
        .remote_port(NET_B, p(TUN_B), &[REMOTE_B_B])
        .arp_entry(NET_A, Ipv4Addr::from(ip(1)), mac(1))
        .arp_entry(NET_A, Ipv4Addr::from(ip(2)), mac(2))
        .arp_entry(NET_A, Ipv4Addr::from(ip(5)), REMOTE_A_B)
        .arp_entry(NET_A, Ipv4Addr::from(ip(6)), REMOTE_A_C)
        .arp_entry(NET_B, Ipv4Addr::from(ip(1)), mac(1))
        .arp_entry(NET_B, Ipv4Addr::from(ip(5)), REMOTE_B_B);
    b
}

/// The switch, with the ARP requests it sends for the remote endpoints when the
/// configuration arrives already taken off the uplink.
fn switch() -> MemSwitch {
    let mut sw = MemSwitch::new(&topology(), &[UPLINK, VM1, VM2, VM3]);
    sw.run();
    sw.collect();
    sw
}

/// The ARP request the endpoint sends for `ip`.
fn request_for(ip: [u8; 4]) -> Vec<u8> {
    arp(1, BROADCAST, vtep(), LOCAL, [0; 6], ip)[..42].to_vec()
}

#[test]
fn remote_endpoints_are_asked_for_when_the_configuration_arrives() {
    let mut sw = MemSwitch::new(&topology(), &[UPLINK, VM1, VM2, VM3]);
    sw.run();
    let out = sw.collect();
    assert_eq!(out.keys().copied().collect::<Vec<_>>(), vec![UPLINK]);
    let mut asked = out[&UPLINK].clone();
    asked.sort();
    assert_eq!(asked, vec![request_for(HOST_B), request_for(HOST_C)]);
    // Not again while the question is open, even seconds later.
    sw.now_ns += 5_000_000_000;
    sw.run();
    assert!(sw.collect().is_empty());
    // B answers: frames to it are encapsulated from the first one.
    sw.exchange(UPLINK, &arp(2, vtep(), HOST_B_MAC, HOST_B, vtep(), LOCAL));
    let out = sw.exchange(VM1, &frame(REMOTE_A_B, mac(1), None, 1, 64));
    check_outer(&out[&UPLINK][0], HOST_B_MAC, HOST_B, VNI_A);
    assert_eq!(sw.counters().originated.get(), 2);
    sw.assert_conserved();
}

fn vtep() -> [u8; 6] {
    vtep_mac(Ipv4Addr::from(LOCAL))
}

/// A VXLAN packet from `src_ip` (MAC `src_mac`) to the local endpoint carrying `inner`.
fn vxlan(src_mac: [u8; 6], src_ip: [u8; 4], vni: u32, inner: &[u8]) -> Vec<u8> {
    frames::vxlan(vtep(), src_mac, src_ip, LOCAL, vni, inner)
}

/// Checks the outer headers of an encapsulated frame towards `dst_ip` at `dst_mac` and
/// returns the inner frame.
fn check_outer(f: &[u8], dst_mac: [u8; 6], dst_ip: [u8; 4], vni: u32) -> Vec<u8> {
    assert!(f.len() >= 50, "{} bytes", f.len());
    assert_eq!(&f[0..6], &dst_mac, "outer destination MAC");
    assert_eq!(&f[6..12], &vtep(), "outer source MAC");
    assert_eq!(&f[12..14], &[0x08, 0x00]);
    let ip = &f[14..34];
    assert_eq!(ip[0], 0x45);
    assert_eq!(
        u16::from_be_bytes([ip[2], ip[3]]) as usize,
        f.len() - 14,
        "total length"
    );
    assert_eq!(&ip[6..8], &[0x40, 0x00], "DF set, no fragment");
    assert_eq!(ip[8], 64, "TTL");
    assert_eq!(ip[9], 17, "UDP");
    assert_eq!(internet_checksum(ip), 0, "IPv4 header checksum");
    assert_eq!(&ip[12..16], &LOCAL);
    assert_eq!(&ip[16..20], &dst_ip);
    let udp = &f[34..42];
    let sport = u16::from_be_bytes([udp[0], udp[1]]);
    assert!(
        sport >= 49152,
        "source port {sport} from the flow hash range"
    );
    assert_eq!(u16::from_be_bytes([udp[2], udp[3]]), 4789);
    assert_eq!(u16::from_be_bytes([udp[4], udp[5]]) as usize, f.len() - 34);
    assert_eq!(&udp[6..8], &[0, 0], "UDP checksum zero");
    let mut vx = [0u8; 8];
    vx[0] = 0x08;
    vx[4..8].copy_from_slice(&(vni << 8).to_be_bytes());
    assert_eq!(&f[42..50], &vx, "VXLAN header");
    f[50..].to_vec()
}

/// Teaches the switch host B's (and C's) underlay MAC the way a kernel endpoint would:
/// an ARP request for `local_ip`, which is answered from the endpoint's MAC.
fn resolve_hosts(sw: &mut MemSwitch) {
    for (hmac, hip) in [(HOST_B_MAC, HOST_B), (HOST_C_MAC, HOST_C)] {
        let out = sw.exchange(UPLINK, &arp(1, BROADCAST, hmac, hip, [0; 6], LOCAL));
        let reply = &out[&UPLINK][0];
        assert_eq!(reply, &arp(2, hmac, vtep(), LOCAL, hmac, hip));
        assert_eq!(out.len(), 1, "only the reply: {out:?}");
    }
}

fn dropped(c: &WorkerCounters, stage: Stage, reason: DropReason) -> u64 {
    c.stage_dropped(stage, reason)
}

#[test]
fn unicast_to_a_remote_port_is_encapsulated_exactly() {
    let mut sw = switch();
    let inner = frame(REMOTE_A_B, mac(1), None, 7, 100);
    // Host B has not answered yet: the frame is dropped (B was asked for already, so
    // not again within the second).
    let out = sw.exchange(VM1, &inner);
    let c = sw.counters();
    assert_eq!(
        dropped(&c, Stage::TunnelEncap, DropReason::TunnelUnresolved),
        1
    );
    assert!(out.is_empty(), "{out:?}");
    // A second later the frame's need asks again.
    sw.now_ns += 1_000_000_000;
    let out = sw.exchange(VM1, &inner);
    assert_eq!(out[&UPLINK], vec![request_for(HOST_B)]);
    // B answers; its reply is taken by the endpoint.
    let out = sw.exchange(UPLINK, &arp(2, vtep(), HOST_B_MAC, HOST_B, vtep(), LOCAL));
    assert!(out.is_empty(), "{out:?}");
    let out = sw.exchange(VM1, &inner);
    assert_eq!(out.keys().copied().collect::<Vec<_>>(), vec![UPLINK]);
    let got = check_outer(&out[&UPLINK][0], HOST_B_MAC, HOST_B, VNI_A);
    assert_eq!(got, inner, "the inner frame is carried unchanged");
    assert_eq!(c.vxlan_encapsulated.get(), 1);
    // One flow, one source port; another flow may take another.
    let again = sw.exchange(VM1, &inner);
    assert_eq!(again[&UPLINK][0][34..36], out[&UPLINK][0][34..36]);
    sw.assert_conserved();
}

#[test]
fn decapsulated_frames_reach_the_port_of_their_network() {
    let mut sw = switch();
    resolve_hosts(&mut sw);
    // Same inner frame, two VNIs: VM1 (A) and VM3 (B) share a MAC and an address.
    let inner_a = frame(mac(1), REMOTE_A_B, None, 1, 80);
    let out = sw.exchange(UPLINK, &vxlan(HOST_B_MAC, HOST_B, VNI_A, &inner_a));
    assert_eq!(out.keys().copied().collect::<Vec<_>>(), vec![VM1]);
    assert_eq!(out[&VM1], vec![inner_a.clone()]);
    let inner_b = frame(mac(1), REMOTE_B_B, None, 2, 80);
    let out = sw.exchange(UPLINK, &vxlan(HOST_B_MAC, HOST_B, VNI_B, &inner_b));
    assert_eq!(out.keys().copied().collect::<Vec<_>>(), vec![VM3]);
    assert_eq!(out[&VM3], vec![inner_b]);
    // Ethernet padding after the UDP datagram is not part of the inner frame.
    let mut padded = vxlan(HOST_B_MAC, HOST_B, VNI_A, &inner_a[..60]);
    padded.extend_from_slice(&[0; 6]);
    let out = sw.exchange(UPLINK, &padded);
    assert_eq!(out[&VM1], vec![inner_a[..60].to_vec()]);
    assert_eq!(sw.counters().vxlan_decapsulated.get(), 3);
    sw.assert_conserved();
}

#[test]
fn unknown_vni_and_endpoint_are_counted_drops() {
    let mut sw = switch();
    let inner = frame(mac(1), REMOTE_A_B, None, 1, 80);
    assert!(sw
        .exchange(UPLINK, &vxlan(HOST_B_MAC, HOST_B, 4242, &inner))
        .is_empty());
    // Not a host of the configuration.
    assert!(sw
        .exchange(UPLINK, &vxlan(HOST_B_MAC, [198, 18, 0, 99], VNI_A, &inner))
        .is_empty());
    // Host C is a peer of A but not of B (it has no port there).
    assert!(sw
        .exchange(UPLINK, &vxlan(HOST_C_MAC, HOST_C, VNI_B, &inner))
        .is_empty());
    // Not VXLAN: UDP to another port of the endpoint.
    let mut other = vxlan(HOST_B_MAC, HOST_B, VNI_A, &inner);
    other[36..38].copy_from_slice(&4790u16.to_be_bytes());
    assert!(sw.exchange(UPLINK, &other).is_empty());
    // The VNI flag clear.
    let mut no_flag = vxlan(HOST_B_MAC, HOST_B, VNI_A, &inner);
    no_flag[42] = 0;
    assert!(sw.exchange(UPLINK, &no_flag).is_empty());
    let c = sw.counters();
    assert_eq!(dropped(&c, Stage::TunnelDecap, DropReason::UnknownVni), 1);
    assert_eq!(
        dropped(&c, Stage::TunnelDecap, DropReason::UnknownTunnelEndpoint),
        2
    );
    assert_eq!(dropped(&c, Stage::TunnelDecap, DropReason::NotVxlan), 1);
    assert_eq!(dropped(&c, Stage::TunnelDecap, DropReason::BadVxlan), 1);
    let charged: Vec<_> = c
        .port_drops
        .iter()
        .filter(|&(_, stage, reason, _)| {
            stage == Stage::TunnelDecap && reason == DropReason::UnknownVni
        })
        .map(|(port, _, _, n)| (port, n))
        .collect();
    assert_eq!(charged, vec![(p(UPLINK), 1)], "charged to the uplink");
    sw.assert_conserved();
}

#[test]
fn broadcast_is_replicated_to_the_flood_list_and_local_ports() {
    let mut sw = switch();
    resolve_hosts(&mut sw);
    let bcast = frame(BROADCAST, mac(1), None, 3, 64);
    let out = sw.exchange(VM1, &bcast);
    assert_eq!(
        out.keys().copied().collect::<Vec<_>>(),
        vec![UPLINK, VM2],
        "{out:?}"
    );
    assert_eq!(out[&VM2], vec![bcast.clone()]);
    let mut to: Vec<[u8; 4]> = Vec::new();
    for f in &out[&UPLINK] {
        let dst: [u8; 4] = f[30..34].try_into().unwrap();
        let (dmac, vni) = if dst == HOST_B {
            (HOST_B_MAC, VNI_A)
        } else {
            (HOST_C_MAC, VNI_A)
        };
        assert_eq!(check_outer(f, dmac, dst, vni), bcast);
        to.push(dst);
    }
    to.sort();
    assert_eq!(to, vec![HOST_B, HOST_C], "one copy per host of network A");
    // Network B: no other local port, one host: the original itself goes to host B.
    let out = sw.exchange(VM3, &frame(BROADCAST, mac(1), None, 4, 64));
    assert_eq!(out.keys().copied().collect::<Vec<_>>(), vec![UPLINK]);
    assert_eq!(out[&UPLINK].len(), 1);
    check_outer(&out[&UPLINK][0], HOST_B_MAC, HOST_B, VNI_B);
    // A broadcast from the overlay floods to local ports only, never back to a tunnel.
    let from_b = frame(BROADCAST, REMOTE_A_B, None, 5, 64);
    let out = sw.exchange(UPLINK, &vxlan(HOST_B_MAC, HOST_B, VNI_A, &from_b));
    assert_eq!(out.keys().copied().collect::<Vec<_>>(), vec![VM1, VM2]);
    sw.assert_conserved();
}

#[test]
fn arp_responder_answers_for_known_ports_on_the_host() {
    let mut sw = switch();
    resolve_hosts(&mut sw);
    for (target, owner) in [(5, REMOTE_A_B), (6, REMOTE_A_C), (2, mac(2))] {
        let req = arp(1, BROADCAST, mac(1), ip(1), [0; 6], ip(target));
        let out = sw.exchange(VM1, &req);
        assert_eq!(
            out.keys().copied().collect::<Vec<_>>(),
            vec![VM1],
            "{out:?}"
        );
        assert_eq!(
            out[&VM1],
            vec![arp(2, mac(1), owner, ip(target), mac(1), ip(1))]
        );
    }
    // Network B answers from its own table: .5 there is REMOTE_B_B.
    let out = sw.exchange(VM3, &arp(1, BROADCAST, mac(1), ip(1), [0; 6], ip(5)));
    assert_eq!(
        out[&VM3],
        vec![arp(2, mac(1), REMOTE_B_B, ip(5), mac(1), ip(1))]
    );
    let c = sw.counters();
    assert_eq!(c.arp_responder_replies.get(), 4);
    assert_eq!(c.vxlan_encapsulated.get(), 0, "no ARP crossed the underlay");
    // An address no port has floods as usual, over the overlay too.
    let out = sw.exchange(VM1, &arp(1, BROADCAST, mac(1), ip(1), [0; 6], ip(99)));
    assert_eq!(out.keys().copied().collect::<Vec<_>>(), vec![UPLINK, VM2]);
    assert_eq!(out[&UPLINK].len(), 2);
    // Duplicate address detection for its own address gets no answer from the host.
    let out = sw.exchange(VM1, &arp(1, BROADCAST, mac(1), [0; 4], [0; 6], ip(1)));
    assert_eq!(out.keys().copied().collect::<Vec<_>>(), vec![UPLINK, VM2]);
    assert_eq!(c.arp_responder_replies.get(), 4);
    sw.assert_conserved();
}

#[test]
fn remote_macs_without_l2pop_are_learned_from_decapsulated_frames() {
    let mut sw = switch();
    resolve_hosts(&mut sw);
    let stranger = [0x02, 0, 0, 0, 0, 0x99];
    // From host C, a MAC no port has: flooded locally and learned on C's tunnel.
    let out = sw.exchange(
        UPLINK,
        &vxlan(
            HOST_C_MAC,
            HOST_C,
            VNI_A,
            &frame(mac(2), stranger, None, 1, 64),
        ),
    );
    assert_eq!(out.keys().copied().collect::<Vec<_>>(), vec![VM2]);
    let reply = frame(stranger, mac(2), None, 2, 64);
    let out = sw.exchange(VM2, &reply);
    assert_eq!(out.keys().copied().collect::<Vec<_>>(), vec![UPLINK]);
    assert_eq!(
        check_outer(&out[&UPLINK][0], HOST_C_MAC, HOST_C, VNI_A),
        reply
    );
    assert_eq!(sw.counters().macs_learned.get(), 1);
    // The same MAC on network B is not known there: that frame floods within B.
    let out = sw.exchange(VM3, &frame(stranger, mac(1), None, 3, 64));
    assert_eq!(out.keys().copied().collect::<Vec<_>>(), vec![UPLINK]);
    check_outer(&out[&UPLINK][0], HOST_B_MAC, HOST_B, VNI_B);
    sw.assert_conserved();
}

#[test]
fn malformed_outer_headers_are_counted_drops() {
    let mut sw = switch();
    resolve_hosts(&mut sw);
    let good = vxlan(
        HOST_B_MAC,
        HOST_B,
        VNI_A,
        &frame(mac(1), REMOTE_A_B, None, 1, 64),
    );
    let mut sent = 0;
    // Every truncation of the outer headers and of the inner Ethernet header.
    for len in 14..good.len().min(50 + 14) {
        // The IPv4 and UDP lengths still say the whole packet.
        sw.send(UPLINK, &good[..len]);
        sent += 1;
    }
    // Lengths that lie, a fragment, an inner tag, an inner multicast source.
    let mut lies = Vec::new();
    let mut f = good.clone();
    f[16..18].copy_from_slice(&2000u16.to_be_bytes());
    lies.push(f);
    let mut f = good.clone();
    f[38..40].copy_from_slice(&4u16.to_be_bytes());
    lies.push(f);
    let mut f = good.clone();
    f[20..22].copy_from_slice(&0x2000u16.to_be_bytes());
    lies.push(f);
    let mut f = good.clone();
    f[14] = 0x4f;
    lies.push(f);
    let mut f = good.clone();
    f[14] = 0x65;
    lies.push(f);
    lies.push(vxlan(
        HOST_B_MAC,
        HOST_B,
        VNI_A,
        &frame(mac(1), REMOTE_A_B, Some(5), 1, 64),
    ));
    lies.push(vxlan(
        HOST_B_MAC,
        HOST_B,
        VNI_A,
        &frame(mac(1), [0x01, 0, 0x5e, 0, 0, 1], None, 1, 64),
    ));
    for f in &lies {
        sw.send(UPLINK, f);
        sent += 1;
    }
    sw.run();
    assert!(sw.collect().is_empty());
    let c = sw.counters();
    let decap_drops: u64 = DropReason::ALL
        .iter()
        .map(|&r| c.stage_dropped(Stage::TunnelDecap, r))
        .sum();
    let classify_drops: u64 = DropReason::ALL
        .iter()
        .map(|&r| c.stage_dropped(Stage::Classify, r))
        .sum();
    assert_eq!(decap_drops + classify_drops, sent);
    assert!(decap_drops >= lies.len() as u64);
    sw.assert_conserved();
}

#[test]
fn underlay_macs_expire_and_are_asked_for_again() {
    let mut sw = switch();
    resolve_hosts(&mut sw);
    let inner = frame(REMOTE_A_B, mac(1), None, 1, 64);
    let out = sw.exchange(VM1, &inner);
    check_outer(&out[&UPLINK][0], HOST_B_MAC, HOST_B, VNI_A);
    // Five minutes and more of silence from host B.
    sw.now_ns += 301 * 1_000_000_000;
    sw.run();
    let out = sw.exchange(VM1, &inner);
    assert_eq!(
        out[&UPLINK],
        vec![request_for(HOST_B)],
        "asked again, the frame dropped"
    );
    assert_eq!(
        sw.counters()
            .stage_dropped(Stage::TunnelEncap, DropReason::TunnelUnresolved),
        1
    );
    sw.assert_conserved();
}

#[test]
fn a_host_never_relays_between_two_remote_hosts() {
    let mut sw = switch();
    resolve_hosts(&mut sw);
    // From host B, to a port of host C: host B should have sent it to C itself.
    let out = sw.exchange(
        UPLINK,
        &vxlan(
            HOST_B_MAC,
            HOST_B,
            VNI_A,
            &frame(REMOTE_A_C, REMOTE_A_B, None, 1, 64),
        ),
    );
    assert!(out.is_empty(), "{out:?}");
    assert_eq!(
        sw.counters()
            .stage_dropped(Stage::L2, DropReason::TunnelToTunnel),
        1
    );
    // To a MAC of host B itself: a hairpin.
    let out = sw.exchange(
        UPLINK,
        &vxlan(
            HOST_B_MAC,
            HOST_B,
            VNI_A,
            &frame(REMOTE_A_B, [2, 0, 0, 0, 0, 0x42], None, 1, 64),
        ),
    );
    assert!(out.is_empty(), "{out:?}");
    assert_eq!(
        sw.counters().stage_dropped(Stage::L2, DropReason::Hairpin),
        1
    );
    sw.assert_conserved();
}
