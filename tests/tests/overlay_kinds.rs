//! Geneve and GRE overlay networks on mem ports, next to a VXLAN one with the same
//! identifier: outer headers byte for byte, decapsulation into the network of the right
//! kind, options, checksums and sequence numbers on receive, every malformed or refused
//! packet a counted drop with its reason, head-end replication and the ARP responder.

use std::net::Ipv4Addr;

use pollux_dataplane::counters::{Stage, WorkerCounters};
use pollux_dataplane::drop::DropReason;
use pollux_dataplane::overlay::{vtep_mac, EndpointSpec};
use pollux_dataplane::port::PortId;
use pollux_dataplane::snapshot::{NetworkUid, PhysnetId, Segment, SnapshotBuilder};
use pollux_tests::frames::{self, arp, frame, internet_checksum, mac, BROADCAST};
use pollux_tests::harness::MemSwitch;

const UPLINK: u16 = 0;
const VM_G: u16 = 1; // Geneve network, 203.0.113.1
const VM_R: u16 = 2; // GRE network, 203.0.113.1
const VM_X: u16 = 3; // VXLAN network, 203.0.113.1
const TUN_B: u16 = 10; // host B: ports on all three networks
const TUN_C: u16 = 11; // host C: a port on the Geneve network only

const NET_G: NetworkUid = NetworkUid(1);
const NET_R: NetworkUid = NetworkUid(2);
const NET_X: NetworkUid = NetworkUid(3);
/// One number for the three networks: a VNI of Geneve, a key of GRE, a VNI of VXLAN.
const ID: u32 = 100;

const LOCAL: [u8; 4] = [198, 18, 0, 1];
const HOST_B: [u8; 4] = [198, 18, 0, 2];
const HOST_C: [u8; 4] = [198, 18, 0, 3];
const HOST_B_MAC: [u8; 6] = [0x02, 0xbb, 0, 0, 0, 2];
const HOST_C_MAC: [u8; 6] = [0x02, 0xcc, 0, 0, 0, 3];

const REMOTE_G_B: [u8; 6] = [0x02, 0, 0, 0, 0, 5]; // Geneve, host B, 203.0.113.5
const REMOTE_G_C: [u8; 6] = [0x02, 0, 0, 0, 0, 6]; // Geneve, host C, 203.0.113.6
const REMOTE_R_B: [u8; 6] = [0x02, 0, 0, 0, 0, 7]; // GRE, host B, 203.0.113.5
const REMOTE_X_B: [u8; 6] = [0x02, 0, 0, 0, 0, 8]; // VXLAN, host B, 203.0.113.5

fn p(id: u16) -> PortId {
    PortId(id)
}

fn ip(last: u8) -> [u8; 4] {
    [203, 0, 113, last]
}

fn topology() -> SnapshotBuilder {
    let mut b = SnapshotBuilder::new();
    b.network(NET_G, Segment::Geneve { vni: ID })
        .network(NET_R, Segment::Gre { key: ID })
        .network(NET_X, Segment::Vxlan { vni: ID })
        .uplink(p(UPLINK), PhysnetId(0))
        .tunnel_endpoint(EndpointSpec {
            uplink: p(UPLINK),
            local_ip: Ipv4Addr::from(LOCAL),
        })
        .access_port(p(VM_G), NET_G, &[mac(1)])
        .access_port(p(VM_R), NET_R, &[mac(1)])
        .access_port(p(VM_X), NET_X, &[mac(1)])
        .tunnel_port(p(TUN_B), Ipv4Addr::from(HOST_B))
        .tunnel_port(p(TUN_C), Ipv4Addr::from(HOST_C))
        .remote_port(NET_G, p(TUN_B), &[REMOTE_G_B])
        .remote_port(NET_G, p(TUN_C), &[REMOTE_G_C])
        .remote_port(NET_R, p(TUN_B), &[REMOTE_R_B])
        .remote_port(NET_X, p(TUN_B), &[REMOTE_X_B])
        .arp_entry(NET_G, Ipv4Addr::from(ip(5)), REMOTE_G_B)
        .arp_entry(NET_R, Ipv4Addr::from(ip(5)), REMOTE_R_B)
        .arp_entry(NET_X, Ipv4Addr::from(ip(5)), REMOTE_X_B);
    b
}

