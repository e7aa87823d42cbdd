//! TCP super-frames (TSO from a TAP port) on `mem` ports that stand in for TAP ports
//! (`mem_port_vnet`: a virtio-net header in front of every frame): a super-frame between
//! two such ports stays one frame, with its GSO state and its partial checksum; toward a
//! port that cannot take it (a plain `mem` port, as AF_XDP, vhost-user or another
//! worker's ring) it is segmented, each segment complete and valid; through the router
//! and SNAT it is segmented with the translated addresses, or carried whole with its
//! partial checksum patched for them; its MTU check uses its segments' length; port
//! security and a stateful group see it as one segment of its whole length, and the
//! connection's window follows it.

use std::collections::BTreeMap;

use pollux_dataplane::conntrack::ConnConfig;
use pollux_dataplane::drop::DropReason;
use pollux_dataplane::port::PortId;
use pollux_dataplane::snapshot::{NetworkUid, Segment, SnapshotBuilder};
use pollux_dataplane::wire::checksum;
use pollux_dataplane::worker::WorkerConfig;
use pollux_drivers::mem::{mem_port_vnet, MemPortConfig};
use pollux_drivers::tap::vnet::{VnetHdr, FLAG_NEEDS_CSUM, GSO_TCPV4, VNET_HDR_LEN};
use pollux_tests::frames::{internet_checksum, ipv4, tcp, transport_checksum};
use pollux_tests::harness::{MemSwitch, POOL_FRAMES};
use pollux_tests::port_lab::{NamedVm, PortLab};
use pollux_tests::router_lab::*;

/// Ring geometry that holds a 64 KiB super-frame and its header.
const BIG: MemPortConfig = MemPortConfig {
    depth: 64,
    max_frame: 65_536 + 128,
};

const MSS: u16 = 1448;

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 13 % 251) as u8).collect()
}

/// A TCP super-frame as a TSO sender's kernel writes it to a tap: the IPv4 total length
/// covers the whole payload and the TCP checksum field holds the pseudo-header sum (not
/// complemented) over the whole length.
#[allow(clippy::too_many_arguments)]
fn super_frame(
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    src: [u8; 4],
    dst: [u8; 4],
    ports: (u16, u16),
    seq: u32,
    ack: u32,
    flags: u8,
    data: &[u8],
) -> Vec<u8> {
    let mut l4 = tcp(src, dst, ports.0, ports.1, seq, ack, flags, 64000, data);
    let pseudo = checksum::pseudo_header_v4(src.into(), dst.into(), 6, l4.len() as u16);
    l4[16..18].copy_from_slice(&pseudo.to_be_bytes());
    ipv4(dst_mac, src_mac, None, src, dst, 64, 6, &l4)
}

/// `frame` behind the virtio-net header of a TCPv4 super-frame cut at `mss`.
fn with_gso(frame: &[u8], mss: u16) -> Vec<u8> {
    let mut out = vec![0; VNET_HDR_LEN];
    VnetHdr {
        flags: FLAG_NEEDS_CSUM,
        gso_type: GSO_TCPV4,
        hdr_len: 54,
        gso_size: mss,
        csum_start: 34,
        csum_offset: 16,
        num_buffers: 0,
    }
    .emit(&mut out)
    .unwrap();
    out.extend_from_slice(frame);
    out
}

/// `frame` behind a plain (all-zero) virtio-net header.
fn plain(frame: &[u8]) -> Vec<u8> {
    [&[0u8; VNET_HDR_LEN][..], frame].concat()
}

/// Replaces port `id` of `sw` by a vnet `mem` port (a TAP port with TSO).
fn make_tap(sw: &mut MemSwitch, id: u16) {
    let (port, wire) = mem_port_vnet(format!("tap{id}"), BIG);
    sw.worker.attach(PortId(id), Box::new(port), &[0]);
    sw.wires.insert(id, wire);
}

