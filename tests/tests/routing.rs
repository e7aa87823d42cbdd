//! The router stage on `mem` ports: ARP for router addresses, ICMP echo to them, routing
//! between subnets with next hops resolved by ARP (waiting packets, retries, expiry),
//! VLAN tags across a routed hop, and every routed drop counted with its reason.

use pollux_dataplane::drop::DropReason;
use pollux_dataplane::l3::{PENDING_PER_NEIGHBOR, PENDING_SECS};
use pollux_dataplane::port::PortId;
use pollux_dataplane::routing::{InterfaceSpec, RouteSpec, RouterSpec, RouterUid};
use pollux_dataplane::snapshot::{NetworkUid, PhysnetId, Segment, SnapshotBuilder};
use pollux_tests::frames::{
    arp, icmp_echo, internet_checksum, ipv4, l3_offset, tcp, transport_checksum, vid_of, BROADCAST,
};
use pollux_tests::harness::MemSwitch;

const NET_A: NetworkUid = NetworkUid(10);
const NET_B: NetworkUid = NetworkUid(20);
const NET_EXT: NetworkUid = NetworkUid(30);
const PHYS: PhysnetId = PhysnetId(1);
const EXT_VID: u16 = 300;

/// VM ports: 1 and 3 on A, 2 on B; 9 is the uplink carrying the external network.
const VM1: u16 = 1;
const VM2: u16 = 2;
const VM3: u16 = 3;
const UPLINK: u16 = 9;

const VM1_MAC: [u8; 6] = [0xfa, 0x16, 0x3e, 0, 0, 1];
const VM2_MAC: [u8; 6] = [0xfa, 0x16, 0x3e, 0, 0, 2];
const VM3_MAC: [u8; 6] = [0xfa, 0x16, 0x3e, 0, 0, 3];
const EXT_GW_MAC: [u8; 6] = [0x02, 0xee, 0, 0, 0, 1];
const ROUTER_MAC: [u8; 6] = [0x02, 0x70, 0x6c, 0, 0, 1];

const VM1_IP: [u8; 4] = [198, 18, 1, 10];
const VM2_IP: [u8; 4] = [198, 18, 2, 10];
const VM3_IP: [u8; 4] = [198, 18, 1, 11];
const GW_A: [u8; 4] = [198, 18, 1, 1];
const GW_B: [u8; 4] = [198, 18, 2, 1];
const ROUTER_EXT: [u8; 4] = [203, 0, 113, 10];
const EXT_GW: [u8; 4] = [203, 0, 113, 1];
const INTERNET: [u8; 4] = [203, 0, 113, 200];

fn router(default_route: bool) -> RouterSpec {
    let iface = |network, ip: [u8; 4], prefix_len, mtu| InterfaceSpec {
        network,
        ip: ip.into(),
        prefix_len,
        mtu,
    };
    RouterSpec {
        uid: RouterUid(1),
        mac: ROUTER_MAC,
        interfaces: vec![
            iface(NET_A, GW_A, 24, 1500),
            iface(NET_B, GW_B, 24, 1400),
            // A /25, so that INTERNET (203.0.113.200) is only reachable via EXT_GW.
            iface(NET_EXT, ROUTER_EXT, 25, 1500),
        ],
        external: Some(2),
        enable_snat: false,
        floating_ips: Vec::new(),
        metering: Vec::new(),
        routes: if default_route {
            vec![RouteSpec {
                destination: [0, 0, 0, 0].into(),
                prefix_len: 0,
                nexthop: EXT_GW.into(),
            }]
        } else {
            Vec::new()
        },
    }
}

fn config(default_route: bool) -> SnapshotBuilder {
    config_with(router(default_route))
}

fn config_with(router: RouterSpec) -> SnapshotBuilder {
    let mut b = SnapshotBuilder::new();
    b.network(NET_A, Segment::Local)
        .network(NET_B, Segment::Local)
        .network(
            NET_EXT,
            Segment::Vlan {
                physnet: PHYS,
                vid: EXT_VID,
            },
        )
        .access_port(PortId(VM1), NET_A, &[VM1_MAC])
        .access_port(PortId(VM3), NET_A, &[VM3_MAC])
        .access_port(PortId(VM2), NET_B, &[VM2_MAC])
        .uplink(PortId(UPLINK), PHYS)
        .router(router);
    b
}