fn vtep() -> [u8; 6] {
    vtep_mac(Ipv4Addr::from(LOCAL))
}

/// The switch with hosts B and C resolved (each asked the endpoint for its MAC, as a
/// kernel endpoint would) and nothing left on the ports.
fn switch() -> MemSwitch {
    let mut sw = MemSwitch::new(&topology(), &[UPLINK, VM_G, VM_R, VM_X]);
    sw.run();
    sw.collect();
    for (hmac, hip) in [(HOST_B_MAC, HOST_B), (HOST_C_MAC, HOST_C)] {
        let out = sw.exchange(UPLINK, &arp(1, BROADCAST, hmac, hip, [0; 6], LOCAL));
        assert_eq!(out[&UPLINK], vec![arp(2, hmac, vtep(), LOCAL, hmac, hip)]);
    }
    sw
}

fn geneve(src_mac: [u8; 6], src_ip: [u8; 4], vni: u32, options: &[u8], inner: &[u8]) -> Vec<u8> {
    frames::geneve(vtep(), src_mac, src_ip, LOCAL, vni, options, inner)
}

fn gre(src_mac: [u8; 6], src_ip: [u8; 4], key: u32, inner: &[u8]) -> Vec<u8> {
    frames::gre(vtep(), src_mac, src_ip, LOCAL, key, false, None, inner)
}

fn dropped(c: &WorkerCounters, reason: DropReason) -> u64 {
    c.stage_dropped(Stage::TunnelDecap, reason)
}

/// The Geneve packet polluxd sends towards `dst_ip` at `dst_mac`, checked byte for byte
/// but for the UDP source port (from the flow hash, checked for its range).
fn check_geneve(got: &[u8], dst_mac: [u8; 6], dst_ip: [u8; 4], inner: &[u8]) {
    let mut want = frames::geneve(dst_mac, vtep(), LOCAL, dst_ip, ID, &[], inner);
    let sport = u16::from_be_bytes([got[34], got[35]]);
    assert!(
        sport >= 49152,
        "source port {sport} from the flow hash range"
    );
    want[34..36].copy_from_slice(&sport.to_be_bytes());
    assert_eq!(got, &want[..]);
    assert_eq!(internet_checksum(&got[14..34]), 0, "IPv4 header checksum");
}

#[test]
fn geneve_unicast_is_encapsulated_exactly() {
    let mut sw = switch();
    let inner = frame(REMOTE_G_B, mac(1), None, 7, 100);
    let out = sw.exchange(VM_G, &inner);
    assert_eq!(out.keys().copied().collect::<Vec<_>>(), vec![UPLINK]);
    let got = &out[&UPLINK][0];
    assert_eq!(got.len(), inner.len() + 50, "50 bytes of overhead");
    check_geneve(got, HOST_B_MAC, HOST_B, &inner);
    // Byte for byte: version 0, no options, no flags, Ethernet, VNI 100, UDP checksum 0.
    assert_eq!(&got[36..38], &6081u16.to_be_bytes());
    assert_eq!(&got[40..50], &[0, 0, 0, 0, 0x65, 0x58, 0, 0, ID as u8, 0]);
    let c = sw.counters();
    assert_eq!(
        (c.geneve_encapsulated.get(), c.vxlan_encapsulated.get()),
        (1, 0)
    );
    sw.assert_conserved();
}

