//! IPv4 fragmentation (RFC 791 §3.2, RFC 1812 §5.2.6) for datagrams larger than the
//! egress MTU.
//!
//! [`fragment`] hands each fragment to a callback as two borrowed pieces, a header built
//! on the stack and a slice of the original payload, so the caller copies every byte
//! exactly once, straight into the frame it sends. [`fragment_into`] assembles each
//! fragment in one caller buffer first, for callers that want contiguous bytes.
//! [`fragment_count`] tells in advance how many frames a datagram needs, so a caller can
//! take them all from the pool before emitting any (a datagram missing one fragment is
//! worthless to the receiver). Nothing allocates and no input makes anything panic.
//!
//! The router does not reassemble; it only splits. Splitting a datagram that is already a
//! fragment is allowed and keeps its place in the original datagram (offsets continue
//! from its offset, the last piece keeps its MF flag).

use core::fmt;

use crate::wire::ipv4::HEADER_LEN;
use crate::wire::Ipv4Packet;

/// The smallest MTU an IPv4 link may have: every module must forward a 68-byte datagram
/// without fragmenting it (RFC 791), which leaves room for a 60-byte header and 8 bytes.
pub const MIN_MTU: u16 = 68;
/// Longest IPv4 header.
const MAX_HEADER_LEN: usize = 60;
/// Most option bytes a header holds.
const MAX_OPTIONS_LEN: usize = MAX_HEADER_LEN - HEADER_LEN;
const FLAG_MF: u16 = 0x2000;
/// Option type bit saying the option is copied into every fragment.
const OPTION_COPIED: u8 = 0x80;
const OPTION_END: u8 = 0;
const OPTION_NOP: u8 = 1;
/// Field offsets in the fixed header.
const FLAGS_OFFSET: core::ops::Range<usize> = 6..8;

/// Why a datagram was not fragmented.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FragError {
    /// The MTU is below [`MIN_MTU`]: a configuration error, not a property of the datagram.
    MtuTooSmall,
    /// Too big and DF is set: the caller sends "fragmentation needed" with the MTU.
    DontFragment,
    /// Shorter than an IPv4 header or than its total length.
    Truncated,
    /// Not IPv4, IHL below 5, total length below the header length, options whose
    /// lengths run past the header, or a payload that would end beyond offset 65535.
    Malformed,
    /// The header checksum is wrong. Fragments get fresh checksums, so splitting a
    /// corrupted header would make the corruption look valid.
    BadChecksum,
    /// [`fragment_into`]'s buffer cannot hold the largest fragment.
    BufferTooSmall,
    /// The callback returned `false` after this many fragments had been emitted.
    Stopped {
        /// Fragments the callback accepted before refusing one.
        emitted: usize,
    },
}

impl FragError {
    /// Stable snake_case name, for metrics labels and the CLI.
    pub const fn name(self) -> &'static str {
        match self {
            FragError::MtuTooSmall => "mtu_too_small",
            FragError::DontFragment => "dont_fragment",
            FragError::Truncated => "truncated",
            FragError::Malformed => "malformed",
            FragError::BadChecksum => "bad_checksum",
            FragError::BufferTooSmall => "buffer_too_small",
            FragError::Stopped { .. } => "stopped",
        }
    }
}

impl fmt::Display for FragError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FragError::Stopped { emitted } => write!(f, "stopped after {emitted} fragments"),
            _ => f.write_str(self.name()),
        }
    }
}

impl std::error::Error for FragError {}

/// One fragment: its header, then its payload, which together are the datagram to send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fragment<'a> {
    /// The IPv4 header, options included, checksum filled.
    pub header: &'a [u8],
    /// The payload bytes, borrowed from the original datagram.
    pub payload: &'a [u8],
}

impl Fragment<'_> {
    /// Length of the fragment (its total length field).
    #[inline]
    pub fn len(&self) -> usize {
        self.header.len() + self.payload.len()
    }

    /// Never true: a fragment has at least a header.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Copies the fragment to the start of `out`; `None` if it does not fit.
    #[inline]
    pub fn write_to(&self, out: &mut [u8]) -> Option<usize> {
        let len = self.len();
        let out = out.get_mut(..len)?;
        let (h, p) = out.split_at_mut(self.header.len());
        h.copy_from_slice(self.header);
        p.copy_from_slice(self.payload);
        Some(len)
    }
}

