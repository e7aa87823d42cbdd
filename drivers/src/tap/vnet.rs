//! The virtio-net header the kernel puts in front of every frame on a tap opened with
//! `IFF_VNET_HDR` (and expects in front of every frame written to it).
//!
//! Its size is set explicitly to [`VNET_HDR_LEN`] = 12 bytes with `TUNSETVNETHDRSZ`: the
//! size of `struct virtio_net_hdr_mrg_rxbuf` (the 10-byte `virtio_net_hdr` plus
//! `num_buffers`), which is what a virtio 1.0 device uses and what vhost-user ports will
//! see, so one parser serves both. The byte order is little-endian: the port sets
//! `TUNSETVNETLE`, so this holds on any host.
//!
//! A port that negotiated TSO (`TUNSETOFFLOAD`, see [`super::device`]) receives TCP
//! super-frames: their header (GSO type and size, partial checksum) becomes the packet's
//! [`pollux_dataplane::packet::Offload`], and a super-frame written back carries it
//! again. A frame that says `NEEDS_CSUM` without GSO gets its checksum completed as a
//! device would; a GSO type the port did not negotiate is a counted drop.

use pollux_dataplane::wire::checksum;

/// Bytes of the header in front of every frame (`TUNSETVNETHDRSZ`).
pub const VNET_HDR_LEN: usize = 12;

/// `VIRTIO_NET_HDR_F_NEEDS_CSUM`: the checksum from `csum_start` on is still to be done.
pub const FLAG_NEEDS_CSUM: u8 = 1;
/// `VIRTIO_NET_HDR_F_DATA_VALID`: the sender has validated the checksum.
pub const FLAG_DATA_VALID: u8 = 2;
/// `VIRTIO_NET_HDR_GSO_NONE`.
pub const GSO_NONE: u8 = 0;
/// `VIRTIO_NET_HDR_GSO_TCPV4`.
pub const GSO_TCPV4: u8 = 1;
/// `VIRTIO_NET_HDR_GSO_TCPV6`.
pub const GSO_TCPV6: u8 = 4;
/// `VIRTIO_NET_HDR_GSO_ECN`: a bit that may be or-ed into a GSO type.
pub const GSO_ECN: u8 = 0x80;

/// A parsed header (the fields the data plane may act on, host byte order).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VnetHdr {
    /// `FLAG_*` bits.
    pub flags: u8,
    /// `GSO_*` type, ECN bit included.
    pub gso_type: u8,
    /// Length of the headers to copy into each segment.
    pub hdr_len: u16,
    /// Payload bytes per segment.
    pub gso_size: u16,
    /// Where checksumming starts (from the start of the Ethernet frame).
    pub csum_start: u16,
    /// Where, from `csum_start`, the checksum is stored.
    pub csum_offset: u16,
    /// Buffers merged into this frame (`virtio_net_hdr_mrg_rxbuf`); 1 or 0 on a tap.
    pub num_buffers: u16,
}

/// Why a header could not be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Truncated;

impl VnetHdr {
    /// Reads the header at the start of `bytes`.
    pub fn parse(bytes: &[u8]) -> Result<VnetHdr, Truncated> {
        let b: &[u8; VNET_HDR_LEN] = bytes
            .get(..VNET_HDR_LEN)
            .and_then(|b| b.try_into().ok())
            .ok_or(Truncated)?;
        let u16_at = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        Ok(VnetHdr {
            flags: b[0],
            gso_type: b[1],
            hdr_len: u16_at(2),
            gso_size: u16_at(4),
            csum_start: u16_at(6),
            csum_offset: u16_at(8),
            num_buffers: u16_at(10),
        })
    }