/// Checks an untagged (or tagged) IPv4/TCP frame's checksums; returns (src, dst,
/// sport, dport, seq, flags, payload).
fn tcp_of(f: &[u8]) -> ([u8; 4], [u8; 4], u16, u16, u32, u8, Vec<u8>) {
    let l3 = if f[12..14] == [0x81, 0x00] { 18 } else { 14 };
    let h = &f[l3..l3 + 20];
    assert_eq!(internet_checksum(h), 0, "IPv4 header checksum");
    let total = usize::from(u16::from_be_bytes([h[2], h[3]]));
    assert_eq!(f.len(), l3 + total, "no padding, no truncation");
    let src: [u8; 4] = h[12..16].try_into().unwrap();
    let dst: [u8; 4] = h[16..20].try_into().unwrap();
    let l4 = &f[l3 + 20..];
    assert_eq!(transport_checksum(src, dst, 6, l4), 0, "TCP checksum");
    let be16 = |i: usize| u16::from_be_bytes([l4[i], l4[i + 1]]);
    let seq = u32::from_be_bytes([l4[4], l4[5], l4[6], l4[7]]);
    let doff = usize::from(l4[12] >> 4) * 4;
    (src, dst, be16(0), be16(2), seq, l4[13], l4[doff..].to_vec())
}

/// The switched lab: a network of two TAP ports and a plain `mem` port.
const TAP1: u16 = 1;
const TAP2: u16 = 2;
const MEM3: u16 = 3;
const NET: NetworkUid = NetworkUid(10);
const TAP1_MAC: [u8; 6] = [0xfa, 0x16, 0x3e, 0, 0, 1];
const TAP2_MAC: [u8; 6] = [0xfa, 0x16, 0x3e, 0, 0, 2];
const MEM3_MAC: [u8; 6] = [0xfa, 0x16, 0x3e, 0, 0, 3];
const IP1: [u8; 4] = [198, 18, 1, 1];
const IP2: [u8; 4] = [198, 18, 1, 2];
const IP3: [u8; 4] = [198, 18, 1, 3];

fn switched() -> MemSwitch {
    let mut b = SnapshotBuilder::new();
    b.network(NET, Segment::Local)
        .access_port(PortId(TAP1), NET, &[TAP1_MAC])
        .access_port(PortId(TAP2), NET, &[TAP2_MAC])
        .access_port(PortId(MEM3), NET, &[MEM3_MAC]);
    let mut sw = MemSwitch::with(
        &b,
        &[TAP1, TAP2, MEM3],
        WorkerConfig::default(),
        BIG,
        POOL_FRAMES,
    );
    make_tap(&mut sw, TAP1);
    make_tap(&mut sw, TAP2);
    sw
}

#[test]
fn a_super_frame_between_two_tap_ports_stays_one_frame() {
    let mut sw = switched();
    let data = pattern(63_000);
    let frame = super_frame(
        TAP2_MAC,
        TAP1_MAC,
        IP1,
        IP2,
        (40000, 5201),
        1,
        1,
        0x18,
        &data,
    );
    let out = sw.exchange(TAP1, &with_gso(&frame, MSS));
    assert_eq!(out.keys().copied().collect::<Vec<_>>(), vec![TAP2]);
    assert_eq!(out[&TAP2].len(), 1, "one frame");
    let got = &out[&TAP2][0];
    let hdr = VnetHdr::parse(got).unwrap();
    assert_eq!(
        (
            hdr.flags,
            hdr.gso_type,
            hdr.gso_size,
            hdr.csum_start,
            hdr.csum_offset,
            hdr.hdr_len
        ),
        (FLAG_NEEDS_CSUM, GSO_TCPV4, MSS, 34, 16, 54),
        "its GSO state goes with it"
    );
    assert_eq!(
        &got[VNET_HDR_LEN..],
        &frame[..],
        "byte for byte, checksum still partial"
    );
    let c = sw.counters();
    assert_eq!(c.gso_segments.get(), 0, "nothing segmented");
    assert_eq!(
        c.port(PortId(TAP2)).unwrap().tx_bytes.get(),
        frame.len() as u64
    );
    // A plain frame between them goes behind a zero header.
    let small = ipv4(TAP2_MAC, TAP1_MAC, None, IP1, IP2, 64, 17, &[0; 30]);
    let out = sw.exchange(TAP1, &plain(&small));
    assert_eq!(out[&TAP2], vec![plain(&small)]);
    sw.assert_conserved();
}