/// Splits `packet` (an IPv4 datagram from its header on; bytes past its total length, such
/// as Ethernet padding, are ignored) into fragments of at most `mtu` bytes and passes each
/// to `emit`, first to last. Returns how many were emitted.
///
/// A datagram that already fits is passed through as one piece, unchanged, whatever its
/// DF flag. Otherwise every fragment but the last carries a multiple of 8 payload bytes
/// and MF; the first keeps the whole original header (all options), the others carry
/// only the options whose copy flag is set, packed and padded to 32 bits; each gets its
/// own total length and checksum. `emit` returning `false` stops the split
/// ([`FragError::Stopped`]).
pub fn fragment<F>(packet: &[u8], mtu: u16, mut emit: F) -> Result<usize, FragError>
where
    F: FnMut(Fragment<'_>) -> bool,
{
    if mtu < MIN_MTU {
        return Err(FragError::MtuTooSmall);
    }
    let ip = Ipv4Packet::new_checked(packet).map_err(|e| match e {
        crate::wire::Error::Truncated => FragError::Truncated,
        _ => FragError::Malformed,
    })?;
    if !ip.verify_checksum() {
        return Err(FragError::BadChecksum);
    }
    let header_len = ip.header_len();
    let total_len = usize::from(ip.total_len());
    let original_header = packet.get(..header_len).ok_or(FragError::Truncated)?;
    let payload = packet
        .get(header_len..total_len)
        .ok_or(FragError::Truncated)?;
    let mtu = usize::from(mtu);
    if total_len <= mtu {
        return if emit(Fragment {
            header: original_header,
            payload,
        }) {
            Ok(1)
        } else {
            Err(FragError::Stopped { emitted: 0 })
        };
    }
    if ip.dont_frag() {
        return Err(FragError::DontFragment);
    }
    let base_offset = usize::from(ip.frag_offset());
    // Offsets count 8-byte units in 13 bits; a payload ending past 65535 cannot belong to
    // any datagram, and this bound also keeps every offset below representable.
    if base_offset + payload.len() > usize::from(u16::MAX) {
        return Err(FragError::Malformed);
    }
    let last_has_mf = ip.more_frags();

    let mut copied = [0u8; MAX_OPTIONS_LEN];
    let copied_len = copied_options(ip.options(), &mut copied)?;
    let later_header_len = (HEADER_LEN + copied_len + 3) & !3;

    let mut header = [0u8; MAX_HEADER_LEN];
    let mut offset = 0;
    let mut emitted = 0;
    while offset < payload.len() {
        let this_header_len = if offset == 0 {
            header_len
        } else {
            later_header_len
        };
        // `mtu >= 68` and headers are at most 60 bytes, so this is at least 8.
        let room = mtu - this_header_len;
        let remaining = payload.len() - offset;
        let (len, last) = if remaining <= room {
            (remaining, true)
        } else {
            (room & !7, false)
        };

        let h = header
            .get_mut(..this_header_len)
            .ok_or(FragError::Malformed)?;
        if offset == 0 {
            h.copy_from_slice(original_header);
        } else {
            let (fixed, options) = h.split_at_mut(HEADER_LEN);
            fixed.copy_from_slice(
                original_header
                    .get(..HEADER_LEN)
                    .unwrap_or(&[0; HEADER_LEN]),
            );
            options.fill(OPTION_END);
            if let (Some(dst), Some(src)) =
                (options.get_mut(..copied_len), copied.get(..copied_len))
            {
                dst.copy_from_slice(src);
            }
        }
        // Offset and MF in one word; DF is clear (checked above) and the reserved bit
        // must be zero (RFC 791).
        let mut flags = ((base_offset + offset) / 8) as u16;
        if !last || last_has_mf {
            flags |= FLAG_MF;
        }
        if let Some(f) = h.get_mut(FLAGS_OFFSET) {
            f.copy_from_slice(&flags.to_be_bytes());
        }
        let mut view = Ipv4Packet::new_unchecked(&mut *h);
        view.set_header_len(this_header_len);
        // At most the original total length, which is 16 bits.
        view.set_total_len((this_header_len + len) as u16);
        view.fill_checksum();

        let piece = payload
            .get(offset..offset + len)
            .ok_or(FragError::Truncated)?;
        if !emit(Fragment {
            header: h,
            payload: piece,
        }) {
            return Err(FragError::Stopped { emitted });
        }
        emitted += 1;
        offset += len;
    }
    Ok(emitted)
}

/// [`fragment`], with each fragment assembled at the start of `buf` and passed to `emit`
/// as one slice. `buf` must hold the largest fragment, `min(mtu, total length)` bytes
/// ([`FragError::BufferTooSmall`] before anything is emitted).
pub fn fragment_into<F>(
    packet: &[u8],
    mtu: u16,
    buf: &mut [u8],
    mut emit: F,
) -> Result<usize, FragError>
where
    F: FnMut(&[u8]) -> bool,
{
    let total_len = match packet {
        [_, _, hi, lo, ..] => usize::from(u16::from_be_bytes([*hi, *lo])),
        _ => 0,
    };
    if buf.len() < total_len.min(packet.len()).min(usize::from(mtu)) {
        return Err(FragError::BufferTooSmall);
    }
    fragment(packet, mtu, |f| match f.write_to(buf) {
        Some(len) => buf.get(..len).is_some_and(&mut emit),
        None => false,
    })
}

/// How many fragments [`fragment`] would emit for `packet` at `mtu` (1 if it fits), or
/// the error it would return.
pub fn fragment_count(packet: &[u8], mtu: u16) -> Result<usize, FragError> {
    fragment(packet, mtu, |_| true)
}

/// Collects the options whose copy flag is set into `out`; returns their length.
fn copied_options(options: &[u8], out: &mut [u8; MAX_OPTIONS_LEN]) -> Result<usize, FragError> {
    let mut i = 0;
    let mut n = 0;
    while let Some(&kind) = options.get(i) {
        match kind {
            // Everything after End of Options is padding.
            OPTION_END => break,
            // A NOP's copy flag is clear: alignment padding is not copied.
            OPTION_NOP => i += 1,
            _ => {
                let len = usize::from(*options.get(i + 1).ok_or(FragError::Malformed)?);
                let option = options.get(i..i + len).ok_or(FragError::Malformed)?;
                if len < 2 {
                    return Err(FragError::Malformed);
                }
                if kind & OPTION_COPIED != 0 {
                    // `n <= i`, so this fits whenever the option fits in the options.
                    out.get_mut(n..n + len)
                        .ok_or(FragError::Malformed)?
                        .copy_from_slice(option);
                    n += len;
                }
                i += len;
            }
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// UDP-ish 198.18.1.10 -> 198.18.2.10, id 0xabcd, TTL 63: the fixed header of a
    /// 120-byte datagram whose payload is the bytes 0..100.
    const HEADER_120: [u8; 20] = [
        0x45, 0x00, 0x00, 0x78, 0xab, 0xcd, 0x00, 0x00, 0x3f, 0x11, 0x40, 0x6f, 0xc6, 0x12, 0x01,
        0x0a, 0xc6, 0x12, 0x02, 0x0a,
    ];
    /// Its fragments' headers at MTU 68 (48 + 48 + 4 payload bytes), computed with Python.
    const FRAG_HEADERS_68: [[u8; 20]; 3] = [
        [
            0x45, 0x00, 0x00, 0x44, 0xab, 0xcd, 0x20, 0x00, 0x3f, 0x11, 0x20, 0xa3, 0xc6, 0x12,
            0x01, 0x0a, 0xc6, 0x12, 0x02, 0x0a,
        ],
        [
            0x45, 0x00, 0x00, 0x44, 0xab, 0xcd, 0x20, 0x06, 0x3f, 0x11, 0x20, 0x9d, 0xc6, 0x12,
            0x01, 0x0a, 0xc6, 0x12, 0x02, 0x0a,
        ],
        [
            0x45, 0x00, 0x00, 0x18, 0xab, 0xcd, 0x00, 0x0c, 0x3f, 0x11, 0x40, 0xc3, 0xc6, 0x12,
            0x01, 0x0a, 0xc6, 0x12, 0x02, 0x0a,
        ],
    ];

    /// The same datagram with 12 option bytes: Router Alert (copied), Record Route (not
    /// copied), NOP.
    const HEADER_OPTIONS: [u8; 32] = [
        0x48, 0x00, 0x00, 0x84, 0xab, 0xcd, 0x00, 0x00, 0x3f, 0x11, 0x9e, 0x56, 0xc6, 0x12, 0x01,
        0x0a, 0xc6, 0x12, 0x02, 0x0a, 0x94, 0x04, 0x00, 0x00, 0x07, 0x07, 0x04, 0x00, 0x00, 0x00,
        0x00, 0x01,
    ];
    /// Its first fragment's header at MTU 68: all options, 32 payload bytes.
    const OPT_FRAG0: [u8; 32] = [
        0x48, 0x00, 0x00, 0x40, 0xab, 0xcd, 0x20, 0x00, 0x3f, 0x11, 0x7e, 0x9a, 0xc6, 0x12, 0x01,
        0x0a, 0xc6, 0x12, 0x02, 0x0a, 0x94, 0x04, 0x00, 0x00, 0x07, 0x07, 0x04, 0x00, 0x00, 0x00,
        0x00, 0x01,
    ];
    /// The second: Router Alert only, 40 payload bytes at offset 32.
    const OPT_FRAG1: [u8; 24] = [
        0x46, 0x00, 0x00, 0x40, 0xab, 0xcd, 0x20, 0x04, 0x3f, 0x11, 0x8b, 0x9e, 0xc6, 0x12, 0x01,
        0x0a, 0xc6, 0x12, 0x02, 0x0a, 0x94, 0x04, 0x00, 0x00,
    ];
    /// The last: 28 payload bytes at offset 72.
    const OPT_FRAG2: [u8; 24] = [
        0x46, 0x00, 0x00, 0x34, 0xab, 0xcd, 0x00, 0x09, 0x3f, 0x11, 0xab, 0xa5, 0xc6, 0x12, 0x01,
        0x0a, 0xc6, 0x12, 0x02, 0x0a, 0x94, 0x04, 0x00, 0x00,
    ];

    fn datagram(header: &[u8]) -> Vec<u8> {
        [header, &(0..100u8).collect::<Vec<_>>()].concat()
    }

    fn fragments(packet: &[u8], mtu: u16) -> Result<Vec<Vec<u8>>, FragError> {
        let mut out = Vec::new();
        fragment(packet, mtu, |f| {
            out.push([f.header, f.payload].concat());
            true
        })?;
        Ok(out)
    }

    /// A test reassembler: checks the fragments are one contiguous run of one datagram and
    /// rebuilds it from the first fragment's header.
    fn reassemble(frags: &[Vec<u8>]) -> Vec<u8> {
        let mut parts: Vec<(usize, bool, &[u8], &[u8])> = frags
            .iter()
            .map(|f| {
                let p = Ipv4Packet::new_checked(&f[..]).unwrap();
                assert!(p.verify_checksum());
                assert!(!p.dont_frag());
                let hl = p.header_len();
                (
                    usize::from(p.frag_offset()),
                    p.more_frags(),
                    &f[..hl],
                    &f[hl..],
                )
            })
            .collect();
        parts.sort_by_key(|p| p.0);
        let (first_offset, _, header, _) = parts[0];
        let mut payload = Vec::new();
        for (offset, _, h, data) in &parts {
            assert_eq!(*offset, first_offset + payload.len(), "gap or overlap");
            // Same datagram: identification, protocol, addresses, TTL, DSCP.
            assert_eq!(h[1], header[1]);
            assert_eq!(h[4..6], header[4..6]);
            assert_eq!(h[8..10], header[8..10]);
            assert_eq!(h[12..20], header[12..20]);
            payload.extend_from_slice(data);
        }
        let last_mf = parts.last().unwrap().1;
        let mut out = [header, &payload[..]].concat();
        let mut p = Ipv4Packet::new_unchecked(&mut out[..]);
        p.set_total_len((header.len() + payload.len()) as u16);
        p.set_more_frags(last_mf);
        p.fill_checksum();
        out
    }

    /// Per-fragment rules: within the MTU, 8-byte multiples but for the last, MF on all
    /// but the last, offsets following on, later headers carrying copied options only.
    fn check_fragments(original: &[u8], mtu: u16, frags: &[Vec<u8>]) {
        let orig = Ipv4Packet::new_checked(original).unwrap();
        let mut expected_offset = usize::from(orig.frag_offset());
        for (i, f) in frags.iter().enumerate() {
            let last = i + 1 == frags.len();
            assert!(f.len() <= usize::from(mtu), "{} > {mtu}", f.len());
            let p = Ipv4Packet::new_checked(&f[..]).unwrap();
            assert!(p.verify_checksum());
            assert_eq!(usize::from(p.total_len()), f.len());
            assert_eq!(usize::from(p.frag_offset()), expected_offset);
            assert_eq!(p.more_frags(), !last || orig.more_frags());
            assert_eq!(f[6] & 0x80, 0, "reserved bit");
            if !last {
                assert_eq!(p.payload().len() % 8, 0);
            }
            if i == 0 {
                assert_eq!(p.options(), orig.options());
            } else {
                let mut copied = [0u8; MAX_OPTIONS_LEN];
                let n = copied_options(orig.options(), &mut copied).unwrap();
                assert_eq!(&p.options()[..n], &copied[..n]);
                assert!(p.options()[n..].iter().all(|&b| b == 0));
                assert!(p.options().len() - n < 4);
            }
            expected_offset += p.payload().len();
        }
    }

    #[test]
    fn fixture_at_mtu_68() {
        let packet = datagram(&HEADER_120);
        assert!(Ipv4Packet::new_checked(&packet[..])
            .unwrap()
            .verify_checksum());
        let frags = fragments(&packet, 68).unwrap();
        assert_eq!(frags.len(), 3);
        let payload: Vec<u8> = (0..100).collect();
        for (f, (h, range)) in
            frags
                .iter()
                .zip(FRAG_HEADERS_68.iter().zip([0..48, 48..96, 96..100]))
        {
            assert_eq!(&f[..20], &h[..]);
            assert_eq!(&f[20..], &payload[range]);
        }
        check_fragments(&packet, 68, &frags);
        assert_eq!(reassemble(&frags), packet);
        assert_eq!(fragment_count(&packet, 68), Ok(3));
    }

    #[test]
    fn fixture_with_options() {
        let packet = datagram(&HEADER_OPTIONS);
        assert!(Ipv4Packet::new_checked(&packet[..])
            .unwrap()
            .verify_checksum());
        let frags = fragments(&packet, 68).unwrap();
        let payload: Vec<u8> = (0..100).collect();
        assert_eq!(frags.len(), 3);
        assert_eq!(&frags[0][..32], &OPT_FRAG0[..]);
        assert_eq!(&frags[0][32..], &payload[..32]);
        assert_eq!(&frags[1][..24], &OPT_FRAG1[..]);
        assert_eq!(&frags[1][24..], &payload[32..72]);
        assert_eq!(&frags[2][..24], &OPT_FRAG2[..]);
        assert_eq!(&frags[2][24..], &payload[72..]);
        check_fragments(&packet, 68, &frags);
        assert_eq!(reassemble(&frags), packet);
    }

    /// A 4000-byte datagram with a 40-byte option area: LSRR (copied, 11 bytes), NOP,
    /// Timestamp (not copied, 12 bytes), Security (copied, 11 bytes), padding.
    fn big_with_options() -> Vec<u8> {
        let options: [u8; 40] = [
            0x83, 0x0b, 0x04, 198, 18, 3, 1, 198, 18, 4, 1,    // LSRR
            0x01, // NOP
            0x44, 0x0c, 0x05, 0x00, 0, 0, 0, 0, 0, 0, 0, 0, // timestamp
            0x82, 0x0b, 0, 0, 0, 0, 0, 0, 0, 0, 0, // security
            0x00, 0, 0, 0, 0, // end of options, padding
        ];
        let mut p = vec![0u8; 4000];
        p[..20].copy_from_slice(&HEADER_120);
        p[20..60].copy_from_slice(&options);
        for (i, b) in p[60..].iter_mut().enumerate() {
            *b = (i * 13 + 5) as u8;
        }
        let mut v = Ipv4Packet::new_unchecked(&mut p[..]);
        v.set_header_len(60);
        v.set_total_len(4000);
        v.fill_checksum();
        p
    }

    #[test]
    fn reassembles_at_many_mtus() {
        let plain = {
            let mut p = big_with_options();
            p.drain(20..60);
            let mut v = Ipv4Packet::new_unchecked(&mut p[..]);
            v.set_header_len(20);
            v.set_total_len(3960);
            v.fill_checksum();
            p
        };
        for packet in [plain, big_with_options()] {
            for mtu in [68, 69, 75, 76, 100, 576, 1000, 1280, 1450, 1499, 1500, 3959] {
                let frags = fragments(&packet, mtu).unwrap();
                assert!(frags.len() > 1);
                check_fragments(&packet, mtu, &frags);
                assert_eq!(reassemble(&frags), packet, "mtu {mtu}");
                assert_eq!(fragment_count(&packet, mtu), Ok(frags.len()));
            }
        }
        // Later fragments carry LSRR and Security, 22 bytes padded to 24.
        let frags = fragments(&big_with_options(), 1500).unwrap();
        assert_eq!(
            Ipv4Packet::new_checked(&frags[1][..]).unwrap().header_len(),
            44
        );
        assert_eq!(&frags[1][20..31], &big_with_options()[20..31]);
        assert_eq!(&frags[1][31..42], &big_with_options()[44..55]);
        assert_eq!(&frags[1][42..44], &[0, 0]);
    }

    #[test]
    fn refragments_a_fragment() {
        // A middle fragment: offset 800, MF set, 100 payload bytes.
        let mut middle = datagram(&HEADER_120);
        {
            let mut p = Ipv4Packet::new_unchecked(&mut middle[..]);
            p.set_frag_offset(800);
            p.set_more_frags(true);
            p.fill_checksum();
        }
        // The last fragment of a datagram: offset 1480, MF clear.
        let mut last = datagram(&HEADER_OPTIONS);
        {
            let mut p = Ipv4Packet::new_unchecked(&mut last[..]);
            p.set_frag_offset(1480);
            p.fill_checksum();
        }
        for packet in [middle, last] {
            for mtu in [68, 72, 100, 119] {
                let frags = fragments(&packet, mtu).unwrap();
                check_fragments(&packet, mtu, &frags);
                assert_eq!(reassemble(&frags), packet, "mtu {mtu}");
            }
        }
    }

    #[test]
    fn fitting_datagrams_pass_unchanged() {
        let mut packet = datagram(&HEADER_120);
        // Even with DF, and with Ethernet padding behind it.
        Ipv4Packet::new_unchecked(&mut packet[..]).set_dont_frag(true);
        Ipv4Packet::new_unchecked(&mut packet[..]).fill_checksum();
        let padded = [&packet[..], &[0xaa; 4]].concat();
        for mtu in [120, 1500, u16::MAX] {
            let frags = fragments(&padded, mtu).unwrap();
            assert_eq!(frags, vec![packet.clone()]);
        }
        let mut buf = [0u8; 120];
        let mut seen = 0;
        assert_eq!(
            fragment_into(&padded, 1500, &mut buf, |f| {
                seen += 1;
                f == &packet[..]
            }),
            Ok(1)
        );
        assert_eq!(seen, 1);
    }

    #[test]
    fn fragment_into_matches_fragment() {
        let packet = big_with_options();
        let mut buf = [0u8; 1500];
        let mut got = Vec::new();
        let n = fragment_into(&packet, 1500, &mut buf, |f| {
            got.push(f.to_vec());
            true
        })
        .unwrap();
        assert_eq!(n, got.len());
        assert_eq!(got, fragments(&packet, 1500).unwrap());
        assert_eq!(
            fragment_into(&packet, 1500, &mut [0u8; 1499], |_| true),
            Err(FragError::BufferTooSmall)
        );
    }

    #[test]
    fn errors() {
        let packet = datagram(&HEADER_120);
        let fix = |edit: &dyn Fn(&mut Ipv4Packet<&mut [u8]>)| {
            let mut p = packet.clone();
            let mut v = Ipv4Packet::new_unchecked(&mut p[..]);
            edit(&mut v);
            v.fill_checksum();
            p
        };
        assert_eq!(fragments(&packet, 67), Err(FragError::MtuTooSmall));
        assert_eq!(fragments(&packet, 0), Err(FragError::MtuTooSmall));
        let df = fix(&|p| p.set_dont_frag(true));
        assert_eq!(fragments(&df, 100), Err(FragError::DontFragment));
        assert_eq!(fragments(&packet[..19], 100), Err(FragError::Truncated));
        assert_eq!(fragments(&packet[..119], 100), Err(FragError::Truncated));
        assert_eq!(fragments(&[], 100), Err(FragError::Truncated));
        assert_eq!(
            fragments(&fix(&|p| p.set_version(6)), 100),
            Err(FragError::Malformed)
        );
        assert_eq!(
            fragments(&fix(&|p| p.set_header_len(16)), 100),
            Err(FragError::Malformed)
        );
        let mut bad = packet.clone();
        bad[10] ^= 1;
        assert_eq!(fragments(&bad, 100), Err(FragError::BadChecksum));
        // Offsets past 65535.
        let far = fix(&|p| p.set_frag_offset(65_480));
        assert_eq!(fragments(&far, 100), Err(FragError::Malformed));
        let edge = fix(&|p| p.set_frag_offset(65_432));
        assert!(fragments(&edge, 100).is_ok());

        // Options whose lengths are wrong.
        for options in [
            [0x94, 0x01, 0x00, 0x00], // length below 2
            [0x01, 0x94, 0x04, 0x00], // runs past the header
            [0x01, 0x01, 0x01, 0x94], // no length byte
        ] {
            let mut p = datagram(&HEADER_OPTIONS[..24]);
            p[20..24].copy_from_slice(&options);
            let mut v = Ipv4Packet::new_unchecked(&mut p[..]);
            v.set_header_len(24);
            v.set_total_len(124);
            v.fill_checksum();
            assert_eq!(
                fragments(&p, 100),
                Err(FragError::Malformed),
                "{options:02x?}"
            );
            // Fitting, it is passed on as it is: options are only read to split.
            assert_eq!(fragment_count(&p, 124), Ok(1));
        }

        // The callback stops the split.
        let mut calls = 0;
        assert_eq!(
            fragment(&packet, 68, |_| {
                calls += 1;
                calls < 2
            }),
            Err(FragError::Stopped { emitted: 1 })
        );
        assert_eq!(
            fragment(&packet, 1500, |_| false),
            Err(FragError::Stopped { emitted: 0 })
        );
        assert_eq!(
            FragError::Stopped { emitted: 1 }.to_string(),
            "stopped after 1 fragments"
        );
        assert_eq!(FragError::DontFragment.to_string(), "dont_fragment");
    }

    #[test]
    fn fragment_write_to() {
        let f = Fragment {
            header: &[1, 2],
            payload: &[3],
        };
        assert_eq!((f.len(), f.is_empty()), (3, false));
        let mut out = [0u8; 4];
        assert_eq!(f.write_to(&mut out), Some(3));
        assert_eq!(out, [1, 2, 3, 0]);
        assert_eq!(f.write_to(&mut out[..2]), None);
    }

    /// Valid datagrams with DF clear: random options (copied and not), payload length,
    /// offset and MF.
    fn arb_datagram() -> impl Strategy<Value = Vec<u8>> {
        let option = prop_oneof![
            Just(vec![0x01u8]),
            Just(vec![0x94, 0x04, 0x00, 0x00]),
            Just(vec![0x07, 0x07, 0x04, 0, 0, 0, 0]),
            Just(vec![0x83, 0x07, 0x04, 198, 18, 3, 1]),
            Just(vec![0x44, 0x08, 0x05, 0x00, 0, 0, 0, 0]),
            (any::<bool>(), 2usize..10).prop_map(|(copied, len)| {
                let mut o = vec![0u8; len];
                o[0] = if copied { 0x9e } else { 0x1e };
                o[1] = len as u8;
                o
            }),
        ];
        (
            proptest::collection::vec(option, 0..6),
            0usize..3000,
            0u16..2000,
            any::<bool>(),
            any::<[u8; 12]>(),
        )
            .prop_map(|(options, payload_len, offset_units, mf, fixed)| {
                let mut opts: Vec<u8> = options.concat();
                opts.truncate(40);
                // Cut an option that no longer fits, then pad with End of Options.
                let mut i = 0;
                while i < opts.len() {
                    let len = if opts[i] == 1 {
                        1
                    } else {
                        usize::from(*opts.get(i + 1).unwrap_or(&0))
                    };
                    if len == 0 || i + len > opts.len() {
                        opts.truncate(i);
                        break;
                    }
                    i += len;
                }
                while !opts.len().is_multiple_of(4) {
                    opts.push(0);
                }
                let hl = 20 + opts.len();
                let total = hl + payload_len;
                let mut p = vec![0u8; total];
                p[1] = fixed[0];
                p[4..6].copy_from_slice(&fixed[1..3]);
                p[8] = fixed[3];
                p[9] = fixed[4];
                p[12..20].copy_from_slice(&fixed[4..12]);
                p[20..hl].copy_from_slice(&opts);
                for (i, b) in p[hl..].iter_mut().enumerate() {
                    *b = (i * 31 + 7) as u8;
                }
                let mut v = Ipv4Packet::new_unchecked(&mut p[..]);
                v.set_version(4);
                v.set_header_len(hl);
                v.set_total_len(total as u16);
                v.set_frag_offset(offset_units * 8);
                v.set_more_frags(mf);
                v.fill_checksum();
                p
            })
    }

    proptest! {
        #[test]
        fn never_panics_on_arbitrary_bytes(
            mut data in proptest::collection::vec(any::<u8>(), 0..400),
            mtu in any::<u16>(),
            fix in any::<Option<(u8, u16)>>(),
        ) {
            if let (Some((ihl, total)), true) = (fix, data.len() >= 20) {
                data[0] = 0x40 | (ihl & 0x0f);
                let total = usize::from(total) % (data.len() + 8);
                data[2..4].copy_from_slice(&(total as u16).to_be_bytes());
                Ipv4Packet::new_unchecked(&mut data[..]).fill_checksum();
            }
            let mut n = 0;
            let r = fragment(&data, mtu, |f| {
                n += 1;
                let bytes = [f.header, f.payload].concat();
                let p = Ipv4Packet::new_checked(&bytes[..]).unwrap();
                assert!(p.verify_checksum());
                assert!(bytes.len() <= usize::from(mtu));
                true
            });
            if let Ok(count) = r {
                prop_assert_eq!(count, n);
            }
            let mut buf = [0u8; 512];
            let _ = fragment_into(&data, mtu, &mut buf, |_| true);
            prop_assert_eq!(fragment_count(&data, mtu), r);
        }

        #[test]
        fn reassembles_to_the_original(packet in arb_datagram(), mtu in 68u16..2000) {
            match fragments(&packet, mtu) {
                Ok(frags) => {
                    check_fragments(&packet, mtu, &frags);
                    prop_assert_eq!(reassemble(&frags), packet);
                }
                // Only a payload reaching past offset 65535 is refused.
                Err(e) => {
                    let p = Ipv4Packet::new_checked(&packet[..]).unwrap();
                    prop_assert_eq!(e, FragError::Malformed);
                    prop_assert!(usize::from(p.frag_offset()) + p.payload().len() > 65535);
                }
            }
        }
    }
}
