//! Software segmentation (GSO) of TCP super-frames, for egresses that cannot take them.
//!
//! A TAP port that negotiated TSO hands the pipeline super-frames: one TCP segment of up
//! to 64 KiB whose offload state ([`Offload`], kept in the pool beside the chain) says
//! the payload is to be cut into segments of `gso_size` bytes and that the TCP checksum
//! holds only the pseudo-header sum. The pipeline carries it whole; a port that takes
//! super-frames (a TAP that negotiated the same offloads) gets it whole. Every other
//! egress gets the segments made here, as the Linux stack's `tcp_gso_segment` or VPP's
//! gso node make them: the headers copied in front of each `gso_size` slice of the
//! payload, the IPv4 total length, identification (incremented per segment) and header
//! checksum, or the IPv6 payload length, set for the segment; the sequence number
//! advanced by the payload before it; FIN and PSH kept on the last segment only, CWR on
//! the first only; the TCP checksum computed whole.
//!
//! Segments go into fresh pool frames, all of them or none ([`Segmenter::new`] checks the
//! pool first), out of line: this runs only for super-frames toward such an egress. TCP
//! over IPv4 and over IPv6 (without extension headers) is segmented; anything else that
//! claims a GSO type (UDP fragmentation offload, which Pollux never negotiates, extension
//! headers, a cut header) is [`GsoError::Unsupported`], a counted drop for the caller.

use crate::buf::FramePool;
use crate::packet::{Offload, Packet};
use crate::wire::checksum;

/// Most header bytes a super-frame may have: Ethernet, one 802.1Q tag, an IPv4 header
/// with options (or IPv6) and a TCP header with options.
pub const MAX_HEADERS: usize = 14 + 4 + 60 + 60;
/// Largest segment made (headers and payload): a 9000-byte MTU's frame with a tag, which
/// may take a chain of its own.
pub const MAX_SEGMENT: usize = 9216;

const ETH_P_IPV4: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const TCP: u8 = 6;
const TCP_FIN: u8 = 0x01;
const TCP_PSH: u8 = 0x08;
const TCP_CWR: u8 = 0x80;

/// Why a super-frame could not be segmented.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GsoError {
    /// Not TCP over IPv4 or IPv6 as its GSO type says, or its headers are cut or
    /// inconsistent (a zero `gso_size`, a length beyond the frame).
    Unsupported,
    /// The pool has fewer frames than the segments need (nothing was taken).
    PoolShort,
}

/// Where a super-frame's headers and payload lie, from the start of its data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// The IP header.
    pub l3: usize,
    /// The TCP header (`csum_start` of the partial checksum).
    pub l4: usize,
    /// The payload, after every header (`hdr_len`).
    pub payload_at: usize,
    /// End of the IP datagram (Ethernet padding after it is not payload).
    pub end: usize,
    /// IPv6 rather than IPv4.
    pub v6: bool,
    /// Payload bytes per segment.
    pub mss: usize,
}

impl Layout {
    /// Payload bytes of the whole super-frame.
    #[inline]
    pub fn payload(&self) -> usize {
        self.end - self.payload_at
    }

    /// How many segments it makes (one at least: headers alone still go out).
    #[inline]
    pub fn segments(&self) -> usize {
        self.payload().div_ceil(self.mss).max(1)
    }

    /// The IP length of its largest segment: what an MTU is compared with.
    #[inline]
    pub fn segment_ip_len(&self) -> usize {
        self.payload_at - self.l3 + self.mss.min(self.payload())
    }
}

/// For a super-frame, the IP length of its largest segment, which is what an MTU is
/// compared with (the total length is not what goes on a wire); `usize::MAX` when its
/// headers do not say (it fits nowhere, and is never fragmented). `None` for every
/// other packet, after one branch when it is not chained.
#[inline(always)]
pub fn segment_ip_len(pool: &FramePool, pkt: &Packet) -> Option<usize> {
    let off = pool.offload(pkt)?;
    off.is_gso().then(|| super_segment_ip_len(pool, pkt, &off))
}

