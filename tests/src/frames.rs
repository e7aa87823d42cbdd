//! Builders for the test frames, written byte by byte from the 802.3/802.1Q layouts so
//! that they are independent of the code under test.

/// A locally administered unicast MAC ending in `n`.
pub fn mac(n: u8) -> [u8; 6] {
    [0x02, 0, 0, 0, 0, n]
}

/// The broadcast MAC.
pub const BROADCAST: [u8; 6] = [0xff; 6];

/// An Ethernet frame of `len` bytes in all (at least 14, or 18 with a tag) from `src` to
/// `dst`, 802.1Q-tagged with `vid` when given, EtherType 0x88b5 (local experimental), and
/// a payload that starts with `seq` (big-endian) followed by a byte pattern.
pub fn frame(dst: [u8; 6], src: [u8; 6], vid: Option<u16>, seq: u32, len: usize) -> Vec<u8> {
    let mut f = Vec::with_capacity(len.max(22));
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    if let Some(vid) = vid {
        f.extend_from_slice(&[0x81, 0x00]);
        f.extend_from_slice(&vid.to_be_bytes());
    }
    f.extend_from_slice(&[0x88, 0xb5]);
    f.extend_from_slice(&seq.to_be_bytes());
    while f.len() < len {
        f.push(f.len() as u8);
    }
    f
}

/// `frame` without a sequence number of interest: 64 bytes, sequence 0.
pub fn simple(dst: [u8; 6], src: [u8; 6], vid: Option<u16>) -> Vec<u8> {
    frame(dst, src, vid, 0, 64)
}

/// The 802.1Q VID of a frame, or `None` when it is untagged.
pub fn vid_of(frame: &[u8]) -> Option<u16> {
    (frame.len() >= 18 && frame[12..14] == [0x81, 0x00])
        .then(|| u16::from_be_bytes([frame[14], frame[15]]) & 0x0fff)
}

/// The frame with its 802.1Q tag removed (unchanged when untagged).
pub fn untagged(frame: &[u8]) -> Vec<u8> {
    if vid_of(frame).is_some() {
        [&frame[..12], &frame[16..]].concat()
    } else {
        frame.to_vec()
    }
}

/// The sequence number `frame` stamped.
pub fn seq_of(frame: &[u8]) -> u32 {
    let body = untagged(frame);
    u32::from_be_bytes(
        body[14..18]
            .try_into()
            .expect("frame carries a sequence number"),
    )
}