fn switch() -> MemSwitch {
    MemSwitch::new(&config(true), &[VM1, VM2, VM3, UPLINK])
}

fn ping(src_mac: [u8; 6], src: [u8; 4], dst: [u8; 4], ttl: u8, seq: u16) -> Vec<u8> {
    ipv4(
        ROUTER_MAC,
        src_mac,
        None,
        src,
        dst,
        ttl,
        1,
        &icmp_echo(false, 0x77, seq),
    )
}

/// Checks the IPv4 header checksum and returns (ttl, src, dst).
fn ip_fields(frame: &[u8]) -> (u8, [u8; 4], [u8; 4]) {
    let l3 = l3_offset(frame);
    let h = &frame[l3..l3 + 20];
    assert_eq!(
        internet_checksum(h),
        0,
        "bad IPv4 header checksum: {h:02x?}"
    );
    (
        h[8],
        h[12..16].try_into().unwrap(),
        h[16..20].try_into().unwrap(),
    )
}

fn only(out: &std::collections::BTreeMap<u16, Vec<Vec<u8>>>, port: u16) -> Vec<u8> {
    assert_eq!(
        out.keys().copied().collect::<Vec<_>>(),
        vec![port],
        "expected output on port {port} only: {out:?}"
    );
    assert_eq!(out[&port].len(), 1, "{out:?}");
    out[&port][0].clone()
}

/// Teaches the router VM2's MAC the way a real exchange does: the router asks, VM2
/// answers.
fn resolve_vm2(sw: &mut MemSwitch) {
    let out = sw.exchange(VM1, &ping(VM1_MAC, VM1_IP, VM2_IP, 64, 0));
    let request = only(&out, VM2);
    assert_eq!(&request[..6], &BROADCAST, "an ARP request is broadcast");
    let reply = arp(2, ROUTER_MAC, VM2_MAC, VM2_IP, ROUTER_MAC, GW_B);
    let out = sw.exchange(VM2, &reply);
    only(&out, VM2);
}

#[test]
fn arp_for_a_router_address_is_answered_and_other_arp_floods() {
    let mut sw = switch();
    let request = arp(1, BROADCAST, VM1_MAC, VM1_IP, [0; 6], GW_A);
    let out = sw.exchange(VM1, &request);
    let reply = only(&out, VM1);
    assert_eq!(&reply[..6], &VM1_MAC);
    assert_eq!(&reply[6..12], &ROUTER_MAC);
    assert_eq!(&reply[12..14], &[0x08, 0x06]);
    assert_eq!(&reply[20..22], &[0, 2], "operation: reply");
    assert_eq!(&reply[22..28], &ROUTER_MAC, "sender MAC");
    assert_eq!(&reply[28..32], &GW_A, "sender IP");
    assert_eq!(&reply[32..38], &VM1_MAC, "target MAC");
    assert_eq!(&reply[38..42], &VM1_IP, "target IP");

    // Asking for the router's address on another network gets no answer here: a router
    // answers for the interface on the asker's network only (Linux's arp_ignore=1 style).
    let wrong = arp(1, BROADCAST, VM1_MAC, VM1_IP, [0; 6], GW_B);
    let out = sw.exchange(VM1, &wrong);
    assert_eq!(only(&out, VM3), wrong, "flooded within network A");

    let other = arp(1, BROADCAST, VM1_MAC, VM1_IP, [0; 6], VM3_IP);
    let out = sw.exchange(VM1, &other);
    assert_eq!(only(&out, VM3), other);
    sw.assert_conserved();
}

