//! The benchmark's frames: Ethernet/IPv4/UDP, optionally 802.1Q tagged, with a stamp in
//! the UDP payload (trial tag, sequence number, send time), in the RFC 2544 sizes.
//!
//! A frame size counts the 4-byte FCS, as RFC 2544 does: a 64-byte frame is 60 bytes in
//! memory. Addresses are in 198.18.0.0/15 (RFC 2544's benchmarking range).

/// RFC 2544 frame sizes (with FCS) for Ethernet.
pub const RFC2544_SIZES: [u16; 7] = [64, 128, 256, 512, 1024, 1280, 1518];
/// Bytes of FCS counted in a frame size but not carried in memory.
pub const FCS: usize = 4;
/// UDP port of benchmark frames (discard).
pub const UDP_PORT: u16 = 9;
/// Source address of benchmark frames.
pub const SRC_IP: [u8; 4] = [198, 18, 0, 1];
/// Destination address of benchmark frames (assigned nowhere).
pub const DST_IP: [u8; 4] = [198, 18, 0, 2];
/// Bytes of stamp: tag (u32), sequence number (u32), send time (u64 ns).
pub const STAMP_LEN: usize = 16;
const ETH: usize = 14;
const IP: usize = 20;
const UDP: usize = 8;
/// Offset of the stamp in an untagged frame.
pub const STAMP_OFFSET: usize = ETH + IP + UDP;

/// A stamp read back from a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stamp {
    /// Trial tag.
    pub tag: u32,
    /// Sequence number within the trial.
    pub seq: u32,
    /// Send time, monotonic nanoseconds.
    pub sent_ns: u64,
    /// VLAN ID of the frame's 802.1Q tag, if it has one.
    pub vlan: Option<u16>,
    /// IPv4 source address (what a NAT on the way made of it).
    pub src_ip: [u8; 4],
}

/// An untagged benchmark frame of `size` bytes on the wire (with FCS), stamp zeroed,
/// from [`SRC_IP`] to [`DST_IP`]. Panics if `size` is below 64 or above 1518 + 4.
pub fn build(size: u16, dst: [u8; 6], src: [u8; 6]) -> Vec<u8> {
    build_ip(size, dst, src, SRC_IP, DST_IP)
}

/// [`build`] with other IPv4 addresses (routed scenarios send to a router's MAC and an
/// address on another subnet).
pub fn build_ip(
    size: u16,
    dst: [u8; 6],
    src: [u8; 6],
    src_ip: [u8; 4],
    dst_ip: [u8; 4],
) -> Vec<u8> {
    let size = usize::from(size);
    assert!((64..=1522).contains(&size), "frame size {size}");
    let len = size - FCS;
    let mut f = vec![0u8; len];
    f[..6].copy_from_slice(&dst);
    f[6..12].copy_from_slice(&src);
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    let ip_len = (len - ETH) as u16;
    let ip = &mut f[ETH..ETH + IP];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&ip_len.to_be_bytes());
    ip[8] = 64;
    ip[9] = 17;
    ip[12..16].copy_from_slice(&src_ip);
    ip[16..20].copy_from_slice(&dst_ip);
    let sum = pollux_dataplane::wire::checksum::checksum(ip);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    let udp = &mut f[ETH + IP..ETH + IP + UDP];
    udp[0..2].copy_from_slice(&UDP_PORT.to_be_bytes());
    udp[2..4].copy_from_slice(&UDP_PORT.to_be_bytes());
    udp[4..6].copy_from_slice(&(ip_len - IP as u16).to_be_bytes());
    // UDP checksum 0: none (allowed over IPv4), so the stamp can change freely.
    f
}

/// An 802.1Q-tagged frame from `src` to `dst` on `vlan`, for priming learning switches
/// (64 bytes on the wire).
pub fn tagged_prime(dst: [u8; 6], src: [u8; 6], vlan: Option<u16>) -> Vec<u8> {
    let mut f = build(64, dst, src);
    if let Some(vid) = vlan {
        let tag = [0x81, 0x00, (vid >> 8) as u8 & 0x0f, vid as u8];
        f.splice(12..12, tag);
    }
    f
}

/// Writes the stamp into an untagged frame built by [`build`].
#[inline]
pub fn stamp(frame: &mut [u8], tag: u32, seq: u32, sent_ns: u64) {
    let s = &mut frame[STAMP_OFFSET..STAMP_OFFSET + STAMP_LEN];
    s[0..4].copy_from_slice(&tag.to_be_bytes());
    s[4..8].copy_from_slice(&seq.to_be_bytes());
    s[8..16].copy_from_slice(&sent_ns.to_be_bytes());
}

/// Reads the stamp of a benchmark frame, tagged or not; `None` for anything else.
#[inline]
pub fn parse(frame: &[u8]) -> Option<Stamp> {
    let (vlan, l3) = match frame.get(12..14)? {
        [0x81, 0x00] => {
            let tci = u16::from_be_bytes([*frame.get(14)?, *frame.get(15)?]);
            if frame.get(16..18)? != [0x08, 0x00] {
                return None;
            }
            (Some(tci & 0x0fff), ETH + 4)
        }
        [0x08, 0x00] => (None, ETH),
        _ => return None,
    };
    let ip = frame.get(l3..l3 + IP)?;
    if ip[0] != 0x45 || ip[9] != 17 {
        return None;
    }
    let udp = frame.get(l3 + IP..l3 + IP + UDP)?;
    if udp[2..4] != UDP_PORT.to_be_bytes() {
        return None;
    }
    let s = frame.get(l3 + IP + UDP..l3 + IP + UDP + STAMP_LEN)?;
    Some(Stamp {
        tag: u32::from_be_bytes(s[0..4].try_into().ok()?),
        seq: u32::from_be_bytes(s[4..8].try_into().ok()?),
        sent_ns: u64::from_be_bytes(s[8..16].try_into().ok()?),
        vlan,
        src_ip: ip[12..16].try_into().ok()?,
    })
}