#[cold]
#[inline(never)]
fn super_segment_ip_len(pool: &FramePool, pkt: &Packet, off: &Offload) -> usize {
    layout(pool, pkt, off).map_or(usize::MAX, |l| l.segment_ip_len())
}

/// Reads the layout of super-frame `pkt` with offload state `off` from its headers
/// (never from `off`'s offsets, which a VLAN push or pop since receive would have made
/// stale).
pub fn layout(pool: &FramePool, pkt: &Packet, off: &Offload) -> Result<Layout, GsoError> {
    let mut hdr = [0u8; MAX_HEADERS];
    let n = pool.copy_out(pkt, 0, &mut hdr);
    let total = pool.packet_len(pkt);
    parse(&hdr[..n], total, off)
}

fn parse(h: &[u8], total: usize, off: &Offload) -> Result<Layout, GsoError> {
    let be16 = |at: usize| -> Result<u16, GsoError> {
        h.get(at..at + 2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]))
            .ok_or(GsoError::Unsupported)
    };
    let mut l3 = 14;
    let mut ethertype = be16(12)?;
    if ethertype == ETH_P_8021Q {
        ethertype = be16(16)?;
        l3 = 18;
    }
    let kind = off.gso_type & !Offload::GSO_ECN;
    let (v6, l4, end) = match (ethertype, kind) {
        (ETH_P_IPV4, Offload::GSO_TCPV4) => {
            let vihl = *h.get(l3).ok_or(GsoError::Unsupported)?;
            let ihl = usize::from(vihl & 0x0f) * 4;
            let frag = be16(l3 + 6)?;
            if vihl >> 4 != 4 || ihl < 20 || frag & 0x3fff != 0 || h.get(l3 + 9) != Some(&TCP) {
                return Err(GsoError::Unsupported);
            }
            (false, l3 + ihl, l3 + usize::from(be16(l3 + 2)?))
        }
        (ETH_P_IPV6, Offload::GSO_TCPV6) => {
            // Extension headers are left to the sender's stack (Linux puts none on TCP).
            if h.get(l3).map(|b| b >> 4) != Some(6) || h.get(l3 + 6) != Some(&TCP) {
                return Err(GsoError::Unsupported);
            }
            (true, l3 + 40, l3 + 40 + usize::from(be16(l3 + 4)?))
        }
        _ => return Err(GsoError::Unsupported),
    };
    let doff = usize::from(*h.get(l4 + 12).ok_or(GsoError::Unsupported)? >> 4) * 4;
    let payload_at = l4 + doff;
    let mss = usize::from(off.gso_size);
    if doff < 20 || payload_at > h.len() || end < payload_at || end > total || mss == 0 {
        return Err(GsoError::Unsupported);
    }
    if payload_at + mss.min(end - payload_at) > MAX_SEGMENT {
        return Err(GsoError::Unsupported);
    }
    Ok(Layout {
        l3,
        l4,
        payload_at,
        end,
        v6,
        mss,
    })
}

/// Makes the segments of one super-frame, one per [`Segmenter::next`] call (so a caller
/// with a bounded batch takes them as it has room).
#[derive(Debug)]
pub struct Segmenter {
    src: Packet,
    layout: Layout,
    hdr: [u8; MAX_HEADERS],
    seq: u32,
    ident: u16,
    flags: u8,
    index: usize,
    count: usize,
}