/// The Internet checksum of `data` (RFC 1071), written out here rather than taken from the
/// code under test.
pub fn internet_checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for chunk in data.chunks(2) {
        let word = u16::from_be_bytes([chunk[0], *chunk.get(1).unwrap_or(&0)]);
        sum += u32::from(word);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn ethernet(dst: [u8; 6], src: [u8; 6], vid: Option<u16>, ethertype: u16) -> Vec<u8> {
    let mut f = Vec::with_capacity(64);
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    if let Some(vid) = vid {
        f.extend_from_slice(&[0x81, 0x00]);
        f.extend_from_slice(&vid.to_be_bytes());
    }
    f.extend_from_slice(&ethertype.to_be_bytes());
    f
}

/// An Ethernet/IPv4 ARP frame (operation 1 request, 2 reply), padded to 60 bytes.
pub fn arp(
    op: u16,
    eth_dst: [u8; 6],
    sender_mac: [u8; 6],
    sender_ip: [u8; 4],
    target_mac: [u8; 6],
    target_ip: [u8; 4],
) -> Vec<u8> {
    let mut f = ethernet(eth_dst, sender_mac, None, 0x0806);
    f.extend_from_slice(&[0x00, 0x01, 0x08, 0x00, 6, 4]);
    f.extend_from_slice(&op.to_be_bytes());
    f.extend_from_slice(&sender_mac);
    f.extend_from_slice(&sender_ip);
    f.extend_from_slice(&target_mac);
    f.extend_from_slice(&target_ip);
    f.resize(60, 0);
    f
}

/// An IPv4 packet in an Ethernet frame: a 20-byte header (identification 0x1234, DF set)
/// with a correct checksum, then `payload`.
#[allow(clippy::too_many_arguments)]
pub fn ipv4(
    dst: [u8; 6],
    src: [u8; 6],
    vid: Option<u16>,
    src_ip: [u8; 4],
    dst_ip: [u8; 4],
    ttl: u8,
    protocol: u8,
    payload: &[u8],
) -> Vec<u8> {
    let mut f = ethernet(dst, src, vid, 0x0800);
    let total = (20 + payload.len()) as u16;
    let mut h = vec![0x45, 0x00];
    h.extend_from_slice(&total.to_be_bytes());
    h.extend_from_slice(&[0x12, 0x34, 0x40, 0x00, ttl, protocol, 0, 0]);
    h.extend_from_slice(&src_ip);
    h.extend_from_slice(&dst_ip);
    let sum = internet_checksum(&h);
    h[10..12].copy_from_slice(&sum.to_be_bytes());
    f.extend_from_slice(&h);
    f.extend_from_slice(payload);
    f
}

/// An ICMP echo request (`reply` false) or reply with identifier `id`, sequence `seq` and
/// 32 bytes of data, checksummed.
pub fn icmp_echo(reply: bool, id: u16, seq: u16) -> Vec<u8> {
    let mut m = vec![if reply { 0 } else { 8 }, 0, 0, 0];
    m.extend_from_slice(&id.to_be_bytes());
    m.extend_from_slice(&seq.to_be_bytes());
    m.extend((0..32u8).map(|i| i.wrapping_mul(7)));
    let sum = internet_checksum(&m);
    m[2..4].copy_from_slice(&sum.to_be_bytes());
    m
}

/// Offset of the IPv4 header in an Ethernet frame (after a tag, if any).
pub fn l3_offset(frame: &[u8]) -> usize {
    if vid_of(frame).is_some() {
        18
    } else {
        14
    }
}

/// A UDP datagram (checksummed over the pseudo-header) from `sport` to `dport` carrying
/// `data`, as the payload of [`ipv4`] with protocol 17 between `src_ip` and `dst_ip`.
pub fn udp(src_ip: [u8; 4], dst_ip: [u8; 4], sport: u16, dport: u16, data: &[u8]) -> Vec<u8> {
    let len = (8 + data.len()) as u16;
    let mut u = Vec::with_capacity(usize::from(len));
    u.extend_from_slice(&sport.to_be_bytes());
    u.extend_from_slice(&dport.to_be_bytes());
    u.extend_from_slice(&len.to_be_bytes());
    u.extend_from_slice(&[0, 0]);
    u.extend_from_slice(data);
    let sum = transport_checksum(src_ip, dst_ip, 17, &u);
    u[6..8].copy_from_slice(&(if sum == 0 { 0xffff } else { sum }).to_be_bytes());
    u
}

/// The checksum of a TCP or UDP segment `l4` (checksum field zero, or the result is 0 for
/// a correct one) over the IPv4 pseudo-header.
pub fn transport_checksum(src_ip: [u8; 4], dst_ip: [u8; 4], protocol: u8, l4: &[u8]) -> u16 {
    let mut pseudo = Vec::with_capacity(12 + l4.len());
    pseudo.extend_from_slice(&src_ip);
    pseudo.extend_from_slice(&dst_ip);
    pseudo.extend_from_slice(&[0, protocol]);
    pseudo.extend_from_slice(&(l4.len() as u16).to_be_bytes());
    pseudo.extend_from_slice(l4);
    internet_checksum(&pseudo)
}

/// A VXLAN packet (RFC 7348) in Ethernet/IPv4/UDP: from `src_ip` (MAC `src_mac`) to
/// `dst_ip` (MAC `dst_mac`), UDP source port 54321 to 4789, DF set, IPv4 checksum filled,
/// UDP checksum zero, the I flag and `vni`, then `inner`.
pub fn vxlan(
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    src_ip: [u8; 4],
    dst_ip: [u8; 4],
    vni: u32,
    inner: &[u8],
) -> Vec<u8> {
    let mut f = ethernet(dst_mac, src_mac, None, 0x0800);
    let total = (20 + 8 + 8 + inner.len()) as u16;
    let mut h = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 17, 0, 0];
    h[2..4].copy_from_slice(&total.to_be_bytes());
    h.extend_from_slice(&src_ip);
    h.extend_from_slice(&dst_ip);
    let sum = internet_checksum(&h);
    h[10..12].copy_from_slice(&sum.to_be_bytes());
    f.extend_from_slice(&h);
    f.extend_from_slice(&54321u16.to_be_bytes());
    f.extend_from_slice(&4789u16.to_be_bytes());
    f.extend_from_slice(&(total - 20).to_be_bytes());
    f.extend_from_slice(&[0, 0, 0x08, 0, 0, 0]);
    f.extend_from_slice(&(vni << 8).to_be_bytes());
    f.extend_from_slice(inner);
    f
}

