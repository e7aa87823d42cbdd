//! SNAT and floating IPs in the router stage, on `mem` ports: what leaves through the
//! external gateway, what comes back, port collisions, hairpin to a floating IP, per-port
//! session quotas, and sessions that survive a configuration swap. Every translated packet
//! is checked field by field, with both checksums recomputed independently. ICMP errors
//! about translated flows, whichever side sends them (a router upstream, a VM, the router
//! itself), come through translated as their flow (RFC 5508).

use pollux_dataplane::conntrack::ConnConfig;
use pollux_dataplane::drop::DropReason;
use pollux_dataplane::snapshot::SnapshotBuilder;
use pollux_tests::frames::{
    arp, icmp_echo, internet_checksum, ipv4, transport_checksum, udp, vid_of, BROADCAST,
};
use pollux_tests::harness::MemSwitch;
use pollux_tests::router_lab::*;

fn config() -> SnapshotBuilder {
    config_with_tenant_mtu(1500)
}

fn config_with_tenant_mtu(mtu: u16) -> SnapshotBuilder {
    topology(mtu, Vec::new())
}

fn switch_with(conntrack: ConnConfig) -> MemSwitch {
    switch_of(&config(), conntrack)
}

fn switch() -> MemSwitch {
    switch_with(ConnConfig::with_capacity(1024))
}

/// A frame from the internet host, arriving tagged on the uplink, to the router's MAC.
fn from_internet(dst: [u8; 4], payload: &[u8], protocol: u8) -> Vec<u8> {
    from_upstream(INTERNET, dst, 60, protocol, payload)
}

/// A packet from `src` beyond the upstream gateway, arriving tagged on the uplink with
/// the gateway's MAC, to the router's MAC.
fn from_upstream(src: [u8; 4], dst: [u8; 4], ttl: u8, protocol: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = ipv4(
        ROUTER_MAC,
        UPSTREAM_MAC,
        None,
        src,
        dst,
        ttl,
        protocol,
        payload,
    );
    tag(&mut f);
    f
}

/// The one frame `port` emitted, untagged.
fn one(out: &std::collections::BTreeMap<u16, Vec<Vec<u8>>>, port: u16) -> Vec<u8> {
    assert_eq!(
        out.keys().copied().collect::<Vec<_>>(),
        vec![port],
        "expected output on port {port} only: {out:?}"
    );
    assert_eq!(out[&port].len(), 1, "{out:?}");
    let f = out[&port][0].clone();
    if vid_of(&f).is_some() {
        assert_eq!(vid_of(&f), Some(EXT_VID));
        [&f[..12], &f[16..]].concat()
    } else {
        f
    }
}

/// (src, dst, sport, dport) of an untagged IPv4 frame, after checking the header checksum
/// and the L4 checksum (UDP over the pseudo-header; ICMP over its message; the ICMP
/// "ports" are its identifier).
fn flow(f: &[u8]) -> ([u8; 4], [u8; 4], u16, u16) {
    let h = &f[14..34];
    assert_eq!(internet_checksum(h), 0, "IPv4 header checksum");
    let src: [u8; 4] = h[12..16].try_into().unwrap();
    let dst: [u8; 4] = h[16..20].try_into().unwrap();
    let total = usize::from(u16::from_be_bytes([h[2], h[3]]));
    let l4 = &f[34..14 + total];
    match h[9] {
        17 => {
            assert_eq!(transport_checksum(src, dst, 17, l4), 0, "UDP checksum");
            let port = |i: usize| u16::from_be_bytes([l4[i], l4[i + 1]]);
            (src, dst, port(0), port(2))
        }
        1 => {
            assert_eq!(internet_checksum(l4), 0, "ICMP checksum");
            let id = u16::from_be_bytes([l4[4], l4[5]]);
            (src, dst, id, id)
        }
        p => panic!("unexpected protocol {p}"),
    }
}