impl Segmenter {
    /// Prepares the segmentation of `pkt` (whose offload state says it is a super-frame),
    /// checking that the pool holds every frame its segments need.
    pub fn new(pool: &FramePool, pkt: &Packet) -> Result<Segmenter, GsoError> {
        let off = pool.offload(pkt).ok_or(GsoError::Unsupported)?;
        let layout = layout(pool, pkt, &off)?;
        let mut hdr = [0u8; MAX_HEADERS];
        pool.copy_out(pkt, 0, &mut hdr[..layout.payload_at]);
        let count = layout.segments();
        let full = layout.payload_at + layout.mss.min(layout.payload());
        let last = layout.payload_at + (layout.payload() - (count - 1) * layout.mss);
        let frames = pool.frames_for(full) * (count - 1) + pool.frames_for(last);
        if frames > pool.available() {
            return Err(GsoError::PoolShort);
        }
        let l4 = layout.l4;
        Ok(Segmenter {
            src: *pkt,
            seq: u32::from_be_bytes([hdr[l4 + 4], hdr[l4 + 5], hdr[l4 + 6], hdr[l4 + 7]]),
            ident: u16::from_be_bytes([hdr[layout.l3 + 4], hdr[layout.l3 + 5]]),
            flags: hdr[l4 + 13],
            hdr,
            layout,
            index: 0,
            count,
        })
    }

    /// Segments still to come.
    pub fn remaining(&self) -> usize {
        self.count - self.index
    }

    /// The next segment, in fresh frames of `pool` (the source packet stays the
    /// caller's, to free once every segment is made); `None` after the last.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self, pool: &mut FramePool) -> Option<Packet> {
        if self.index == self.count {
            return None;
        }
        let l = self.layout;
        let i = self.index;
        let from = i * l.mss;
        let n = l.mss.min(l.payload() - from);
        let (first, last) = (i == 0, i + 1 == self.count);
        let mut buf = [0u8; MAX_SEGMENT];
        let seg = &mut buf[..l.payload_at + n];
        seg[..l.payload_at].copy_from_slice(&self.hdr[..l.payload_at]);
        pool.copy_out(&self.src, l.payload_at + from, &mut seg[l.payload_at..]);
        let l4_len = seg.len() - l.l4;
        // The IP header for this segment's length.
        let ip = &mut seg[l.l3..l.l4];
        let pseudo = if l.v6 {
            ip[4..6].copy_from_slice(&(l4_len as u16).to_be_bytes());
            let len = l4_len as u32;
            let addrs = checksum::sum(&ip[8..40]);
            checksum::combine(&[addrs, (len >> 16) as u16, len as u16, u16::from(TCP)])
        } else {
            ip[2..4].copy_from_slice(&((l.l4 - l.l3 + l4_len) as u16).to_be_bytes());
            ip[4..6].copy_from_slice(&self.ident.wrapping_add(i as u16).to_be_bytes());
            ip[10..12].fill(0);
            let c = checksum::checksum(ip);
            ip[10..12].copy_from_slice(&c.to_be_bytes());
            let src = [ip[12], ip[13], ip[14], ip[15]];
            let dst = [ip[16], ip[17], ip[18], ip[19]];
            checksum::pseudo_header_v4(src.into(), dst.into(), TCP, l4_len as u16)
        };
        let tcp = &mut seg[l.l4..];
        let seq = self.seq.wrapping_add(from as u32);
        tcp[4..8].copy_from_slice(&seq.to_be_bytes());
        let mut flags = self.flags;
        if !first {
            flags &= !TCP_CWR;
        }
        if !last {
            flags &= !(TCP_FIN | TCP_PSH);
        }
        tcp[13] = flags;
        tcp[16..18].fill(0);
        let c = !checksum::combine(&[pseudo, checksum::sum(tcp)]);
        tcp[16..18].copy_from_slice(&c.to_be_bytes());
        // Cannot fail: `new` checked the pool holds every segment's frames, and nothing
        // else takes frames while the caller segments.
        let made = pool.alloc_packet(seg)?;
        self.index += 1;
        Some(Packet {
            frame: made.frame,
            offset: made.offset,
            len: made.len,
            chained: made.chained,
            ..self.src
        })
    }
}