#[test]
fn the_router_answers_pings_to_each_of_its_addresses() {
    let mut sw = switch();
    for (seq, addr) in [GW_A, GW_B, ROUTER_EXT].into_iter().enumerate() {
        let request = ping(VM1_MAC, VM1_IP, addr, 5, seq as u16);
        let out = sw.exchange(VM1, &request);
        let reply = only(&out, VM1);
        assert_eq!(&reply[..6], &VM1_MAC);
        assert_eq!(&reply[6..12], &ROUTER_MAC);
        let (ttl, src, dst) = ip_fields(&reply);
        assert_eq!((ttl, src, dst), (64, addr, VM1_IP));
        let icmp = &reply[34..];
        assert_eq!(icmp[0], 0, "echo reply");
        assert_eq!(internet_checksum(icmp), 0, "ICMP checksum");
        assert_eq!(
            &icmp[4..],
            &request[38..],
            "identifier, sequence and data echoed"
        );
    }
    // Anything else to the router is dropped (nothing listens on it).
    // UDP to the router gets a port unreachable (what ends a traceroute to it).
    let udp = ipv4(ROUTER_MAC, VM1_MAC, None, VM1_IP, GW_A, 64, 17, &[0; 16]);
    let out = sw.exchange(VM1, &udp);
    assert_icmp_error(&only(&out, VM1), &udp, GW_A, 3, 3, 0);
    assert_eq!(sw.counters().dropped(DropReason::ToRouter), 1);
    sw.assert_conserved();
}

#[test]
fn tcp_to_a_router_address_is_refused_with_a_reset_as_linux_does() {
    let mut sw = switch();
    // A SYN: RST+ACK acknowledging it, from the address and port it was sent to.
    let syn = ipv4(
        ROUTER_MAC,
        VM1_MAC,
        None,
        VM1_IP,
        GW_A,
        64,
        6,
        &tcp(VM1_IP, GW_A, 40000, 22, 1000, 0, 0x02, 64240, &[]),
    );
    let rst = only(&sw.exchange(VM1, &syn), VM1);
    assert_eq!(
        rst.len(),
        54,
        "Ethernet, IPv4 and TCP headers, nothing more"
    );
    assert_eq!(&rst[..6], &VM1_MAC);
    assert_eq!(&rst[6..12], &ROUTER_MAC);
    let (ttl, src, dst) = ip_fields(&rst);
    assert_eq!((ttl, src, dst), (64, GW_A, VM1_IP));
    assert_eq!(internet_checksum(&rst[14..34]), 0, "IPv4 header checksum");
    let t = &rst[34..54];
    assert_eq!(transport_checksum(GW_A, VM1_IP, 6, t), 0, "TCP checksum");
    assert_eq!(&t[..4], &[0, 22, 0x9c, 0x40], "ports swapped");
    assert_eq!(&t[4..8], &[0; 4], "sequence 0: the SYN carried no ACK");
    assert_eq!(&t[8..12], &1001u32.to_be_bytes(), "acknowledges the SYN");
    assert_eq!(t[13], 0x14, "RST, ACK");

    // A segment with ACK and data: a bare RST at its acknowledgement number.
    let data = ipv4(
        ROUTER_MAC,
        VM1_MAC,
        None,
        VM1_IP,
        GW_B,
        64,
        6,
        &tcp(VM1_IP, GW_B, 40001, 80, 5, 777, 0x18, 64240, b"GET /"),
    );
    let rst = only(&sw.exchange(VM1, &data), VM1);
    let t = &rst[34..54];
    assert_eq!(transport_checksum(GW_B, VM1_IP, 6, t), 0);
    assert_eq!((&t[4..8], t[13]), (&777u32.to_be_bytes()[..], 0x04));

    // A reset gets nothing back.
    let reset = ipv4(
        ROUTER_MAC,
        VM1_MAC,
        None,
        VM1_IP,
        GW_A,
        64,
        6,
        &tcp(VM1_IP, GW_A, 40002, 22, 1, 1, 0x14, 0, &[]),
    );
    assert!(sw.exchange(VM1, &reset).is_empty());
    assert_eq!(sw.counters().dropped(DropReason::ToRouter), 1);
    assert_eq!(sw.counters().tcp_resets.get(), 2);
    sw.assert_conserved();
}

#[test]
fn a_static_route_over_a_router_address_does_not_take_it_away() {
    // Routes more specific than network A's subnet that cover the router's own address
    // there, down to a /32: the router still answers for its address (Linux's local table comes
    // first), and routes the rest of the prefix to the next hop.
    let mut spec = router(true);
    for (destination, prefix_len) in [([198, 18, 1, 0], 28), (GW_A, 32)] {
        spec.routes.push(RouteSpec {
            destination: destination.into(),
            prefix_len,
            nexthop: VM2_IP.into(),
        });
    }
    let mut sw = MemSwitch::new(&config_with(spec), &[VM1, VM2, VM3, UPLINK]);
    let request = ping(VM1_MAC, VM1_IP, GW_A, 5, 1);
    let reply = only(&sw.exchange(VM1, &request), VM1);
    assert_eq!(ip_fields(&reply), (64, GW_A, VM1_IP));
    assert_eq!(reply[34], 0, "echo reply");
    // 198.18.1.2 is in the /28: it goes to VM2 (an ARP request for VM2 first).
    let out = sw.exchange(VM1, &ping(VM1_MAC, VM1_IP, [198, 18, 1, 2], 5, 2));
    let arp_request = only(&out, VM2);
    assert_eq!(&arp_request[38..42], &VM2_IP);
    sw.assert_conserved();
}

