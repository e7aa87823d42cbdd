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
}

/// An untagged benchmark frame of `size` bytes on the wire (with FCS), stamp zeroed.
/// Panics if `size` is below 64 or above 1518 + 4.
pub fn build(size: u16, dst: [u8; 6], src: [u8; 6]) -> Vec<u8> {
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
    ip[12..16].copy_from_slice(&SRC_IP);
    ip[16..20].copy_from_slice(&DST_IP);
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
    })
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

    #[test]
    fn other_frames_are_not_stamps() {
        assert_eq!(parse(&[0u8; 10]), None);
        let mut f = build(64, A, B);
        f[36] = 0; // UDP destination port 9 -> 0x0009 high byte changed? keep it: change low
        f[37] = 53;
        assert_eq!(parse(&f), None);
        let arp = [0u8; 60];
        assert_eq!(parse(&arp), None);
        let p = tagged_prime(A, B, Some(100));
        assert_eq!(p.len(), 64);
        assert_eq!(parse(&p).unwrap().vlan, Some(100));
    }
}