#[test]
fn gre_unicast_is_encapsulated_exactly() {
    let mut sw = switch();
    let inner = frame(REMOTE_R_B, mac(1), None, 7, 100);
    let out = sw.exchange(VM_R, &inner);
    assert_eq!(out.keys().copied().collect::<Vec<_>>(), vec![UPLINK]);
    let got = &out[&UPLINK][0];
    assert_eq!(got.len(), inner.len() + 42, "42 bytes of overhead");
    // Entirely determined: no source port to hash.
    let want = frames::gre(HOST_B_MAC, vtep(), LOCAL, HOST_B, ID, false, None, &inner);
    assert_eq!(got, &want);
    assert_eq!(&got[23], &47, "IPv4 protocol GRE");
    assert_eq!(&got[34..42], &[0x20, 0, 0x65, 0x58, 0, 0, 0, ID as u8]);
    let c = sw.counters();
    assert_eq!(
        (c.gre_encapsulated.get(), c.vxlan_encapsulated.get()),
        (1, 0)
    );
    sw.assert_conserved();
}

#[test]
fn one_identifier_three_kinds_three_networks() {
    let mut sw = switch();
    let inner = frame(mac(1), REMOTE_G_B, None, 1, 80);
    let out = sw.exchange(UPLINK, &geneve(HOST_B_MAC, HOST_B, ID, &[], &inner));
    assert_eq!(out.keys().copied().collect::<Vec<_>>(), vec![VM_G]);
    assert_eq!(out[&VM_G], vec![inner.clone()]);
    // Options without the critical bit are skipped by their length.
    let options = [
        0x01, 0x02, 0x05, 0x02, 1, 2, 3, 4, 5, 6, 7, 8, 0xff, 0xff, 0x7f, 0x00,
    ];
    let out = sw.exchange(UPLINK, &geneve(HOST_B_MAC, HOST_B, ID, &options, &inner));
    assert_eq!(out[&VM_G], vec![inner.clone()]);
    let inner_r = frame(mac(1), REMOTE_R_B, None, 2, 80);
    let out = sw.exchange(UPLINK, &gre(HOST_B_MAC, HOST_B, ID, &inner_r));
    assert_eq!(out.keys().copied().collect::<Vec<_>>(), vec![VM_R]);
    assert_eq!(out[&VM_R], vec![inner_r.clone()]);
    // A checksum is checked, a sequence number skipped.
    for (csum, seq) in [(true, None), (false, Some(9)), (true, Some(10))] {
        let f = frames::gre(vtep(), HOST_B_MAC, HOST_B, LOCAL, ID, csum, seq, &inner_r);
        let out = sw.exchange(UPLINK, &f);
        assert_eq!(out[&VM_R], vec![inner_r.clone()], "csum {csum} seq {seq:?}");
    }
    // Ethernet padding after the IPv4 datagram is not part of the inner frame.
    let mut padded = gre(HOST_B_MAC, HOST_B, ID, &inner_r[..60]);
    padded.extend_from_slice(&[0; 6]);
    let out = sw.exchange(UPLINK, &padded);
    assert_eq!(out[&VM_R], vec![inner_r[..60].to_vec()]);
    let inner_x = frame(mac(1), REMOTE_X_B, None, 3, 80);
    let out = sw.exchange(
        UPLINK,
        &frames::vxlan(vtep(), HOST_B_MAC, HOST_B, LOCAL, ID, &inner_x),
    );
    assert_eq!(out.keys().copied().collect::<Vec<_>>(), vec![VM_X]);
    let c = sw.counters();
    assert_eq!(
        (
            c.geneve_decapsulated.get(),
            c.gre_decapsulated.get(),
            c.vxlan_decapsulated.get()
        ),
        (2, 5, 1)
    );
    sw.assert_conserved();
}