#[test]
fn a_routed_packet_waits_for_arp_then_goes_with_ttl_and_macs_rewritten() {
    let mut sw = switch();
    // The first packet makes the router ask for VM2 on network B and waits.
    let first = ping(VM1_MAC, VM1_IP, VM2_IP, 64, 1);
    let out = sw.exchange(VM1, &first);
    let request = only(&out, VM2);
    assert_eq!(&request[..6], &BROADCAST);
    assert_eq!(&request[6..12], &ROUTER_MAC);
    assert_eq!(&request[20..22], &[0, 1], "ARP request");
    assert_eq!(
        &request[28..32],
        &GW_B,
        "asked from the router's address on B"
    );
    assert_eq!(&request[38..42], &VM2_IP);
    assert_eq!(sw.worker.router().neighbors().pending(), 1);
    sw.assert_conserved();

    // VM2's answer releases it.
    let reply = arp(2, ROUTER_MAC, VM2_MAC, VM2_IP, ROUTER_MAC, GW_B);
    let out = sw.exchange(VM2, &reply);
    let routed = only(&out, VM2);
    assert_eq!(&routed[..6], &VM2_MAC);
    assert_eq!(&routed[6..12], &ROUTER_MAC);
    let (ttl, src, dst) = ip_fields(&routed);
    assert_eq!((ttl, src, dst), (63, VM1_IP, VM2_IP));
    assert_eq!(&routed[34..], &first[34..], "payload untouched");
    assert_eq!(
        sw.counters().consumed.get(),
        1,
        "the ARP reply ends in the router"
    );

    // The next one goes straight through, and so does VM2's answer back.
    let out = sw.exchange(VM1, &ping(VM1_MAC, VM1_IP, VM2_IP, 9, 2));
    assert_eq!(ip_fields(&only(&out, VM2)).0, 8);
    let back = ipv4(
        ROUTER_MAC,
        VM2_MAC,
        None,
        VM2_IP,
        VM1_IP,
        64,
        1,
        &icmp_echo(true, 0x77, 2),
    );
    let out = sw.exchange(VM2, &back);
    // VM1 never sent ARP to the router, so the router asks for it on network A (a
    // broadcast, so VM3 hears it too).
    assert_eq!(out.keys().copied().collect::<Vec<_>>(), vec![VM1, VM3]);
    let request = &out[&VM1][0];
    assert_eq!(&request[38..42], &VM1_IP);
    let answer = arp(2, ROUTER_MAC, VM1_MAC, VM1_IP, ROUTER_MAC, GW_A);
    let out = sw.exchange(VM1, &answer);
    let routed = only(&out, VM1);
    assert_eq!(&routed[..6], &VM1_MAC);
    assert_eq!(ip_fields(&routed), (63, VM2_IP, VM1_IP));
    assert_eq!(sw.counters().originated.get(), 2, "two ARP requests made");
    sw.assert_conserved();
}

#[test]
fn an_arp_request_to_the_router_teaches_it_the_sender() {
    let mut sw = switch();
    // VM2 asks for its gateway first, as a real host does before sending.
    let request = arp(1, BROADCAST, VM2_MAC, VM2_IP, [0; 6], GW_B);
    only(&sw.exchange(VM2, &request), VM2);
    let out = sw.exchange(VM1, &ping(VM1_MAC, VM1_IP, VM2_IP, 64, 1));
    let routed = only(&out, VM2);
    assert_eq!(&routed[..6], &VM2_MAC, "no ARP round needed");
    assert_eq!(sw.counters().originated.get(), 0);
    sw.assert_conserved();
}