/// The sink's answer to an ARP request for one of `addrs` (a router resolving its next
/// hop: the sink's AF_XDP socket takes every frame, so its kernel never sees the request),
/// from `mac`; `None` for anything else.
pub fn arp_reply(frame: &[u8], addrs: &[[u8; 4]], mac: [u8; 6]) -> Option<Vec<u8>> {
    // Untagged Ethernet/IPv4 ARP request: htype 1, ptype 0x0800, hlen 6, plen 4, op 1.
    let arp = frame.get(ETH..ETH + 28)?;
    if frame.get(12..14)? != [0x08, 0x06] || arp[..8] != [0, 1, 8, 0, 6, 4, 0, 1] {
        return None;
    }
    let target: [u8; 4] = arp[24..28].try_into().ok()?;
    if !addrs.contains(&target) {
        return None;
    }
    let (sha, spa) = (&arp[8..14], &arp[14..18]);
    // Padded to the Ethernet minimum (60 bytes without FCS).
    let mut r = vec![0u8; 60];
    r[..6].copy_from_slice(sha);
    r[6..12].copy_from_slice(&mac);
    r[12..14].copy_from_slice(&[0x08, 0x06]);
    let a = &mut r[ETH..ETH + 28];
    a[..8].copy_from_slice(&[0, 1, 8, 0, 6, 4, 0, 2]);
    a[8..14].copy_from_slice(&mac);
    a[14..18].copy_from_slice(&target);
    a[18..24].copy_from_slice(sha);
    a[24..28].copy_from_slice(spa);
    Some(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: [u8; 6] = [2, 0, 0, 0, 1, 1];
    const B: [u8; 6] = [2, 0, 0, 0, 2, 2];

    #[test]
    fn sizes_exclude_the_fcs_and_the_ip_header_is_valid() {
        for size in RFC2544_SIZES {
            let f = build(size, A, B);
            assert_eq!(f.len(), usize::from(size) - FCS);
            assert_eq!(pollux_dataplane::wire::checksum::checksum(&f[14..34]), 0);
            assert_eq!(
                usize::from(u16::from_be_bytes([f[16], f[17]])),
                f.len() - 14
            );
        }
    }

    #[test]
    fn stamps_round_trip_tagged_and_untagged() {
        let mut f = build(64, A, B);
        stamp(&mut f, 0xdead_beef, 42, 1_234_567_890_123);
        let s = parse(&f).unwrap();
        assert_eq!(
            (s.tag, s.seq, s.sent_ns, s.vlan),
            (0xdead_beef, 42, 1_234_567_890_123, None)
        );
        // What a switch pushing VLAN 100 makes of it.
        let mut t = f.clone();
        t.splice(12..12, [0x81, 0x00, 0x00, 100]);
        let s = parse(&t).unwrap();
        assert_eq!((s.seq, s.vlan), (42, Some(100)));
    }

    /// A router's request for one of the sink's addresses gets the sink's MAC; requests
    /// for other addresses, replies and IP frames get nothing.
    #[test]
    fn the_sink_answers_arp_for_its_addresses_only() {
        let router = [2, 0, 0, 0, 0xfe, 2];
        let mut req = vec![0u8; 42];
        req[..6].copy_from_slice(&[0xff; 6]);
        req[6..12].copy_from_slice(&router);
        req[12..14].copy_from_slice(&[0x08, 0x06]);
        req[14..22].copy_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
        req[22..28].copy_from_slice(&router);
        req[28..32].copy_from_slice(&[203, 0, 113, 10]);
        req[38..42].copy_from_slice(&[203, 0, 113, 1]);
        let r = arp_reply(&req, &[[203, 0, 113, 1]], B).unwrap();
        assert_eq!(r.len(), 60);
        assert_eq!(&r[..6], &router);
        assert_eq!(&r[6..12], &B);
        assert_eq!(&r[20..22], &[0, 2]);
        assert_eq!(&r[22..28], &B);
        assert_eq!(&r[28..32], &[203, 0, 113, 1]);
        assert_eq!(&r[32..38], &router);
        assert_eq!(&r[38..42], &[203, 0, 113, 10]);
        assert_eq!(arp_reply(&req, &[[203, 0, 113, 2]], B), None);
        assert_eq!(arp_reply(&r, &[[203, 0, 113, 10]], B), None);
        assert_eq!(arp_reply(&build(64, A, B), &[DST_IP], B), None);
    }

    #[test]
    fn other_frames_are_not_stamps() {
        assert_eq!(parse(&[0u8; 10]), None);
        let mut f = build(64, A, B);
        f[36] = 0; // UDP destination port 9 -> 0x0009 high byte changed? keep it: change low
        f[37] = 53;
        assert_eq!(parse(&f), None);
        let arp = [0u8; 60];
        assert_eq!(parse(&arp), None);
        assert_eq!(parse(&build(64, A, B)).unwrap().src_ip, SRC_IP);
        let routed = build_ip(64, A, B, [198, 18, 0, 1], [198, 19, 0, 2]);
        assert_eq!(
            pollux_dataplane::wire::checksum::checksum(&routed[14..34]),
            0
        );
        assert_eq!(&routed[30..34], &[198, 19, 0, 2]);
        let p = tagged_prime(A, B, Some(100));
        assert_eq!(p.len(), 64);
        assert_eq!(parse(&p).unwrap().vlan, Some(100));
    }
}