    /// Writes the header into the first [`VNET_HDR_LEN`] bytes of `out`.
    pub fn emit(&self, out: &mut [u8]) -> Result<(), Truncated> {
        let b = out.get_mut(..VNET_HDR_LEN).ok_or(Truncated)?;
        b[0] = self.flags;
        b[1] = self.gso_type;
        b[2..4].copy_from_slice(&self.hdr_len.to_le_bytes());
        b[4..6].copy_from_slice(&self.gso_size.to_le_bytes());
        b[6..8].copy_from_slice(&self.csum_start.to_le_bytes());
        b[8..10].copy_from_slice(&self.csum_offset.to_le_bytes());
        b[10..12].copy_from_slice(&self.num_buffers.to_le_bytes());
        Ok(())
    }

    /// Whether the frame is a GSO super-frame (ECN bit aside).
    pub fn is_gso(&self) -> bool {
        self.gso_type & !GSO_ECN != GSO_NONE
    }

    /// Whether the frame's checksum is still to be completed.
    pub fn needs_csum(&self) -> bool {
        self.flags & FLAG_NEEDS_CSUM != 0
    }
}

/// Writes a zeroed header (no offload asked for: the frame is complete) in front of a
/// frame written to the tap.
#[inline]
pub fn emit_plain(out: &mut [u8]) -> Result<(), Truncated> {
    out.get_mut(..VNET_HDR_LEN).ok_or(Truncated)?.fill(0);
    Ok(())
}