fn udp_from(mac: [u8; 6], src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16) -> Vec<u8> {
    ipv4(
        ROUTER_MAC,
        mac,
        None,
        src,
        dst,
        64,
        17,
        &udp(src, dst, sport, dport, b"query"),
    )
}

#[test]
fn snat_translates_out_and_back_keeping_the_port_when_free() {
    let mut sw = switch();
    let out = sw.exchange(VM1, &udp_from(VM1_MAC, VM1_IP, 40000, INTERNET, 53));
    let f = one(&out, UPLINK);
    assert_eq!(&f[..6], &UPSTREAM_MAC, "to the upstream gateway");
    assert_eq!(&f[6..12], &ROUTER_MAC);
    assert_eq!(flow(&f), (ROUTER_EXT, INTERNET, 40000, 53));

    let answer = udp(INTERNET, ROUTER_EXT, 53, 40000, b"answer");
    let out = sw.exchange(UPLINK, &from_internet(ROUTER_EXT, &answer, 17));
    let f = one(&out, VM1);
    assert_eq!(&f[..6], &VM1_MAC);
    assert_eq!(flow(&f), (INTERNET, VM1_IP, 53, 40000));
    assert_eq!(&f[42..48], b"answer");
    assert_eq!(sw.worker.sessions().len(), 1);
    sw.assert_conserved();
}

#[test]
fn icmp_echo_is_translated_by_identifier() {
    let mut sw = switch();
    let ping = ipv4(
        ROUTER_MAC,
        VM1_MAC,
        None,
        VM1_IP,
        INTERNET,
        64,
        1,
        &icmp_echo(false, 0x4242, 1),
    );
    let f = one(&sw.exchange(VM1, &ping), UPLINK);
    let (src, dst, id, _) = flow(&f);
    assert_eq!((src, dst), (ROUTER_EXT, INTERNET));
    let reply = from_internet(ROUTER_EXT, &icmp_echo(true, id, 1), 1);
    let f = one(&sw.exchange(UPLINK, &reply), VM1);
    assert_eq!(flow(&f), (INTERNET, VM1_IP, 0x4242, 0x4242));
    // A ping to the gateway address itself is still answered by the router.
    let ping_router = from_internet(ROUTER_EXT, &icmp_echo(false, 7, 1), 1);
    let f = one(&sw.exchange(UPLINK, &ping_router), UPLINK);
    assert_eq!(flow(&f), (ROUTER_EXT, INTERNET, 7, 7));
    assert_eq!(f[34], 0, "echo reply");
    sw.assert_conserved();
}

#[test]
fn two_hosts_with_one_source_port_get_different_external_ports() {
    let mut sw = switch();
    let a = flow(&one(
        &sw.exchange(VM1, &udp_from(VM1_MAC, VM1_IP, 40000, INTERNET, 53)),
        UPLINK,
    ));
    let b = flow(&one(
        &sw.exchange(VM3, &udp_from(VM3_MAC, VM3_IP, 40000, INTERNET, 53)),
        UPLINK,
    ));
    assert_eq!(a.0, ROUTER_EXT);
    assert_eq!(b.0, ROUTER_EXT);
    assert_ne!(a.2, b.2, "the second flow must not reuse the first's port");
    // Each reply finds its own host.
    for (port, vm, ip) in [(a.2, VM1, VM1_IP), (b.2, VM3, VM3_IP)] {
        let answer = udp(INTERNET, ROUTER_EXT, 53, port, b"answer");
        let f = one(
            &sw.exchange(UPLINK, &from_internet(ROUTER_EXT, &answer, 17)),
            vm,
        );
        assert_eq!(flow(&f), (INTERNET, ip, 53, 40000));
    }
    sw.assert_conserved();
}