#[test]
fn a_super_frame_to_a_port_without_tso_is_segmented() {
    let mut sw = switched();
    let data = pattern(60_001);
    let frame = super_frame(
        MEM3_MAC,
        TAP1_MAC,
        IP1,
        IP3,
        (40000, 5201),
        0xffff_fff0,
        7,
        0x18 | 0x01 | 0x80,
        &data,
    );
    let out = sw.exchange(TAP1, &with_gso(&frame, MSS));
    let segs = &out[&MEM3];
    assert_eq!(segs.len(), 60_001usize.div_ceil(usize::from(MSS)));
    let mut joined = Vec::new();
    for (i, s) in segs.iter().enumerate() {
        assert!(s.len() <= 1514, "segment {i}: {} bytes", s.len());
        let (src, dst, sport, dport, seq, flags, payload) = tcp_of(s);
        assert_eq!((src, dst, sport, dport), (IP1, IP3, 40000, 5201));
        assert_eq!(seq, 0xffff_fff0u32.wrapping_add(joined.len() as u32));
        assert_eq!(flags & 0x80 != 0, i == 0, "CWR on the first only");
        assert_eq!(
            flags & 0x09 != 0,
            i + 1 == segs.len(),
            "FIN, PSH on the last"
        );
        joined.extend_from_slice(&payload);
    }
    assert_eq!(joined, data);
    let c = sw.counters();
    assert_eq!(c.gso_frames.get(), 1);
    assert_eq!(c.gso_segments.get(), segs.len() as u64);
    // Flooded (unknown unicast... here broadcast): each copy as its port takes it.
    let bcast = super_frame(
        [0xff; 6],
        TAP1_MAC,
        IP1,
        IP3,
        (40000, 5201),
        1,
        1,
        0x10,
        &pattern(5000),
    );
    let out = sw.exchange(TAP1, &with_gso(&bcast, MSS));
    assert_eq!(out[&TAP2].len(), 1, "whole to the other TAP port");
    assert_eq!(out[&MEM3].len(), 4, "segmented for the mem port");
    sw.assert_conserved();
}

#[test]
fn a_short_pool_or_a_bad_super_frame_is_a_counted_drop() {
    let mut b = SnapshotBuilder::new();
    b.network(NET, Segment::Local)
        .access_port(PortId(TAP1), NET, &[TAP1_MAC])
        .access_port(PortId(MEM3), NET, &[MEM3_MAC]);
    // 40 frames: the super-frame (33) fits, its segments (45) do not.
    let mut sw = MemSwitch::with(&b, &[TAP1, MEM3], WorkerConfig::default(), BIG, 40);
    make_tap(&mut sw, TAP1);
    let frame = super_frame(
        MEM3_MAC,
        TAP1_MAC,
        IP1,
        IP3,
        (1, 2),
        1,
        1,
        0x10,
        &pattern(64_000),
    );
    let out = sw.exchange(TAP1, &with_gso(&frame, MSS));
    assert!(out.is_empty(), "{out:?}");
    assert_eq!(sw.counters().dropped(DropReason::GsoPoolShort), 1);
    // A GSO header on a UDP datagram: never segmented as TCP.
    let udp = ipv4(MEM3_MAC, TAP1_MAC, None, IP1, IP3, 64, 17, &pattern(3000));
    let out = sw.exchange(TAP1, &with_gso(&udp, MSS));
    assert!(out.is_empty(), "{out:?}");
    assert_eq!(sw.counters().dropped(DropReason::GsoUnsupported), 1);
    sw.assert_conserved();
}

fn routed() -> MemSwitch {
    let mut sw = switch_of(&topology(1500, Vec::new()), ConnConfig::with_capacity(1024));
    make_tap(&mut sw, VM1);
    sw
}