/// Completes the checksum a `NEEDS_CSUM` header asks for, as a device (or the kernel's
/// `skb_checksum_help`) does: the one's-complement sum of `frame[csum_start..]`, whose
/// checksum field holds the pseudo-header sum, is complemented into the field at
/// `csum_start + csum_offset` (a result of zero is stored as `0xffff`, its twin, since
/// zero means "no checksum" in UDP). Returns false, leaving the frame untouched, when the
/// offsets do not fit the frame.
pub fn complete_checksum(frame: &mut [u8], csum_start: u16, csum_offset: u16) -> bool {
    let start = usize::from(csum_start);
    let field = start + usize::from(csum_offset);
    if field + 2 > frame.len() {
        return false;
    }
    let csum = !checksum::sum(&frame[start..]);
    let csum = if csum == 0 { 0xffff } else { csum };
    frame[field..field + 2].copy_from_slice(&csum.to_be_bytes());
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A TCPv4 GSO header of the shape the kernel writes for a TSO super-frame: checksum
    /// needed from byte 34 (field at +16), 66 bytes of headers, MSS 1448.
    const GSO_TCP4: [u8; 12] = [
        0x01, 0x01, 0x42, 0x00, 0xa8, 0x05, 0x22, 0x00, 0x10, 0x00, 0x00, 0x00,
    ];

    #[test]
    fn parses_a_kernel_gso_header() {
        let h = VnetHdr::parse(&GSO_TCP4).unwrap();
        assert_eq!(
            h,
            VnetHdr {
                flags: FLAG_NEEDS_CSUM,
                gso_type: 1,
                hdr_len: 66,
                gso_size: 1448,
                csum_start: 34,
                csum_offset: 16,
                num_buffers: 0,
            }
        );
        assert!(h.is_gso() && h.needs_csum());
        let mut out = [0xaa; 12];
        h.emit(&mut out).unwrap();
        assert_eq!(out, GSO_TCP4);
    }

    #[test]
    fn short_buffers_are_refused() {
        assert_eq!(VnetHdr::parse(&[0; 11]), Err(Truncated));
        assert_eq!(VnetHdr::default().emit(&mut [0; 11]), Err(Truncated));
        assert_eq!(emit_plain(&mut [0; 3]), Err(Truncated));
    }

    #[test]
    fn ecn_alone_is_not_gso() {
        let h = VnetHdr {
            gso_type: GSO_ECN,
            ..VnetHdr::default()
        };
        assert!(!h.is_gso());
    }

    #[test]
    fn plain_header_is_all_zero() {
        let mut out = [0xff; 20];
        emit_plain(&mut out).unwrap();
        assert_eq!(out[..12], [0; 12]);
        assert_eq!(out[12..], [0xff; 8]);
        assert_eq!(VnetHdr::parse(&out).unwrap(), VnetHdr::default());
    }

    /// A UDP datagram in IPv4 whose checksum field holds the pseudo-header sum, as a
    /// sender with checksum offload leaves it; returns it and its correct checksum.
    fn partial_udp(payload: &[u8]) -> (Vec<u8>, u16) {
        let udp_len = 8 + payload.len() as u16;
        let mut f = vec![0u8; 14];
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        let mut ip = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 17, 0, 0];
        ip[2..4].copy_from_slice(&(20 + udp_len).to_be_bytes());
        ip.extend_from_slice(&[198, 18, 0, 1, 198, 18, 0, 2]);
        f.extend_from_slice(&ip);
        f.extend_from_slice(&[0x30, 0x39, 0x00, 0x35]);
        f.extend_from_slice(&udp_len.to_be_bytes());
        let pseudo =
            checksum::pseudo_header_v4([198, 18, 0, 1].into(), [198, 18, 0, 2].into(), 17, udp_len);
        f.extend_from_slice(&pseudo.to_be_bytes());
        f.extend_from_slice(payload);
        let mut full = f.clone();
        full[40..42].fill(0);
        let sum = checksum::combine(&[pseudo, checksum::sum(&full[34..])]);
        let want = match !sum {
            0 => 0xffff,
            c => c,
        };
        (f, want)
    }

    #[test]
    fn completes_a_partial_udp_checksum() {
        let (mut f, want) = partial_udp(b"hello, tap");
        assert!(complete_checksum(&mut f, 34, 6));
        assert_eq!(u16::from_be_bytes([f[40], f[41]]), want);
        // The receiver's check: the segment plus pseudo-header sums to all ones.
        let pseudo = checksum::pseudo_header_v4(
            [198, 18, 0, 1].into(),
            [198, 18, 0, 2].into(),
            17,
            (f.len() - 34) as u16,
        );
        assert_eq!(
            checksum::combine(&[pseudo, checksum::sum(&f[34..])]),
            0xffff
        );
    }

    #[test]
    fn checksum_offsets_outside_the_frame_are_refused() {
        let mut f = vec![0u8; 40];
        assert!(!complete_checksum(&mut f, 34, 6));
        assert!(!complete_checksum(&mut f, 60, 0));
        assert!(!complete_checksum(&mut f, u16::MAX, u16::MAX));
        assert_eq!(f, vec![0u8; 40]);
    }

    proptest! {
        #[test]
        fn emit_then_parse_round_trips(
            flags in any::<u8>(), gso_type in any::<u8>(), hdr_len in any::<u16>(),
            gso_size in any::<u16>(), csum_start in any::<u16>(), csum_offset in any::<u16>(),
            num_buffers in any::<u16>(),
        ) {
            let h = VnetHdr { flags, gso_type, hdr_len, gso_size, csum_start, csum_offset, num_buffers };
            let mut out = [0u8; VNET_HDR_LEN];
            h.emit(&mut out).unwrap();
            prop_assert_eq!(VnetHdr::parse(&out).unwrap(), h);
        }

        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..32)) {
            let r = VnetHdr::parse(&bytes);
            prop_assert_eq!(r.is_ok(), bytes.len() >= VNET_HDR_LEN);
        }

        #[test]
        fn complete_checksum_never_panics(
            mut frame in proptest::collection::vec(any::<u8>(), 0..200),
            start in any::<u16>(), offset in any::<u16>(),
        ) {
            let before = frame.clone();
            if !complete_checksum(&mut frame, start, offset) {
                prop_assert_eq!(frame, before);
            }
        }

        #[test]
        fn completed_udp_checksums_verify(payload in proptest::collection::vec(any::<u8>(), 0..300)) {
            let (mut f, want) = partial_udp(&payload);
            prop_assert!(complete_checksum(&mut f, 34, 6));
            prop_assert_eq!(u16::from_be_bytes([f[40], f[41]]), want);
        }
    }
}