#[test]
fn routing_to_the_external_network_tags_the_frame_and_uses_the_default_route() {
    let mut sw = switch();
    let out = sw.exchange(VM1, &ping(VM1_MAC, VM1_IP, INTERNET, 64, 1));
    let request = only(&out, UPLINK);
    assert_eq!(
        vid_of(&request),
        Some(EXT_VID),
        "ARP request tagged for the external VLAN"
    );
    assert_eq!(
        &request[42..46],
        &EXT_GW,
        "the default route's next hop is asked for"
    );
    // The upstream gateway answers, tagged.
    let mut answer = arp(2, ROUTER_MAC, EXT_GW_MAC, EXT_GW, ROUTER_MAC, ROUTER_EXT);
    answer.splice(12..12, [0x81, 0x00, (EXT_VID >> 8) as u8, EXT_VID as u8]);
    let out = sw.exchange(UPLINK, &answer);
    let routed = only(&out, UPLINK);
    assert_eq!(vid_of(&routed), Some(EXT_VID));
    assert_eq!(&routed[..6], &EXT_GW_MAC);
    assert_eq!(ip_fields(&routed), (63, VM1_IP, INTERNET));

    // And a packet coming back in on the tagged uplink leaves untagged to VM1 once VM1 is
    // known (VM1 asked for its gateway).
    only(
        &sw.exchange(VM1, &arp(1, BROADCAST, VM1_MAC, VM1_IP, [0; 6], GW_A)),
        VM1,
    );
    let mut back = ipv4(
        ROUTER_MAC,
        EXT_GW_MAC,
        Some(EXT_VID),
        INTERNET,
        VM1_IP,
        50,
        1,
        &icmp_echo(true, 1, 1),
    );
    let out = sw.exchange(UPLINK, &back);
    let routed = only(&out, VM1);
    assert_eq!(vid_of(&routed), None);
    assert_eq!(ip_fields(&routed), (49, INTERNET, VM1_IP));
    back.truncate(0);
    sw.assert_conserved();
}

/// An ICMP error's (type, code, next-hop MTU).
type IcmpError = (u8, u8, u16);

#[test]
fn routed_drops_are_counted_with_their_reasons() {
    let mut sw = MemSwitch::new(&config(false), &[VM1, VM2, VM3, UPLINK]);
    // (frame, reason, the ICMP error VM1 gets back as (type, code, next-hop MTU) if any)
    let cases: Vec<(Vec<u8>, DropReason, Option<IcmpError>)> = vec![
        (
            ping(VM1_MAC, VM1_IP, VM2_IP, 1, 1),
            DropReason::TtlExpired,
            Some((11, 0, 0)),
        ),
        (
            ping(VM1_MAC, VM1_IP, INTERNET, 64, 1),
            DropReason::NoRoute,
            Some((3, 0, 0)),
        ),
        (
            {
                let mut f = ping(VM1_MAC, VM1_IP, VM2_IP, 64, 1);
                f[24] ^= 0xff; // the checksum no longer matches
                f
            },
            DropReason::BadIpv4Header,
            None,
        ),
        (
            ping(VM1_MAC, VM1_IP, VM2_IP, 64, 1)[..30].to_vec(),
            DropReason::BadIpv4Header,
            None,
        ),
        (
            {
                // 1450 bytes of IPv4 towards network B, whose MTU is 1400.
                ipv4(
                    ROUTER_MAC,
                    VM1_MAC,
                    None,
                    VM1_IP,
                    VM2_IP,
                    64,
                    17,
                    &vec![0; 1430],
                )
            },
            DropReason::MtuExceeded,
            Some((3, 4, 1400)),
        ),
        (
            {
                let mut f = ping(VM1_MAC, VM1_IP, VM2_IP, 64, 1);
                f[12..14].copy_from_slice(&[0x86, 0xdd]);
                f
            },
            DropReason::NotRoutable,
            None,
        ),
        (
            arp(1, ROUTER_MAC, VM1_MAC, VM1_IP, [0; 6], GW_A)[..20].to_vec(),
            DropReason::BadArp,
            None,
        ),
    ];
    for (frame, reason, error) in cases {
        let before = sw.counters().dropped(reason);
        let out = sw.exchange(VM1, &frame);
        assert_eq!(sw.counters().dropped(reason), before + 1, "{reason}");
        let Some((ty, code, mtu)) = error else {
            assert!(out.is_empty(), "{reason}: {out:?}");
            continue;
        };
        let reply = only(&out, VM1);
        assert_icmp_error(&reply, &frame, GW_A, ty, code, mtu);
    }
    sw.assert_conserved();
}