/// A super-frame from VM1 (a TAP port) to the internet host through the router.
fn outbound(data: &[u8], mss: u16, df: bool) -> Vec<u8> {
    let mut f = super_frame(
        ROUTER_MAC,
        VM1_MAC,
        VM1_IP,
        INTERNET,
        (40000, 443),
        1000,
        1,
        0x18,
        data,
    );
    if !df {
        f[20] = 0;
        f[24..26].fill(0);
        let sum = internet_checksum(&f[14..34]);
        f[24..26].copy_from_slice(&sum.to_be_bytes());
    }
    with_gso(&f, mss)
}

#[test]
fn through_the_router_and_snat_a_super_frame_is_segmented_with_valid_checksums() {
    let mut sw = routed();
    let data = pattern(50_000);
    let out = sw.exchange(VM1, &outbound(&data, MSS, true));
    let segs = &out[&UPLINK];
    assert_eq!(segs.len(), 50_000usize.div_ceil(usize::from(MSS)));
    let mut joined = Vec::new();
    for s in segs {
        assert_eq!(&s[..6], &UPSTREAM_MAC);
        assert_eq!(
            &s[12..16],
            &[0x81, 0x00, 0x01, 0x2c],
            "tagged for the external network"
        );
        assert!(s.len() <= 1518);
        let (src, dst, sport, dport, seq, _, payload) = tcp_of(s);
        assert_eq!((src, dst, sport, dport), (ROUTER_EXT, INTERNET, 40000, 443));
        assert_eq!(seq, 1000 + joined.len() as u32);
        assert_eq!(s[18 + 8], 63, "TTL decremented");
        joined.extend_from_slice(&payload);
    }
    assert_eq!(joined, data);
    assert_eq!(sw.worker.sessions().len(), 1);
    sw.assert_conserved();
}

#[test]
fn through_snat_to_a_tap_uplink_the_partial_checksum_follows_the_addresses() {
    let mut sw = routed();
    make_tap(&mut sw, UPLINK);
    let data = pattern(40_000);
    let out = sw.exchange(VM1, &outbound(&data, MSS, true));
    assert_eq!(out[&UPLINK].len(), 1, "carried whole");
    let got = &out[&UPLINK][0];
    let hdr = VnetHdr::parse(got).unwrap();
    assert_eq!(
        (
            hdr.gso_type,
            hdr.gso_size,
            hdr.csum_start,
            hdr.csum_offset,
            hdr.hdr_len
        ),
        (GSO_TCPV4, MSS, 38, 16, 58),
        "offsets as the frame is now: tagged"
    );
    let f = &got[VNET_HDR_LEN..];
    let l4 = &f[38..];
    let field = u16::from_be_bytes([l4[16], l4[17]]);
    let want = checksum::pseudo_header_v4(ROUTER_EXT.into(), INTERNET.into(), 6, l4.len() as u16);
    assert_eq!(
        field, want,
        "the pseudo-header sum of the translated addresses"
    );
    // Completed as the kernel will, it verifies.
    let mut done = l4.to_vec();
    let c = !checksum::sum(&done);
    done[16..18].copy_from_slice(&c.to_be_bytes());
    assert_eq!(transport_checksum(ROUTER_EXT, INTERNET, 6, &done), 0);
    // The answer, a super-frame from the internet, comes back to VM1 whole, translated.
    let mut back = super_frame(
        ROUTER_MAC,
        UPSTREAM_MAC,
        INTERNET,
        ROUTER_EXT,
        (443, 40000),
        7,
        1000 + 40_000,
        0x10,
        &pattern(20_000),
    );
    tag(&mut back);
    let mut hdr = vec![0; VNET_HDR_LEN];
    VnetHdr {
        flags: FLAG_NEEDS_CSUM,
        gso_type: GSO_TCPV4,
        hdr_len: 58,
        gso_size: MSS,
        csum_start: 38,
        csum_offset: 16,
        num_buffers: 0,
    }
    .emit(&mut hdr)
    .unwrap();
    let out = sw.exchange(UPLINK, &[hdr, back].concat());
    assert_eq!(out[&VM1].len(), 1, "{:?}", out.keys());
    let f = &out[&VM1][0][VNET_HDR_LEN..];
    assert_eq!(&f[30..34], &VM1_IP);
    let l4 = &f[34..];
    let field = u16::from_be_bytes([l4[16], l4[17]]);
    let want = checksum::pseudo_header_v4(INTERNET.into(), VM1_IP.into(), 6, l4.len() as u16);
    assert_eq!(field, want);
    assert_eq!(sw.counters().gso_segments.get(), 0);
    sw.assert_conserved();
}

