//! The RST a router address answers a TCP segment with: nothing listens there, and Linux
//! refuses such a segment with a reset (RFC 9293 §3.10.7.1), which a client takes as
//! "connection refused" at once instead of retrying a SYN for a minute.

use crate::wire::checksum;
use crate::wire::{ipv4, IpProtocol, Ipv4Packet};

const FIN: u8 = 0x01;
const SYN: u8 = 0x02;
const RST: u8 = 0x04;
const ACK: u8 = 0x10;

/// IPv4 and TCP headers of the reset, without options.
const RESET_LEN: usize = 40;

/// The reset that refuses a TCP segment: what [`reset_in_place`] writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reset {
    // The refused segment's addresses and ports.
    src: [u8; 4],
    dst: [u8; 4],
    sport: [u8; 2],
    dport: [u8; 2],
    seq: u32,
    ack: u32,
    flags: u8,
}

impl Reset {
    /// The refused segment's source address, whom the reset goes to.
    pub fn source(&self) -> u32 {
        u32::from_be_bytes(self.src)
    }
}

/// The reset that refuses the TCP segment in the IPv4 packet at `l3` of `frame` (its
/// header checked); `None` for a segment that gets none: a reset itself, a fragment (its
/// length is not the segment's), or one cut short.
pub fn reset_for(frame: &[u8], l3: usize) -> Option<Reset> {
    let ip = Ipv4Packet::new_checked(frame.get(l3..)?).ok()?;
    if ip.protocol() != IpProtocol::TCP || ip.is_fragment() {
        return None;
    }
    let header_len = ip.header_len();
    let total = usize::from(ip.total_len());
    let tcp = frame.get(l3 + header_len..l3 + total)?;
    let data_offset = usize::from(tcp.get(12)? >> 4) * 4;
    if data_offset < 20 || data_offset > tcp.len() || frame.len() < l3 + RESET_LEN {
        return None;
    }
    let flags = tcp[13];
    if flags & RST != 0 {
        return None;
    }
    let word = |at: usize| u32::from_be_bytes([tcp[at], tcp[at + 1], tcp[at + 2], tcp[at + 3]]);
    // SYN and FIN each take a sequence number.
    let seg_len = (tcp.len() - data_offset) as u32
        + u32::from(flags & SYN != 0)
        + u32::from(flags & FIN != 0);
    let (seq, ack, flags) = if flags & ACK != 0 {
        (word(8), 0, RST)
    } else {
        (0, word(4).wrapping_add(seg_len), RST | ACK)
    };
    Some(Reset {
        src: ip.src_addr().octets(),
        dst: ip.dst_addr().octets(),
        sport: [tcp[0], tcp[1]],
        dport: [tcp[2], tcp[3]],
        seq,
        ack,
        flags,
    })
}

/// Writes `reset` (from [`reset_for`] on the same frame) over the IPv4 packet at `l3` of
/// `frame` and returns the frame's new length. The Ethernet header is the caller's.
pub fn write(frame: &mut [u8], l3: usize, reset: &Reset) -> usize {
    let out = &mut frame[l3..l3 + RESET_LEN];
    out.fill(0);
    out[0] = 0x45;
    out[2..4].copy_from_slice(&(RESET_LEN as u16).to_be_bytes());
    out[6] = 0x40; // DF, as Linux sends its resets.
    out[8] = ipv4::DEFAULT_TTL;
    out[9] = IpProtocol::TCP.0;
    out[12..16].copy_from_slice(&reset.dst);
    out[16..20].copy_from_slice(&reset.src);
    let header = checksum::checksum(&out[..20]);
    out[10..12].copy_from_slice(&header.to_be_bytes());
    let t = &mut out[20..];
    t[0..2].copy_from_slice(&reset.dport);
    t[2..4].copy_from_slice(&reset.sport);
    t[4..8].copy_from_slice(&reset.seq.to_be_bytes());
    t[8..12].copy_from_slice(&reset.ack.to_be_bytes());
    t[12] = 5 << 4;
    t[13] = reset.flags;
    let pseudo =
        checksum::pseudo_header_v4(reset.dst.into(), reset.src.into(), IpProtocol::TCP.0, 20);
    let sum = !checksum::add(checksum::sum(t), pseudo);
    t[16..18].copy_from_slice(&sum.to_be_bytes());
    l3 + RESET_LEN
}