/// Checks an ICMP error from the router's address `from` to VM1 about `offending`:
/// addresses, type, code, next-hop MTU, both checksums, and the quoted header.
fn assert_icmp_error(reply: &[u8], offending: &[u8], from: [u8; 4], ty: u8, code: u8, mtu: u16) {
    assert_eq!(&reply[..6], &VM1_MAC, "back to the sender");
    assert_eq!(&reply[6..12], &ROUTER_MAC);
    let (_, src, dst) = ip_fields(reply);
    assert_eq!((src, dst), (from, VM1_IP));
    assert_eq!(reply[23], 1, "ICMP");
    let icmp = &reply[34..];
    assert_eq!((icmp[0], icmp[1]), (ty, code), "type and code");
    assert_eq!(u16::from_be_bytes([icmp[6], icmp[7]]), mtu, "next-hop MTU");
    assert_eq!(internet_checksum(icmp), 0, "ICMP checksum");
    assert_eq!(
        &icmp[8..28],
        &offending[14..34],
        "the offending header is quoted (as received)"
    );
}

#[test]
fn an_oversized_packet_without_df_is_fragmented_to_the_egress_mtu() {
    let mut sw = switch();
    resolve_vm2(&mut sw);
    let payload: Vec<u8> = (0..2000u32).map(|i| (i * 7) as u8).collect();
    let mut big = ipv4(
        ROUTER_MAC,
        VM1_MAC,
        None,
        VM1_IP,
        VM2_IP,
        64,
        17,
        &payload[..1480],
    );
    // Clear DF and fix the header checksum.
    big[20] &= !0x40;
    big[24..26].fill(0);
    let sum = internet_checksum(&big[14..34]);
    big[24..26].copy_from_slice(&sum.to_be_bytes());
    let out = sw.exchange(VM1, &big);
    let frags = &out[&VM2];
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!(
        frags.len(),
        2,
        "1500 bytes of IPv4 in an MTU of 1400: two fragments"
    );
    let mut reassembled = Vec::new();
    for (i, f) in frags.iter().enumerate() {
        assert_eq!(&f[..6], &VM2_MAC);
        assert_eq!(&f[6..12], &ROUTER_MAC);
        let (ttl, src, dst) = ip_fields(f);
        assert_eq!((ttl, src, dst), (63, VM1_IP, VM2_IP));
        let total = usize::from(u16::from_be_bytes([f[16], f[17]]));
        assert!(total <= 1400, "fragment {i} is {total} bytes");
        let flags_offset = u16::from_be_bytes([f[20], f[21]]);
        let more = flags_offset & 0x2000 != 0;
        let offset = usize::from(flags_offset & 0x1fff) * 8;
        assert_eq!(more, i == 0, "MF on all but the last");
        assert_eq!(
            offset,
            reassembled.len(),
            "fragment {i} continues the datagram"
        );
        reassembled.extend_from_slice(&f[34..14 + total]);
    }
    assert_eq!(
        reassembled,
        &payload[..1480],
        "the payload survives the split"
    );
    assert_eq!(sw.counters().fragments.get(), 2);
    sw.assert_conserved();
}

#[test]
fn icmp_errors_are_rate_limited_per_source() {
    let mut sw = switch();
    let mut errors = 0;
    for seq in 0..40 {
        let out = sw.exchange(VM1, &ping(VM1_MAC, VM1_IP, VM2_IP, 1, seq));
        errors += out.get(&VM1).map_or(0, Vec::len);
    }
    assert_eq!(
        errors, 20,
        "a burst of 20 errors per source, then the limit"
    );
    assert_eq!(sw.counters().icmp_rate_limited.get(), 20);
    assert_eq!(sw.counters().dropped(DropReason::TtlExpired), 40);
    // Another source still gets its errors.
    let out = sw.exchange(VM3, &ping(VM3_MAC, VM3_IP, VM2_IP, 1, 0));
    assert_eq!(out[&VM3].len(), 1);
    sw.assert_conserved();
}