#[test]
fn the_routers_mtu_check_uses_the_segments_length() {
    let mut sw = routed();
    // 1480 bytes of payload a segment: 1520-byte datagrams for a 1500-byte MTU.
    let out = sw.exchange(VM1, &outbound(&pattern(10_000), 1480, true));
    assert!(!out.contains_key(&UPLINK));
    let error: &BTreeMap<u16, Vec<Vec<u8>>> = &out;
    let icmp = &plain_of(&error[&VM1][0])[34..];
    assert_eq!((icmp[0], icmp[1]), (3, 4), "fragmentation needed");
    assert_eq!(u16::from_be_bytes([icmp[6], icmp[7]]), 1500);
    assert_eq!(sw.counters().dropped(DropReason::MtuExceeded), 1);
    // Without DF it is not fragmented (its checksum is partial): a counted drop.
    let out = sw.exchange(VM1, &outbound(&pattern(10_000), 1480, false));
    assert!(!out.contains_key(&UPLINK));
    assert_eq!(sw.counters().dropped(DropReason::GsoUnsupported), 1);
    // 1460 fits exactly.
    let out = sw.exchange(VM1, &outbound(&pattern(10_000), 1460, true));
    assert_eq!(out[&UPLINK].len(), 7);
    assert!(out[&UPLINK]
        .iter()
        .all(|s| s.len() == 1518 || s == out[&UPLINK].last().unwrap()));
    sw.assert_conserved();
}

/// A frame a vnet port emitted, header stripped.
fn plain_of(f: &[u8]) -> Vec<u8> {
    f[VNET_HDR_LEN..].to_vec()
}

struct Vm {
    name: &'static str,
    mac: [u8; 6],
    ip: [u8; 4],
}

impl NamedVm for Vm {
    fn name(&self) -> &'static str {
        self.name
    }
}

const WEB: Vm = Vm {
    name: "web",
    mac: [0xfa, 0x16, 0x3e, 0, 1, 1],
    ip: [198, 18, 1, 10],
};
const CLIENT: Vm = Vm {
    name: "client",
    mac: [0xfa, 0x16, 0x3e, 0, 1, 2],
    ip: [198, 18, 1, 11],
};

/// Both ports with port security, the web port admitting TCP 80 from anyone.
const SECURED: &str = r#"
[[networks]]
id = "net"
network_type = "local"

[[subnets]]
id = "sub"
network_id = "net"
cidr = "198.18.1.0/24"
enable_dhcp = false

[[security_groups]]
id = "web"
[[security_groups.rules]]
direction = "ingress"
ethertype = "IPv4"
protocol = "tcp"
port_range_min = 80
port_range_max = 80
[[security_groups.rules]]
direction = "egress"
ethertype = "IPv4"

[[security_groups]]
id = "client"
[[security_groups.rules]]
direction = "egress"
ethertype = "IPv4"

[[ports]]
id = "web"
network_id = "net"
mac_address = "fa:16:3e:00:01:01"
fixed_ips = [{ subnet_id = "sub", ip_address = "198.18.1.10" }]
security_groups = ["web"]
binding = { driver = "mem" }

[[ports]]
id = "client"
network_id = "net"
mac_address = "fa:16:3e:00:01:02"
fixed_ips = [{ subnet_id = "sub", ip_address = "198.18.1.11" }]
security_groups = ["client"]
binding = { driver = "mem" }
"#;