/// [`reset_for`] then [`write`]: the frame turned into its reset, in place.
#[cfg(test)]
fn reset_in_place(frame: &mut [u8], l3: usize) -> Option<usize> {
    let reset = reset_for(frame, l3)?;
    Some(write(frame, l3, &reset))
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLIENT: [u8; 4] = [198, 18, 1, 10];
    const ROUTER: [u8; 4] = [198, 18, 1, 1];

    /// A frame (14 bytes of Ethernet) holding a TCP segment with `flags`, `seq`, `ack`
    /// and `payload` bytes of data.
    fn segment(flags: u8, seq: u32, ack: u32, payload: usize) -> Vec<u8> {
        let total = 40 + payload;
        let mut f = vec![0u8; 14 + total];
        let ip = &mut f[14..];
        ip[0] = 0x45;
        ip[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        ip[8] = 64;
        ip[9] = 6;
        ip[12..16].copy_from_slice(&CLIENT);
        ip[16..20].copy_from_slice(&ROUTER);
        let sum = checksum::checksum(&ip[..20]);
        ip[10..12].copy_from_slice(&sum.to_be_bytes());
        let t = &mut ip[20..];
        t[0..2].copy_from_slice(&40000u16.to_be_bytes());
        t[2..4].copy_from_slice(&22u16.to_be_bytes());
        t[4..8].copy_from_slice(&seq.to_be_bytes());
        t[8..12].copy_from_slice(&ack.to_be_bytes());
        t[12] = 5 << 4;
        t[13] = flags;
        f
    }

    fn check(f: &[u8]) -> (u32, u32, u8) {
        let ip = &f[14..];
        assert_eq!(checksum::checksum(&ip[..20]), 0);
        assert_eq!(&ip[12..16], &ROUTER);
        assert_eq!(&ip[16..20], &CLIENT);
        let pseudo = checksum::pseudo_header_v4(ROUTER.into(), CLIENT.into(), 6, 20);
        assert_eq!(!checksum::add(checksum::sum(&ip[20..40]), pseudo), 0);
        let t = &ip[20..40];
        assert_eq!(u16::from_be_bytes([t[0], t[1]]), 22);
        assert_eq!(u16::from_be_bytes([t[2], t[3]]), 40000);
        let word = |at: usize| u32::from_be_bytes(t[at..at + 4].try_into().unwrap());
        (word(4), word(8), t[13])
    }

    #[test]
    fn a_syn_gets_rst_ack_of_the_syn_and_a_segment_with_ack_gets_rst_at_its_ack() {
        let mut f = segment(SYN, 1000, 0, 0);
        assert_eq!(reset_in_place(&mut f, 14), Some(54));
        assert_eq!(check(&f[..54]), (0, 1001, RST | ACK));

        let mut f = segment(ACK | 0x08, 5000, 777, 100);
        assert_eq!(reset_in_place(&mut f, 14), Some(54));
        assert_eq!(check(&f[..54]), (777, 0, RST));

        let mut f = segment(FIN, 9, 0, 10);
        reset_in_place(&mut f, 14).unwrap();
        assert_eq!(check(&f[..54]), (0, 9 + 10 + 1, RST | ACK));
    }

    #[test]
    fn resets_and_fragments_get_nothing() {
        let mut f = segment(RST | ACK, 1, 1, 0);
        let before = f.clone();
        assert_eq!(reset_in_place(&mut f, 14), None);
        assert_eq!(f, before);
        let mut f = segment(SYN, 1, 0, 0);
        f[14 + 6] = 0x20; // more fragments
        assert_eq!(reset_in_place(&mut f, 14), None);
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_frames_never_panic(mut data in proptest::collection::vec(proptest::arbitrary::any::<u8>(), 0..120)) {
            if data.len() > 23 {
                data[14] = 0x45;
                data[23] = 6;
            }
            if let Some(len) = reset_in_place(&mut data, 14) {
                proptest::prop_assert_eq!(len, 54);
                proptest::prop_assert_eq!(checksum::checksum(&data[14..34]), 0);
            }
        }
    }
}