#[test]
fn a_floating_ip_is_one_to_one_both_ways_and_answers_arp() {
    let mut sw = switch();
    let f = one(
        &sw.exchange(VM2, &udp_from(VM2_MAC, VM2_IP, 5000, INTERNET, 53)),
        UPLINK,
    );
    assert_eq!(
        flow(&f),
        (VM2_FIP, INTERNET, 5000, 53),
        "source is the floating IP"
    );

    // Unsolicited traffic to the floating IP reaches the VM.
    let inbound = udp(INTERNET, VM2_FIP, 6000, 7000, b"hello");
    let f = one(
        &sw.exchange(UPLINK, &from_internet(VM2_FIP, &inbound, 17)),
        VM2,
    );
    assert_eq!(&f[..6], &VM2_MAC);
    assert_eq!(flow(&f), (INTERNET, VM2_IP, 6000, 7000));

    // The external network asks who has the floating IP: the router does.
    let mut who = arp(1, BROADCAST, UPSTREAM_MAC, UPSTREAM, [0; 6], VM2_FIP);
    tag(&mut who);
    let f = one(&sw.exchange(UPLINK, &who), UPLINK);
    assert_eq!(&f[20..22], &[0, 2], "ARP reply");
    assert_eq!(&f[22..28], &ROUTER_MAC);
    assert_eq!(&f[28..32], &VM2_FIP);
    assert_eq!(sw.worker.sessions().len(), 0, "1:1 NAT keeps no state");
    sw.assert_conserved();
}

#[test]
fn hairpin_to_a_floating_ip_from_behind_the_same_router() {
    let mut sw = switch();
    // VM1 (no floating IP) talks to VM2's floating IP.
    let f = one(
        &sw.exchange(VM1, &udp_from(VM1_MAC, VM1_IP, 41000, VM2_FIP, 80)),
        VM2,
    );
    let (src, dst, sport, dport) = flow(&f);
    assert_eq!(
        (src, dst, dport),
        (ROUTER_EXT, VM2_IP, 80),
        "DNAT to the fixed IP, SNAT to the gateway so the reply comes back through the router"
    );
    // VM2 answers the gateway address; VM1 sees the answer from the floating IP.
    let answer = ipv4(
        ROUTER_MAC,
        VM2_MAC,
        None,
        VM2_IP,
        ROUTER_EXT,
        64,
        17,
        &udp(VM2_IP, ROUTER_EXT, 80, sport, b"answer"),
    );
    let f = one(&sw.exchange(VM2, &answer), VM1);
    assert_eq!(flow(&f), (VM2_FIP, VM1_IP, 80, 41000));
    sw.assert_conserved();
}

#[test]
fn a_port_over_its_session_quota_is_refused_and_others_are_not() {
    let mut sw = switch_with(ConnConfig {
        owner_quota: 4,
        ..ConnConfig::with_capacity(64)
    });
    for sport in 0..6 {
        sw.exchange(VM1, &udp_from(VM1_MAC, VM1_IP, 50000 + sport, INTERNET, 53));
    }
    assert_eq!(sw.counters().dropped(DropReason::NatQuotaExceeded), 2);
    assert_eq!(sw.worker.sessions().len(), 4);
    let out = sw.exchange(VM3, &udp_from(VM3_MAC, VM3_IP, 50000, INTERNET, 53));
    assert_eq!(
        flow(&one(&out, UPLINK)).0,
        ROUTER_EXT,
        "another port still gets one"
    );
    sw.assert_conserved();
}

#[test]
fn sessions_survive_a_configuration_swap() {
    let mut sw = switch();
    let f = one(
        &sw.exchange(VM1, &udp_from(VM1_MAC, VM1_IP, 40000, INTERNET, 53)),
        UPLINK,
    );
    let port = flow(&f).2;
    sw.apply(&config());
    let answer = udp(INTERNET, ROUTER_EXT, 53, port, b"answer");
    let f = one(
        &sw.exchange(UPLINK, &from_internet(ROUTER_EXT, &answer, 17)),
        VM1,
    );
    assert_eq!(flow(&f), (INTERNET, VM1_IP, 53, 40000));
    sw.assert_conserved();
}