#[test]
fn unanswered_arp_is_retried_once_a_second_and_waiting_packets_expire() {
    let mut sw = switch();
    let mut requests = 0;
    for seq in 0..(PENDING_PER_NEIGHBOR as u16 + 4) {
        let out = sw.exchange(VM1, &ping(VM1_MAC, VM1_IP, VM2_IP, 64, seq));
        requests += out.get(&VM2).map_or(0, Vec::len);
    }
    assert_eq!(
        requests, 1,
        "one request per second, however many packets wait"
    );
    assert_eq!(
        sw.counters().dropped(DropReason::NeighborQueueFull),
        4,
        "a next hop holds at most {PENDING_PER_NEIGHBOR} packets"
    );
    sw.now_ns += 1_000_000_000;
    let out = sw.exchange(VM1, &ping(VM1_MAC, VM1_IP, VM2_IP, 64, 99));
    assert_eq!(out[&VM2].len(), 1, "asked again after a second");
    sw.now_ns += u64::from(PENDING_SECS) * 1_000_000_000;
    sw.run();
    assert_eq!(sw.worker.router().neighbors().pending(), 0);
    // Each sender hears that its packet went nowhere, as from a Linux router.
    let out = sw.collect();
    let errors = &out[&VM1];
    assert_eq!(errors.len(), PENDING_PER_NEIGHBOR, "{out:?}");
    for e in errors {
        assert_eq!((e[34], e[35]), (3, 1), "host unreachable");
    }
    assert_eq!(
        sw.counters().dropped(DropReason::NeighborUnresolved),
        PENDING_PER_NEIGHBOR as u64
    );
    assert_eq!(
        sw.counters().port(PortId(VM1)).unwrap().rx_dropped.get(),
        PENDING_PER_NEIGHBOR as u64 + 5,
        "every drop is charged to the port the packet came from"
    );
    sw.assert_conserved();
}

#[test]
fn a_new_generation_without_the_router_stops_routing() {
    let mut sw = switch();
    resolve_vm2(&mut sw);
    let mut b = SnapshotBuilder::new();
    b.network(NET_A, Segment::Local)
        .network(NET_B, Segment::Local)
        .access_port(PortId(VM1), NET_A, &[VM1_MAC])
        .access_port(PortId(VM3), NET_A, &[VM3_MAC])
        .access_port(PortId(VM2), NET_B, &[VM2_MAC]);
    sw.apply(&b);
    // The router MAC is now unknown on A: the frame floods to VM3 instead.
    let out = sw.exchange(VM1, &ping(VM1_MAC, VM1_IP, VM2_IP, 64, 1));
    assert_eq!(out.keys().copied().collect::<Vec<_>>(), vec![VM3]);
    sw.assert_conserved();
}

#[test]
fn a_gratuitous_arp_for_the_gateway_goes_nowhere_and_teaches_nothing() {
    let mut sw = switch();
    // VM1 (no port security in this configuration) announces the gateway's address.
    let garp = arp(1, BROADCAST, VM1_MAC, GW_A, [0; 6], GW_A);
    assert!(sw.exchange(VM1, &garp).is_empty(), "not flooded to VM3");
    let reply = arp(2, BROADCAST, VM1_MAC, GW_A, BROADCAST, GW_A);
    assert!(sw.exchange(VM1, &reply).is_empty());
    assert_eq!(sw.counters().dropped(DropReason::ArpClaimsRouter), 2);
    assert_eq!(sw.worker.router().neighbors().len(), 0);
    sw.assert_conserved();
}

#[test]
fn arp_from_outside_every_connected_subnet_creates_no_neighbour() {
    let mut sw = switch();
    // A request for the gateway from an address outside 198.18.1.0/24 is answered (as
    // Linux does) but teaches the router nothing.
    let request = arp(1, BROADCAST, VM1_MAC, [198, 19, 7, 7], [0; 6], GW_A);
    only(&sw.exchange(VM1, &request), VM1);
    assert_eq!(sw.worker.router().neighbors().len(), 0);
    // From inside it, it does.
    let request = arp(1, BROADCAST, VM1_MAC, VM1_IP, [0; 6], GW_A);
    only(&sw.exchange(VM1, &request), VM1);
    assert_eq!(sw.worker.router().neighbors().len(), 1);
    sw.assert_conserved();
}