#[test]
fn refused_geneve_and_gre_packets_are_counted_drops() {
    let mut sw = switch();
    let inner = frame(mac(1), REMOTE_G_B, None, 1, 80);
    let good_geneve = geneve(HOST_B_MAC, HOST_B, ID, &[], &inner);
    let good_gre = gre(HOST_B_MAC, HOST_B, ID, &inner);
    let mut cases: Vec<(Vec<u8>, DropReason)> = Vec::new();
    // Geneve: a critical option among others, a control packet, version 1, IPv4 inside,
    // an option running past the options area, options past the datagram, a VNI nobody
    // has, a host that is no peer of the network (C has no port on the GRE network).
    let critical = [0x01, 0x02, 0x05, 0x00, 0x01, 0x02, 0x85, 0x01, 1, 2, 3, 4];
    cases.push((
        geneve(HOST_B_MAC, HOST_B, ID, &critical, &inner),
        DropReason::GeneveCriticalOption,
    ));
    let mut f = good_geneve.clone();
    f[43] = 0x80;
    cases.push((f, DropReason::GeneveControl));
    let mut f = good_geneve.clone();
    f[42] = 0x40;
    cases.push((f, DropReason::BadGeneve));
    let mut f = good_geneve.clone();
    f[44..46].copy_from_slice(&0x0800u16.to_be_bytes());
    cases.push((f, DropReason::TunnelNotEthernet));
    cases.push((
        geneve(HOST_B_MAC, HOST_B, ID, &[0, 1, 2, 3], &inner)
            .into_iter()
            .enumerate()
            .map(|(i, b)| if i == 53 { 0x1f } else { b })
            .collect(),
        DropReason::BadGeneve,
    ));
    let mut f = good_geneve.clone();
    f[42] = 0x3f;
    cases.push((f, DropReason::BadGeneve));
    cases.push((
        geneve(HOST_B_MAC, HOST_B, 4242, &[], &inner),
        DropReason::UnknownVni,
    ));
    // GRE: a wrong checksum, no key, IPv4 inside, version 1, routing present, a key
    // nobody has, host C on the GRE network, a runt inner frame.
    let mut f = frames::gre(vtep(), HOST_B_MAC, HOST_B, LOCAL, ID, true, None, &inner);
    let last = f.len() - 1;
    f[last] ^= 0xff;
    cases.push((f, DropReason::GreChecksum));
    let mut f = good_gre.clone();
    f[34] = 0x00;
    cases.push((f, DropReason::BadGre));
    let mut f = good_gre.clone();
    f[36..38].copy_from_slice(&0x0800u16.to_be_bytes());
    cases.push((f, DropReason::TunnelNotEthernet));
    let mut f = good_gre.clone();
    f[35] = 0x01;
    cases.push((f, DropReason::BadGre));
    let mut f = good_gre.clone();
    f[34] = 0x60;
    cases.push((f, DropReason::BadGre));
    cases.push((
        gre(HOST_B_MAC, HOST_B, 4242, &inner),
        DropReason::UnknownVni,
    ));
    cases.push((
        gre(HOST_C_MAC, HOST_C, ID, &inner),
        DropReason::UnknownTunnelEndpoint,
    ));
    cases.push((
        gre(HOST_B_MAC, HOST_B, ID, &inner[..10]),
        DropReason::BadGre,
    ));
    // Either kind with a wrong outer header checksum.
    for good in [&good_geneve, &good_gre] {
        let mut f = good.clone();
        f[24] ^= 0x10;
        cases.push((f, DropReason::BadOuterIpv4));
    }
    // Either kind as a fragment.
    for good in [&good_geneve, &good_gre] {
        let mut f = good.clone();
        f[20] = 0x20;
        let sum = internet_checksum(&{
            let mut h = f[14..34].to_vec();
            h[10..12].fill(0);
            h
        });
        f[24..26].copy_from_slice(&sum.to_be_bytes());
        cases.push((f, DropReason::BadOuterIpv4));
    }
    for (f, reason) in &cases {
        let before = dropped(&sw.counters(), *reason);
        let out = sw.exchange(UPLINK, f);
        assert!(out.is_empty(), "{reason}: {out:?}");
        assert_eq!(
            dropped(&sw.counters(), *reason),
            before + 1,
            "{reason}: {f:02x?}"
        );
    }
    let c = sw.counters();
    assert_eq!(
        (c.geneve_decapsulated.get(), c.gre_decapsulated.get()),
        (0, 0)
    );
    sw.assert_conserved();
}