#[test]
fn what_cannot_be_translated_is_dropped_with_a_reason() {
    let mut sw = switch();
    // A later fragment of a UDP datagram carries no ports.
    let mut frag = udp_from(VM1_MAC, VM1_IP, 40000, INTERNET, 53);
    frag[20..22].copy_from_slice(&0x0010u16.to_be_bytes());
    frag[24..26].fill(0);
    let sum = internet_checksum(&frag[14..34]);
    frag[24..26].copy_from_slice(&sum.to_be_bytes());
    assert!(sw.exchange(VM1, &frag).is_empty());
    assert_eq!(sw.counters().dropped(DropReason::NatUnsupported), 1);
    sw.assert_conserved();
}

/// An ICMP error message of `ty` and `code` (the next 4 bytes `rest`) quoting `quoted`.
fn icmp_error(ty: u8, code: u8, rest: [u8; 4], quoted: &[u8]) -> Vec<u8> {
    let mut m = vec![ty, code, 0, 0];
    m.extend_from_slice(&rest);
    m.extend_from_slice(quoted);
    let sum = internet_checksum(&m);
    m[2..4].copy_from_slice(&sum.to_be_bytes());
    m
}

/// The IPv4 packet of an untagged frame, whole.
fn ip_of(f: &[u8]) -> &[u8] {
    let total = usize::from(u16::from_be_bytes([f[16], f[17]]));
    &f[14..14 + total]
}

/// (source, destination, quoted packet) of the ICMP error in an untagged frame, after
/// checking its IPv4 header checksum, its ICMP checksum and the quoted header's checksum.
fn error_of(f: &[u8]) -> ([u8; 4], [u8; 4], Vec<u8>) {
    let ip = ip_of(f);
    assert_eq!(internet_checksum(&ip[..20]), 0, "IPv4 header checksum");
    assert_eq!(ip[9], 1, "ICMP");
    assert_eq!(internet_checksum(&ip[20..]), 0, "ICMP checksum");
    let quoted = ip[28..].to_vec();
    assert_eq!(
        internet_checksum(&quoted[..20]),
        0,
        "quoted header checksum"
    );
    let addr = |at: usize| -> [u8; 4] { ip[at..at + 4].try_into().unwrap() };
    (addr(12), addr(16), quoted)
}

/// Whether `quoted` is `sent` as it left its sender (the IPv4 header but its TTL and
/// checksum, which a router on the way changes, and the L4 bytes the quote holds).
fn quotes(quoted: &[u8], sent: &[u8]) -> bool {
    let mut a = quoted.to_vec();
    let mut b = sent[..quoted.len()].to_vec();
    for p in [&mut a, &mut b] {
        p[8] = 0;
        p[10..12].fill(0);
    }
    a == b
}

#[test]
fn an_error_from_upstream_about_a_snat_flow_reaches_its_host_as_about_its_own_packet() {
    let mut sw = switch();
    let sent = udp_from(VM1_MAC, VM1_IP, 40000, INTERNET, 53);
    let out = one(&sw.exchange(VM1, &sent), UPLINK);
    let port = flow(&out).2;
    // The upstream gateway cannot forward it (frag needed, next-hop MTU 1280), and
    // quotes only the first 8 bytes past the header, as RFC 792 allows.
    let error = icmp_error(3, 4, [0, 0, 0x05, 0x00], &ip_of(&out)[..28]);
    let back = from_upstream(UPSTREAM, ROUTER_EXT, 64, 1, &error);
    let f = one(&sw.exchange(UPLINK, &back), VM1);
    assert_eq!(&f[..6], &VM1_MAC);
    let (src, dst, quoted) = error_of(&f);
    assert_eq!(
        (src, dst),
        (UPSTREAM, VM1_IP),
        "to the host, from who sent it"
    );
    assert_eq!(quoted.len(), 28);
    assert!(
        quotes(&quoted, ip_of(&sent)),
        "the quote is the host's own packet, UDP checksum included (port {port}):\n{quoted:02x?}\n{:02x?}",
        &ip_of(&sent)[..28]
    );
    assert_eq!(&f[34..36], &[3, 4], "type and code");
    assert_eq!(&f[38..42], &[0, 0, 0x05, 0x00], "the next-hop MTU is kept");
    assert_eq!(sw.counters().nat_icmp_errors.get(), 1);
    assert_eq!(sw.worker.sessions().len(), 1);
    sw.assert_conserved();
}