/// Rewrites a super-frame's partial TCP checksum for changed addresses: the field holds
/// the pseudo-header sum, not complemented, so the change (`delta`, from
/// [`checksum::delta32`]) is added as it is, where a complete checksum would take it
/// through its complement (as Linux's `inet_proto_csum_replace4` does for
/// `CHECKSUM_PARTIAL`). Ports are not in the pseudo-header: changing them changes nothing
/// here (the sum over the segment is taken later, over the ports as they are then).
#[inline]
pub fn apply_partial(field: u16, delta: u64) -> u16 {
    checksum::fold(u64::from(field) + delta)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A super-frame as a TSO sender hands it over: Ethernet (optionally tagged), IPv4 or
    /// IPv6, a TCP header with `opts` option bytes, `payload`; the TCP checksum field
    /// holds the pseudo-header sum over the whole length.
    fn super_frame(v6: bool, vlan: bool, opts: usize, flags: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0x02, 0, 0, 0, 0, 2, 0x02, 0, 0, 0, 0, 1];
        if vlan {
            f.extend_from_slice(&[0x81, 0x00, 0x00, 0x07]);
        }
        let tcp_len = 20 + opts + payload.len();
        let pseudo;
        if v6 {
            f.extend_from_slice(&[0x86, 0xdd, 0x60, 0, 0, 0]);
            f.extend_from_slice(&(tcp_len as u16).to_be_bytes());
            f.extend_from_slice(&[6, 64]);
            let mut addrs = [0u8; 32];
            addrs[..2].copy_from_slice(&[0x20, 0x01]);
            addrs[15] = 1;
            addrs[16..18].copy_from_slice(&[0x20, 0x01]);
            addrs[31] = 2;
            f.extend_from_slice(&addrs);
            let len = tcp_len as u32;
            pseudo = checksum::combine(&[checksum::sum(&addrs), (len >> 16) as u16, len as u16, 6]);
        } else {
            f.extend_from_slice(&[0x08, 0x00]);
            let mut ip = vec![0x45, 0, 0, 0, 0x12, 0x34, 0x40, 0, 64, 6, 0, 0];
            ip[2..4].copy_from_slice(&((20 + tcp_len) as u16).to_be_bytes());
            ip.extend_from_slice(&[198, 18, 0, 1, 198, 18, 0, 2]);
            let c = checksum::checksum(&ip);
            ip[10..12].copy_from_slice(&c.to_be_bytes());
            f.extend_from_slice(&ip);
            pseudo =
                checksum::pseudo_header_v4([198, 18, 0, 1].into(), [198, 18, 0, 2].into(), 6, 0);
        }
        let mut tcp = vec![0u8; 20 + opts];
        tcp[0..2].copy_from_slice(&40000u16.to_be_bytes());
        tcp[2..4].copy_from_slice(&5201u16.to_be_bytes());
        tcp[4..8].copy_from_slice(&0xffff_f000u32.to_be_bytes());
        tcp[12] = (((20 + opts) / 4) as u8) << 4;
        tcp[13] = flags;
        tcp[14..16].copy_from_slice(&512u16.to_be_bytes());
        tcp[16..18].copy_from_slice(&pseudo.to_be_bytes());
        for (i, b) in tcp[20..].iter_mut().enumerate() {
            *b = if i == 0 { 1 } else { 0 };
        }
        f.extend_from_slice(&tcp);
        f.extend_from_slice(payload);
        f
    }

    fn offload(v6: bool, mss: u16) -> Offload {
        Offload {
            flags: Offload::NEEDS_CSUM,
            gso_type: if v6 {
                Offload::GSO_TCPV6
            } else {
                Offload::GSO_TCPV4
            },
            gso_size: mss,
            ..Offload::default()
        }
    }

    /// Checks one segment's headers; returns its TCP payload, sequence number and flags.
    fn check(seg: &[u8], v6: bool, vlan: bool) -> (Vec<u8>, u32, u8) {
        let l3 = if vlan { 18 } else { 14 };
        let (l4, pseudo) = if v6 {
            let len = u32::from(u16::from_be_bytes([seg[l3 + 4], seg[l3 + 5]]));
            assert_eq!(seg.len(), l3 + 40 + len as usize);
            let p = checksum::combine(&[
                checksum::sum(&seg[l3 + 8..l3 + 40]),
                (len >> 16) as u16,
                len as u16,
                6,
            ]);
            (l3 + 40, p)
        } else {
            let ip = &seg[l3..l3 + 20];
            assert_eq!(checksum::sum(ip), 0xffff, "IPv4 header checksum");
            let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
            assert_eq!(seg.len(), l3 + total);
            let p = checksum::pseudo_header_v4(
                [ip[12], ip[13], ip[14], ip[15]].into(),
                [ip[16], ip[17], ip[18], ip[19]].into(),
                6,
                (total - 20) as u16,
            );
            (l3 + 20, p)
        };
        let tcp = &seg[l4..];
        assert_eq!(
            checksum::combine(&[pseudo, checksum::sum(tcp)]),
            0xffff,
            "TCP checksum"
        );
        let doff = usize::from(tcp[12] >> 4) * 4;
        let seq = u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]);
        (tcp[doff..].to_vec(), seq, tcp[13])
    }

    fn segment_all(pool: &mut FramePool, pkt: &Packet) -> Vec<Vec<u8>> {
        let mut s = Segmenter::new(pool, pkt).unwrap();
        let mut out = Vec::new();
        while let Some(p) = s.next(pool) {
            let mut bytes = vec![0; pool.packet_len(&p)];
            pool.copy_out(&p, 0, &mut bytes);
            assert_eq!(p.in_port, pkt.in_port);
            pool.free_packet(&p);
            out.push(bytes);
        }
        out
    }

    #[test]
    fn a_64k_super_frame_becomes_mss_segments() {
        let mut pool = FramePool::with_frames(256).unwrap();
        let payload: Vec<u8> = (0..65_000u32).map(|i| (i % 251) as u8).collect();
        let frame = super_frame(false, false, 12, 0x18 | 0x80 | 0x01, &payload);
        let pkt = pool.alloc_offloaded(&frame, offload(false, 1448)).unwrap();
        let l = layout(&pool, &pkt, &pool.offload(&pkt).unwrap()).unwrap();
        assert_eq!((l.l4, l.payload_at, l.segments()), (34, 66, 45));
        assert_eq!(l.segment_ip_len(), 1500);
        let segs = segment_all(&mut pool, &pkt);
        assert_eq!(segs.len(), 45);
        for (i, s) in segs.iter().enumerate() {
            let (_, seq, flags) = check(s, false, false);
            assert_eq!(seq, 0xffff_f000u32.wrapping_add(i as u32 * 1448));
            assert_eq!(flags & 0x80 != 0, i == 0, "CWR on the first only");
            assert_eq!(flags & 0x09 != 0, i == 44, "FIN, PSH on the last only");
            assert!(flags & 0x10 != 0, "ACK on every one");
            assert_eq!(u16::from_be_bytes([s[18], s[19]]), 0x1234 + i as u16);
            assert!(s.len() <= 1514);
        }
        pool.free_packet(&pkt);
        assert_eq!(pool.available(), 256, "nothing leaked");
    }

    #[test]
    fn a_short_pool_takes_nothing_and_bad_frames_are_refused() {
        let mut pool = FramePool::with_frames(40).unwrap();
        let frame = super_frame(false, false, 0, 0x10, &vec![7; 60_000]);
        let pkt = pool.alloc_offloaded(&frame, offload(false, 1448)).unwrap();
        let before = pool.available();
        assert_eq!(
            Segmenter::new(&pool, &pkt).unwrap_err(),
            GsoError::PoolShort
        );
        assert_eq!(pool.available(), before);
        pool.free_packet(&pkt);
        // A GSO type that does not match the frame, a zero MSS, UDP.
        let frame = super_frame(false, false, 0, 0x10, &[1; 3000]);
        for off in [offload(true, 1448), offload(false, 0)] {
            let pkt = pool.alloc_offloaded(&frame, off).unwrap();
            assert_eq!(
                Segmenter::new(&pool, &pkt).unwrap_err(),
                GsoError::Unsupported
            );
            pool.free_packet(&pkt);
        }
        let mut udp = frame.clone();
        udp[23] = 17;
        let pkt = pool.alloc_offloaded(&udp, offload(false, 1448)).unwrap();
        assert_eq!(
            Segmenter::new(&pool, &pkt).unwrap_err(),
            GsoError::Unsupported
        );
        pool.free_packet(&pkt);
        assert_eq!(pool.available(), 40);
    }

    #[test]
    fn partial_checksum_follows_an_address_change() {
        // The partial field of a frame whose source changes equals the one a sender
        // would have written for the new source.
        let frame = super_frame(false, false, 0, 0x10, &[3; 100]);
        let field = u16::from_be_bytes([frame[50], frame[51]]);
        let (old, new) = (u32::from_be_bytes([198, 18, 0, 1]), 0xcb00_7105u32);
        let moved = apply_partial(field, checksum::delta32(old, new));
        let want = checksum::pseudo_header_v4(new.into(), [198, 18, 0, 2].into(), 6, 0);
        assert_eq!(moved, want);
    }

    proptest! {
        /// Any super-frame: the segments' payloads concatenated give the payload back,
        /// every checksum verifies, every segment fits the MSS, sequence numbers follow
        /// the payload, and every frame goes back to the pool.
        #[test]
        fn segments_give_the_payload_back(
            len in 0usize..62_000,
            mss in 88u16..=8948,
            v6 in any::<bool>(),
            vlan in any::<bool>(),
            opts in (0usize..=10).prop_map(|w| w * 4),
            flags in any::<u8>(),
        ) {
            let mut pool = FramePool::new(1024, 2048, 256).unwrap();
            let payload: Vec<u8> = (0..len).map(|i| (i * 13 % 251) as u8).collect();
            let frame = super_frame(v6, vlan, opts, flags, &payload);
            let pkt = pool.alloc_offloaded(&frame, offload(v6, mss)).unwrap();
            let segs = segment_all(&mut pool, &pkt);
            prop_assert_eq!(segs.len(), len.div_ceil(usize::from(mss)).max(1));
            let mut joined = Vec::new();
            for (i, s) in segs.iter().enumerate() {
                let (data, seq, f) = check(s, v6, vlan);
                prop_assert!(data.len() <= usize::from(mss));
                prop_assert_eq!(seq, 0xffff_f000u32.wrapping_add(joined.len() as u32));
                prop_assert_eq!(f & 0x80, if i == 0 { flags & 0x80 } else { 0 });
                prop_assert_eq!(f & 0x09, if i + 1 == segs.len() { flags & 0x09 } else { 0 });
                prop_assert_eq!(f & 0x76, flags & 0x76);
                joined.extend_from_slice(&data);
            }
            prop_assert_eq!(joined, payload);
            pool.free_packet(&pkt);
            prop_assert_eq!(pool.available(), 1024);
        }

        /// Whatever bytes claim to be a super-frame, segmentation never panics, and it
        /// either refuses or makes segments that go back to the pool.
        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..400), mss in 0u16..600, ty in any::<u8>()) {
            let mut pool = FramePool::new(64, 2048, 256).unwrap();
            let off = Offload { gso_type: ty | 1, gso_size: mss, ..Offload::default() };
            let pkt = pool.alloc_offloaded(&bytes, off).unwrap();
            if let Ok(mut s) = Segmenter::new(&pool, &pkt) {
                while let Some(p) = s.next(&mut pool) {
                    pool.free_packet(&p);
                }
            }
            pool.free_packet(&pkt);
            prop_assert_eq!(pool.available(), 64);
        }
    }
}