#[test]
fn port_security_and_a_stateful_group_see_a_super_frame_as_one_segment() {
    let mut lab = PortLab::with_ring(SECURED, &["web", "client"], WorkerConfig::default(), BIG);
    let (web, client) = (lab.id(&WEB), lab.id(&CLIENT));
    make_tap(&mut lab.sw, web);
    make_tap(&mut lab.sw, client);
    let seg = |from: &Vm, to: &Vm, ports, seq, ack, flags, data: &[u8]| {
        super_frame(
            to.mac, from.mac, from.ip, to.ip, ports, seq, ack, flags, data,
        )
    };
    let port = (40000, 80);
    let back = (80, 40000);
    let pass = |lab: &mut PortLab, from: &Vm, to: &Vm, framed: Vec<u8>| {
        let (src, dst) = (lab.id(from), lab.id(to));
        let out = lab.sw.exchange(src, &framed);
        assert_eq!(
            out.keys().copied().collect::<Vec<_>>(),
            vec![dst],
            "{} -> {}",
            from.name,
            to.name
        );
        assert_eq!(out[&dst], vec![framed], "whole, header and all");
        lab.sw.assert_conserved();
    };
    pass(
        &mut lab,
        &CLIENT,
        &WEB,
        plain(&seg(&CLIENT, &WEB, port, 1000, 0, 0x02, &[])),
    );
    pass(
        &mut lab,
        &WEB,
        &CLIENT,
        plain(&seg(&WEB, &CLIENT, back, 5000, 1001, 0x12, &[])),
    );
    // 60,000 bytes in one super-frame each way: tracked as one segment of that length,
    // so the next ones, which start where these end, are in the window.
    let data = pattern(60_000);
    pass(
        &mut lab,
        &CLIENT,
        &WEB,
        with_gso(&seg(&CLIENT, &WEB, port, 1001, 5001, 0x10, &data), MSS),
    );
    pass(
        &mut lab,
        &WEB,
        &CLIENT,
        with_gso(&seg(&WEB, &CLIENT, back, 5001, 61_001, 0x10, &data), MSS),
    );
    pass(
        &mut lab,
        &CLIENT,
        &WEB,
        with_gso(&seg(&CLIENT, &WEB, port, 61_001, 65_001, 0x10, &data), MSS),
    );
    // A super-frame to a port nobody allowed, and one from an address the client does
    // not own: each dropped by its stage.
    let before = lab.sw.counters().dropped(DropReason::SgNoRule);
    let out = lab.sw.exchange(
        client,
        &with_gso(&seg(&CLIENT, &WEB, (40001, 22), 1, 0, 0x02, &data), MSS),
    );
    assert!(out.is_empty());
    assert_eq!(lab.sw.counters().dropped(DropReason::SgNoRule), before + 1);
    let spoofed = Vm {
        ip: [198, 18, 1, 99],
        ..CLIENT
    };
    let out = lab.sw.exchange(
        client,
        &with_gso(&seg(&spoofed, &WEB, port, 1, 0, 0x02, &data), MSS),
    );
    assert!(out.is_empty());
    assert_eq!(lab.sw.counters().dropped(DropReason::SpoofedIp), 1);
    lab.sw.assert_conserved();
}