#[test]
fn an_error_about_an_echo_request_finds_its_session_by_identifier() {
    let mut sw = switch();
    let ping = ipv4(
        ROUTER_MAC,
        VM1_MAC,
        None,
        VM1_IP,
        INTERNET,
        64,
        1,
        &icmp_echo(false, 0x4242, 1),
    );
    let out = one(&sw.exchange(VM1, &ping), UPLINK);
    // Time exceeded, quoting the whole request as Linux does.
    let error = icmp_error(11, 0, [0; 4], ip_of(&out));
    let back = from_upstream(UPSTREAM, ROUTER_EXT, 64, 1, &error);
    let f = one(&sw.exchange(UPLINK, &back), VM1);
    let (src, dst, quoted) = error_of(&f);
    assert_eq!((src, dst), (UPSTREAM, VM1_IP));
    assert!(
        quotes(&quoted, ip_of(&ping)),
        "identifier and ICMP checksum restored"
    );
    sw.assert_conserved();
}

#[test]
fn an_error_from_upstream_about_a_floating_ip_flow_reaches_the_fixed_ip() {
    let mut sw = switch();
    let sent = udp_from(VM2_MAC, VM2_IP, 5000, INTERNET, 53);
    let out = one(&sw.exchange(VM2, &sent), UPLINK);
    assert_eq!(flow(&out).0, VM2_FIP);
    let error = icmp_error(3, 3, [0; 4], ip_of(&out));
    let f = one(
        &sw.exchange(UPLINK, &from_internet(VM2_FIP, &error, 1)),
        VM2,
    );
    let (src, dst, quoted) = error_of(&f);
    assert_eq!((src, dst), (INTERNET, VM2_IP));
    assert!(quotes(&quoted, ip_of(&sent)));
    assert_eq!(sw.counters().nat_icmp_errors.get(), 1);
    sw.assert_conserved();
}

#[test]
fn a_vm_error_about_a_translated_flow_leaves_as_about_the_packet_that_arrived() {
    let mut sw = switch();
    // A reply of VM1's SNAT session, and VM1's port unreachable about it.
    let out = one(
        &sw.exchange(VM1, &udp_from(VM1_MAC, VM1_IP, 40000, INTERNET, 53)),
        UPLINK,
    );
    let port = flow(&out).2;
    let answer = from_internet(
        ROUTER_EXT,
        &udp(INTERNET, ROUTER_EXT, 53, port, b"late"),
        17,
    );
    let delivered = one(&sw.exchange(UPLINK, &answer), VM1);
    let error = icmp_error(3, 3, [0; 4], ip_of(&delivered));
    let unreachable = ipv4(ROUTER_MAC, VM1_MAC, None, VM1_IP, INTERNET, 64, 1, &error);
    let f = one(&sw.exchange(VM1, &unreachable), UPLINK);
    let (src, dst, quoted) = error_of(&f);
    assert_eq!(
        (src, dst),
        (ROUTER_EXT, INTERNET),
        "from the gateway address"
    );
    assert!(
        quotes(&quoted, &untagged_ip(&answer)),
        "about the answer as it was sent"
    );

    // The same for a packet that reached VM2 through its floating IP.
    let inbound = from_internet(VM2_FIP, &udp(INTERNET, VM2_FIP, 6000, 7000, b"hi"), 17);
    let delivered = one(&sw.exchange(UPLINK, &inbound), VM2);
    let error = icmp_error(3, 3, [0; 4], ip_of(&delivered));
    let unreachable = ipv4(ROUTER_MAC, VM2_MAC, None, VM2_IP, INTERNET, 64, 1, &error);
    let f = one(&sw.exchange(VM2, &unreachable), UPLINK);
    let (src, dst, quoted) = error_of(&f);
    assert_eq!((src, dst), (VM2_FIP, INTERNET), "from the floating IP");
    assert!(quotes(&quoted, &untagged_ip(&inbound)));
    assert_eq!(sw.counters().nat_icmp_errors.get(), 2);
    assert_eq!(sw.counters().dropped(DropReason::NatUnsupported), 0);
    sw.assert_conserved();
}