/// An outer IPv4 header (DF, TTL 64, checksummed) of protocol `proto` from `src_ip` to
/// `dst_ip` carrying `payload_len` bytes, behind an Ethernet header.
fn outer_ipv4(
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    src_ip: [u8; 4],
    dst_ip: [u8; 4],
    proto: u8,
    payload_len: usize,
) -> Vec<u8> {
    let mut f = ethernet(dst_mac, src_mac, None, 0x0800);
    let total = (20 + payload_len) as u16;
    let mut h = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, proto, 0, 0];
    h[2..4].copy_from_slice(&total.to_be_bytes());
    h.extend_from_slice(&src_ip);
    h.extend_from_slice(&dst_ip);
    let sum = internet_checksum(&h);
    h[10..12].copy_from_slice(&sum.to_be_bytes());
    f.extend_from_slice(&h);
    f
}

/// A Geneve packet (UDP 54321 → 6081, checksum zero) from `src_ip` to `dst_ip` in VNI
/// `vni`, with the `options` bytes (a multiple of 4) after the base header and protocol
/// type 0x6558, carrying `inner`.
pub fn geneve(
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    src_ip: [u8; 4],
    dst_ip: [u8; 4],
    vni: u32,
    options: &[u8],
    inner: &[u8],
) -> Vec<u8> {
    assert_eq!(options.len() % 4, 0, "Geneve options are whole words");
    let udp_len = 8 + 8 + options.len() + inner.len();
    let mut f = outer_ipv4(dst_mac, src_mac, src_ip, dst_ip, 17, udp_len);
    f.extend_from_slice(&54321u16.to_be_bytes());
    f.extend_from_slice(&6081u16.to_be_bytes());
    f.extend_from_slice(&(udp_len as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(&[(options.len() / 4) as u8, 0, 0x65, 0x58]);
    f.extend_from_slice(&(vni << 8).to_be_bytes());
    f.extend_from_slice(options);
    f.extend_from_slice(inner);
    f
}

/// A GRE packet (IPv4 protocol 47, protocol 0x6558) from `src_ip` to `dst_ip` with key
/// `key`, a checksum if `csum`, a sequence number if `seq` is some, carrying `inner`.
#[allow(clippy::too_many_arguments)]
pub fn gre(
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    src_ip: [u8; 4],
    dst_ip: [u8; 4],
    key: u32,
    csum: bool,
    seq: Option<u32>,
    inner: &[u8],
) -> Vec<u8> {
    let mut g = Vec::new();
    let flags: u16 =
        0x2000 | if csum { 0x8000 } else { 0 } | if seq.is_some() { 0x1000 } else { 0 };
    g.extend_from_slice(&flags.to_be_bytes());
    g.extend_from_slice(&0x6558u16.to_be_bytes());
    if csum {
        g.extend_from_slice(&[0; 4]);
    }
    g.extend_from_slice(&key.to_be_bytes());
    if let Some(seq) = seq {
        g.extend_from_slice(&seq.to_be_bytes());
    }
    g.extend_from_slice(inner);
    if csum {
        let sum = internet_checksum(&g);
        g[4..6].copy_from_slice(&sum.to_be_bytes());
    }
    let mut f = outer_ipv4(dst_mac, src_mac, src_ip, dst_ip, 47, g.len());
    f.extend_from_slice(&g);
    f
}

/// A TCP segment (20-byte header, checksummed) from `sport` to `dport` with sequence and
/// acknowledgment numbers, `flags` (FIN 0x01, SYN 0x02, RST 0x04, ACK 0x10), window
/// `window` and `data`, as the payload of [`ipv4`] with protocol 6.
#[allow(clippy::too_many_arguments)]
pub fn tcp(
    src_ip: [u8; 4],
    dst_ip: [u8; 4],
    sport: u16,
    dport: u16,
    seq: u32,
    ack: u32,
    flags: u8,
    window: u16,
    data: &[u8],
) -> Vec<u8> {
    let mut t = Vec::with_capacity(20 + data.len());
    t.extend_from_slice(&sport.to_be_bytes());
    t.extend_from_slice(&dport.to_be_bytes());
    t.extend_from_slice(&seq.to_be_bytes());
    t.extend_from_slice(&ack.to_be_bytes());
    t.extend_from_slice(&[0x50, flags]);
    t.extend_from_slice(&window.to_be_bytes());
    t.extend_from_slice(&[0, 0, 0, 0]);
    t.extend_from_slice(data);
    let sum = transport_checksum(src_ip, dst_ip, 6, &t);
    t[16..18].copy_from_slice(&sum.to_be_bytes());
    t
}

/// An untagged IPv6 frame from `src_ip` to `dst_ip` with next header `next` and payload
/// `l4` (hop limit 64).
pub fn ipv6_frame(
    dst: [u8; 6],
    src: [u8; 6],
    src_ip: [u8; 16],
    dst_ip: [u8; 16],
    next: u8,
    l4: &[u8],
) -> Vec<u8> {
    let mut f = dst.to_vec();
    f.extend_from_slice(&src);
    f.extend_from_slice(&[0x86, 0xdd, 0x60, 0, 0, 0]);
    f.extend_from_slice(&(l4.len() as u16).to_be_bytes());
    f.extend_from_slice(&[next, 64]);
    f.extend_from_slice(&src_ip);
    f.extend_from_slice(&dst_ip);
    f.extend_from_slice(l4);
    f
}

/// The checksum of an upper-layer header `l4` of protocol `next` over IPv6 (RFC 8200
/// pseudo-header).
pub fn transport_checksum6(src_ip: [u8; 16], dst_ip: [u8; 16], next: u8, l4: &[u8]) -> u16 {
    let mut data = Vec::with_capacity(40 + l4.len());
    data.extend_from_slice(&src_ip);
    data.extend_from_slice(&dst_ip);
    data.extend_from_slice(&(l4.len() as u32).to_be_bytes());
    data.extend_from_slice(&[0, 0, 0, next]);
    data.extend_from_slice(l4);
    internet_checksum(&data)
}

/// A UDP datagram over IPv6 with its checksum.
pub fn udp6(src_ip: [u8; 16], dst_ip: [u8; 16], sport: u16, dport: u16, data: &[u8]) -> Vec<u8> {
    let mut u = Vec::with_capacity(8 + data.len());
    u.extend_from_slice(&sport.to_be_bytes());
    u.extend_from_slice(&dport.to_be_bytes());
    u.extend_from_slice(&((8 + data.len()) as u16).to_be_bytes());
    u.extend_from_slice(&[0, 0]);
    u.extend_from_slice(data);
    let c = transport_checksum6(src_ip, dst_ip, 17, &u);
    u[6..8].copy_from_slice(&c.to_be_bytes());
    u
}

/// An ICMPv6 message of `ty` and `code` with `body` (after the checksum) and its checksum.
pub fn icmpv6(src_ip: [u8; 16], dst_ip: [u8; 16], ty: u8, code: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![ty, code, 0, 0];
    m.extend_from_slice(body);
    let c = transport_checksum6(src_ip, dst_ip, 58, &m);
    m[2..4].copy_from_slice(&c.to_be_bytes());
    m
}