#[test]
fn an_ipv6_super_frame_is_kept_whole_or_segmented_as_its_port_takes_it() {
    let mut sw = switched();
    let (src, dst) = (
        [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
        [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2],
    );
    let data = pattern(30_000);
    let frame_to = |mac: [u8; 6]| {
        let mut l4 = tcp(IP1, IP3, 40000, 5201, 77, 1, 0x18, 64000, &data);
        let len = l4.len() as u32;
        let pseudo = checksum::combine(&[
            checksum::sum(&src),
            checksum::sum(&dst),
            (len >> 16) as u16,
            len as u16,
            6,
        ]);
        l4[16..18].copy_from_slice(&pseudo.to_be_bytes());
        let frame = pollux_tests::frames::ipv6_frame(mac, TAP1_MAC, src, dst, 6, &l4);
        let mut out = vec![0; VNET_HDR_LEN];
        VnetHdr {
            flags: FLAG_NEEDS_CSUM,
            gso_type: pollux_drivers::tap::vnet::GSO_TCPV6,
            hdr_len: 74,
            gso_size: 1428,
            csum_start: 54,
            csum_offset: 16,
            num_buffers: 0,
        }
        .emit(&mut out)
        .unwrap();
        (frame.clone(), [out, frame].concat())
    };
    let (plain_frame, framed) = frame_to(TAP2_MAC);
    let out = sw.exchange(TAP1, &framed);
    assert_eq!(out[&TAP2], vec![framed.clone()], "whole to a TAP port");
    let (_, framed) = frame_to(MEM3_MAC);
    let out = sw.exchange(TAP1, &framed);
    let segs = &out[&MEM3];
    assert_eq!(segs.len(), 30_000usize.div_ceil(1428));
    let mut joined = Vec::new();
    for s in segs {
        assert!(s.len() <= 1514);
        let plen = usize::from(u16::from_be_bytes([s[18], s[19]]));
        assert_eq!(s.len(), 54 + plen);
        let l4 = &s[54..];
        assert_eq!(
            pollux_tests::frames::transport_checksum6(src, dst, 6, l4),
            0
        );
        let seq = u32::from_be_bytes([l4[4], l4[5], l4[6], l4[7]]);
        assert_eq!(seq, 77 + joined.len() as u32);
        joined.extend_from_slice(&l4[20..]);
    }
    assert_eq!(joined, data);
    assert_eq!(plain_frame.len(), 54 + 20 + 30_000);
    sw.assert_conserved();
}

#[test]
fn a_super_frame_into_a_vxlan_tunnel_is_segmented_first() {
    use pollux_dataplane::overlay::{vtep_mac, EndpointSpec};
    use pollux_dataplane::snapshot::PhysnetId;
    use pollux_tests::frames::{arp, BROADCAST};
    use std::net::Ipv4Addr;
    const UPLINK: u16 = 0;
    const TUN_B: u16 = 10;
    const LOCAL: [u8; 4] = [198, 18, 0, 1];
    const HOST_B: [u8; 4] = [198, 18, 0, 2];
    const HOST_B_MAC: [u8; 6] = [0x02, 0xbb, 0, 0, 0, 2];
    const REMOTE: [u8; 6] = [0x02, 0, 0, 0, 0, 5];
    let mut b = SnapshotBuilder::new();
    b.network(NET, Segment::Vxlan { vni: 100 })
        .uplink(PortId(UPLINK), PhysnetId(0))
        .tunnel_endpoint(EndpointSpec {
            uplink: PortId(UPLINK),
            local_ip: Ipv4Addr::from(LOCAL),
        })
        .access_port(PortId(TAP1), NET, &[TAP1_MAC])
        .tunnel_port(PortId(TUN_B), Ipv4Addr::from(HOST_B))
        .remote_port(NET, PortId(TUN_B), &[REMOTE]);
    let mut sw = MemSwitch::with(
        &b,
        &[UPLINK, TAP1],
        WorkerConfig::default(),
        BIG,
        POOL_FRAMES,
    );
    make_tap(&mut sw, TAP1);
    sw.run();
    sw.collect();
    let vtep = vtep_mac(Ipv4Addr::from(LOCAL));
    sw.exchange(
        UPLINK,
        &arp(1, BROADCAST, HOST_B_MAC, HOST_B, [0; 6], LOCAL),
    );
    let data = pattern(20_000);
    let frame = super_frame(REMOTE, TAP1_MAC, IP1, IP2, (40000, 5201), 5, 1, 0x18, &data);
    let out = sw.exchange(TAP1, &with_gso(&frame, MSS));
    let segs = &out[&UPLINK];
    assert_eq!(segs.len(), 20_000usize.div_ceil(usize::from(MSS)));
    let mut joined = Vec::new();
    for s in segs {
        assert_eq!((&s[..6], &s[6..12]), (&HOST_B_MAC[..], &vtep[..]));
        assert_eq!(s[23], 17, "UDP");
        assert_eq!(u16::from_be_bytes([s[36], s[37]]), 4789, "VXLAN");
        let inner = &s[50..];
        assert!(inner.len() <= 1514);
        let (src, dst, _, _, seq, _, payload) = tcp_of(inner);
        assert_eq!((src, dst), (IP1, IP2));
        assert_eq!(seq, 5 + joined.len() as u32);
        joined.extend_from_slice(&payload);
    }
    assert_eq!(joined, data);
    assert_eq!(sw.counters().gso_segments.get(), segs.len() as u64);
    sw.assert_conserved();
}