#[test]
fn the_routers_own_frag_needed_names_the_address_the_sender_used() {
    // Tenant networks at 1400: a 1450-byte datagram with DF from outside does not fit.
    let mut sw = switch_of(
        &config_with_tenant_mtu(1400),
        ConnConfig::with_capacity(1024),
    );
    let big = vec![0x5a; 1450 - 28];
    let inbound = from_internet(VM2_FIP, &udp(INTERNET, VM2_FIP, 6000, 7000, &big), 17);
    let f = one(&sw.exchange(UPLINK, &inbound), UPLINK);
    let (src, dst, quoted) = error_of(&f);
    assert_eq!((src, dst), (ROUTER_EXT, INTERNET));
    assert_eq!(&f[34..36], &[3, 4], "fragmentation needed");
    assert_eq!(&f[40..42], &1400u16.to_be_bytes());
    assert!(
        quotes(&quoted, &untagged_ip(&inbound)),
        "about the floating IP, not the fixed one"
    );
    assert_eq!(sw.counters().dropped(DropReason::MtuExceeded), 1);

    // A SNAT session's reply too large for the tenant network.
    let out = one(
        &sw.exchange(VM1, &udp_from(VM1_MAC, VM1_IP, 40000, INTERNET, 53)),
        UPLINK,
    );
    let port = flow(&out).2;
    let answer = from_internet(ROUTER_EXT, &udp(INTERNET, ROUTER_EXT, 53, port, &big), 17);
    let f = one(&sw.exchange(UPLINK, &answer), UPLINK);
    let (src, dst, quoted) = error_of(&f);
    assert_eq!((src, dst), (ROUTER_EXT, INTERNET));
    assert!(
        quotes(&quoted, &untagged_ip(&answer)),
        "about the gateway address and port"
    );
    assert_eq!(sw.counters().nat_icmp_errors.get(), 2);
    sw.assert_conserved();
}

#[test]
fn an_error_about_no_flow_of_ours_or_with_a_bad_checksum_is_not_forwarded() {
    let mut sw = switch();
    let stranger = ipv4(
        [0; 6],
        [0; 6],
        None,
        ROUTER_EXT,
        INTERNET,
        63,
        17,
        &udp(ROUTER_EXT, INTERNET, 33333, 53, b"x"),
    );
    let error = icmp_error(3, 3, [0; 4], ip_of(&stranger));
    assert!(sw
        .exchange(UPLINK, &from_internet(ROUTER_EXT, &error, 1))
        .is_empty());
    assert_eq!(sw.counters().dropped(DropReason::ToRouter), 1);

    let out = one(
        &sw.exchange(VM1, &udp_from(VM1_MAC, VM1_IP, 40000, INTERNET, 53)),
        UPLINK,
    );
    let mut error = icmp_error(3, 3, [0; 4], ip_of(&out));
    error[2] ^= 0xff;
    assert!(sw
        .exchange(UPLINK, &from_internet(ROUTER_EXT, &error, 1))
        .is_empty());
    assert_eq!(sw.counters().dropped(DropReason::ToRouter), 2);
    assert_eq!(sw.counters().nat_icmp_errors.get(), 0);
    sw.assert_conserved();
}