#[test]
fn broadcast_is_replicated_with_each_networks_encapsulation() {
    let mut sw = switch();
    // Geneve network: hosts B and C.
    let bcast = frame(BROADCAST, mac(1), None, 3, 64);
    let out = sw.exchange(VM_G, &bcast);
    let mut copies = out[&UPLINK].clone();
    copies.sort_by_key(|f| f[33]);
    assert_eq!(copies.len(), 2, "{copies:02x?}");
    check_geneve(&copies[0], HOST_B_MAC, HOST_B, &bcast);
    check_geneve(&copies[1], HOST_C_MAC, HOST_C, &bcast);
    // GRE network: host B only.
    let out = sw.exchange(VM_R, &bcast);
    assert_eq!(
        out[&UPLINK],
        vec![frames::gre(
            HOST_B_MAC,
            vtep(),
            LOCAL,
            HOST_B,
            ID,
            false,
            None,
            &bcast
        )]
    );
    // A broadcast from the GRE overlay floods to the local port only.
    let from_b = frame(BROADCAST, REMOTE_R_B, None, 4, 64);
    let out = sw.exchange(UPLINK, &gre(HOST_B_MAC, HOST_B, ID, &from_b));
    assert_eq!(out.keys().copied().collect::<Vec<_>>(), vec![VM_R]);
    let c = sw.counters();
    assert_eq!(
        (c.geneve_encapsulated.get(), c.gre_encapsulated.get()),
        (2, 1)
    );
    sw.assert_conserved();
}

#[test]
fn arp_responder_answers_on_geneve_and_gre_networks() {
    let mut sw = switch();
    for (vm, remote) in [(VM_G, REMOTE_G_B), (VM_R, REMOTE_R_B)] {
        let out = sw.exchange(vm, &arp(1, BROADCAST, mac(1), ip(1), [0; 6], ip(5)));
        assert_eq!(out.keys().copied().collect::<Vec<_>>(), vec![vm]);
        assert_eq!(out[&vm], vec![arp(2, mac(1), remote, ip(5), mac(1), ip(1))]);
    }
    let c = sw.counters();
    assert_eq!(c.arp_responder_replies.get(), 2);
    assert_eq!(
        (c.geneve_encapsulated.get(), c.gre_encapsulated.get()),
        (0, 0),
        "no ARP crossed the underlay"
    );
    sw.assert_conserved();
}

#[test]
fn truncated_geneve_and_gre_packets_are_counted_drops() {
    let mut sw = switch();
    let inner = frame(mac(1), REMOTE_G_B, None, 1, 80);
    let inner_r = frame(mac(1), REMOTE_R_B, None, 1, 80);
    let options = [0x01, 0x02, 0x05, 0x01, 1, 2, 3, 4];
    let goods = [
        geneve(HOST_B_MAC, HOST_B, ID, &options, &inner),
        frames::gre(
            vtep(),
            HOST_B_MAC,
            HOST_B,
            LOCAL,
            ID,
            true,
            Some(1),
            &inner_r,
        ),
    ];
    let mut sent = 0u64;
    for good in &goods {
        // The IPv4 and UDP lengths still say the whole packet.
        for len in 0..good.len() {
            sw.send(UPLINK, &good[..len]);
            sent += 1;
        }
    }
    sw.run();
    assert!(sw.collect().is_empty());
    let c = sw.counters();
    let drops: u64 = [Stage::TunnelDecap, Stage::Classify]
        .iter()
        .flat_map(|&s| DropReason::ALL.iter().map(move |&r| (s, r)))
        .map(|(s, r)| c.stage_dropped(s, r))
        .sum();
    assert_eq!(drops, sent);
    sw.assert_conserved();
}