/// The IPv4 packet of a frame that may be tagged.
fn untagged_ip(f: &[u8]) -> Vec<u8> {
    let f = pollux_tests::frames::untagged(f);
    ip_of(&f).to_vec()
}

/// The two fragments of the IPv4 datagram in `frame` (an untagged frame from `ipv4`):
/// the first with the first 24 bytes of its payload and MF, the second with the rest at
/// offset 24, each with its header checksum.
fn two_fragments(frame: &[u8], ident: u16) -> (Vec<u8>, Vec<u8>) {
    let (eth, ip) = (&frame[..14], &frame[14..]);
    let payload = &ip[20..];
    let part = |data: &[u8], flags_offset: u16| {
        let mut h = ip[..20].to_vec();
        h[2..4].copy_from_slice(&((20 + data.len()) as u16).to_be_bytes());
        h[4..6].copy_from_slice(&ident.to_be_bytes());
        h[6..8].copy_from_slice(&flags_offset.to_be_bytes());
        h[10..12].fill(0);
        let sum = internet_checksum(&h);
        h[10..12].copy_from_slice(&sum.to_be_bytes());
        [eth, &h, data].concat()
    };
    (part(&payload[..24], 0x2000), part(&payload[24..], 24 / 8))
}

#[test]
fn later_fragments_take_their_first_fragments_translation_both_ways() {
    let mut sw = switch();
    let whole = ipv4(
        ROUTER_MAC,
        VM1_MAC,
        None,
        VM1_IP,
        INTERNET,
        64,
        17,
        &udp(VM1_IP, INTERNET, 40000, 53, &[0x42; 40]),
    );
    let (first, second) = two_fragments(&whole, 0x0bad);
    let out_first = one(&sw.exchange(VM1, &first), UPLINK);
    let out_second = one(&sw.exchange(VM1, &second), UPLINK);
    let port = u16::from_be_bytes([out_first[34], out_first[35]]);
    for f in [&out_first, &out_second] {
        assert_eq!(internet_checksum(&f[14..34]), 0);
        assert_eq!(&f[26..30], &ROUTER_EXT, "from the gateway address");
        assert_eq!(&f[30..34], &INTERNET);
        assert_eq!(&f[18..20], &0x0badu16.to_be_bytes(), "identification kept");
    }
    // Put back together, the datagram is the translated one, UDP checksum right.
    let mut l4 = out_first[34..].to_vec();
    l4.extend_from_slice(&out_second[34..]);
    assert_eq!(transport_checksum(ROUTER_EXT, INTERNET, 17, &l4), 0);

    // The answer, fragmented by the internet host, reaches VM1 whole.
    let answer = ipv4(
        ROUTER_MAC,
        UPSTREAM_MAC,
        None,
        INTERNET,
        ROUTER_EXT,
        60,
        17,
        &udp(INTERNET, ROUTER_EXT, 53, port, &[0x24; 40]),
    );
    let (a1, a2) = two_fragments(&answer, 0x7777);
    let mut delivered = Vec::new();
    for mut f in [a1, a2] {
        tag(&mut f);
        delivered.push(one(&sw.exchange(UPLINK, &f), VM1));
    }
    for f in &delivered {
        assert_eq!(internet_checksum(&f[14..34]), 0);
        assert_eq!(&f[30..34], &VM1_IP);
    }
    let mut l4 = delivered[0][34..].to_vec();
    l4.extend_from_slice(&delivered[1][34..]);
    assert_eq!(transport_checksum(INTERNET, VM1_IP, 17, &l4), 0);
    assert_eq!(u16::from_be_bytes([l4[2], l4[3]]), 40000);

    // A later fragment whose first fragment never came has nothing to take.
    let (_, orphan) = two_fragments(&whole, 0x0bae);
    assert!(sw.exchange(VM1, &orphan).is_empty());
    assert_eq!(sw.counters().dropped(DropReason::NatUnsupported), 1);
    sw.assert_conserved();
}
