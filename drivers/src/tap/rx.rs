//! What a completed read holds: a frame to deliver, a read to retry, or a drop with its
//! reason. Pure (bytes in, verdict out), so every case is tested without a kernel.

use super::vnet::{VnetHdr, GSO_ECN, GSO_TCPV4, GSO_TCPV6, VNET_HDR_LEN};

/// Why a read's frame is not delivered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RxDrop {
    /// The read failed (the tap was detached or deleted, ...).
    Error,
    /// Shorter than the virtio-net header.
    Short,
    /// Larger than the slot (truncated by the kernel) or than a pool frame.
    Oversize,
    /// A GSO super-frame on a port that did not negotiate TSO, or of a type it did not
    /// negotiate (UDP).
    Gso,
    /// A checksum to complete whose offsets lie outside the frame.
    BadCsumOffsets,
}

/// The verdict on one completed read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadOutcome {
    /// A frame of `len` bytes after the header; when `hdr.needs_csum()`, its checksum
    /// offsets are within the frame.
    Frame {
        /// The frame's header.
        hdr: VnetHdr,
        /// Bytes of the frame (header excluded).
        len: usize,
    },
    /// The read was tried before a frame came (`EAGAIN`): post it again, nothing lost.
    Retry,
    /// Not delivered, for this reason.
    Drop(RxDrop),
}

/// Judges a read that completed with `result` (bytes, or `-errno`) into `slot`, for a
/// pool whose frames hold at most `max_frame` bytes; `tso`: the port negotiated TSO, so
/// TCP super-frames are delivered (with their header) rather than dropped.
pub fn classify_read(slot: &[u8], result: i32, max_frame: usize, tso: bool) -> ReadOutcome {
    if result < 0 {
        return if result == -libc::EAGAIN {
            ReadOutcome::Retry
        } else {
            ReadOutcome::Drop(RxDrop::Error)
        };
    }
    let total = result as usize;
    let Some(len) = total.checked_sub(VNET_HDR_LEN) else {
        return ReadOutcome::Drop(RxDrop::Short);
    };
    if total > slot.len() || len > max_frame {
        return ReadOutcome::Drop(RxDrop::Oversize);
    }
    let Ok(hdr) = VnetHdr::parse(slot) else {
        return ReadOutcome::Drop(RxDrop::Short);
    };
    if hdr.is_gso() && !(tso && is_tcp_gso(&hdr)) {
        return ReadOutcome::Drop(RxDrop::Gso);
    }
    if hdr.needs_csum() && usize::from(hdr.csum_start) + usize::from(hdr.csum_offset) + 2 > len {
        return ReadOutcome::Drop(RxDrop::BadCsumOffsets);
    }
    ReadOutcome::Frame { hdr, len }
}

/// Whether a GSO header is TCP over IPv4 or IPv6 (ECN or not): what TSO negotiates.
pub fn is_tcp_gso(hdr: &VnetHdr) -> bool {
    matches!(hdr.gso_type & !GSO_ECN, GSO_TCPV4 | GSO_TCPV6)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tap::vnet::FLAG_NEEDS_CSUM;
    use proptest::prelude::*;

    fn slot(hdr: VnetHdr, frame: &[u8], size: usize) -> Vec<u8> {
        let mut s = vec![0u8; size];
        hdr.emit(&mut s).unwrap();
        s[VNET_HDR_LEN..VNET_HDR_LEN + frame.len()].copy_from_slice(frame);
        s
    }

    #[test]
    fn verdicts() {
        let plain = slot(VnetHdr::default(), &[1; 60], 2048);
        assert_eq!(
            classify_read(&plain, 72, 1792, false),
            ReadOutcome::Frame {
                hdr: VnetHdr::default(),
                len: 60
            }
        );
        assert_eq!(
            classify_read(&plain, -libc::EAGAIN, 1792, false),
            ReadOutcome::Retry
        );
        assert_eq!(
            classify_read(&plain, -libc::EBADFD, 1792, false),
            ReadOutcome::Drop(RxDrop::Error)
        );
        assert_eq!(
            classify_read(&plain, 11, 1792, false),
            ReadOutcome::Drop(RxDrop::Short)
        );
        assert_eq!(
            classify_read(&plain, 12 + 1793, 1792, false),
            ReadOutcome::Drop(RxDrop::Oversize),
            "fits the slot, not a pool frame"
        );
        assert_eq!(
            classify_read(&plain, 2049, 4096, false),
            ReadOutcome::Drop(RxDrop::Oversize),
            "the kernel reports more than the slot held: truncated"
        );
        let gso = VnetHdr {
            gso_type: 1,
            ..VnetHdr::default()
        };
        assert_eq!(
            classify_read(&slot(gso, &[0; 60], 128), 72, 1792, false),
            ReadOutcome::Drop(RxDrop::Gso)
        );
        let tcp4 = slot(gso, &[0; 60], 128);
        assert!(
            matches!(classify_read(&tcp4, 72, 1792, true), ReadOutcome::Frame { hdr, .. } if hdr.is_gso()),
            "a TSO port takes TCP super-frames"
        );
        let udp = VnetHdr {
            gso_type: 3,
            ..VnetHdr::default()
        };
        assert_eq!(
            classify_read(&slot(udp, &[0; 60], 128), 72, 1792, true),
            ReadOutcome::Drop(RxDrop::Gso),
            "UFO was never negotiated"
        );
        let ecn_only = VnetHdr {
            gso_type: GSO_ECN,
            ..VnetHdr::default()
        };
        assert!(matches!(
            classify_read(&slot(ecn_only, &[0; 60], 128), 72, 1792, false),
            ReadOutcome::Frame { .. }
        ));
        let csum = |start, offset| VnetHdr {
            flags: FLAG_NEEDS_CSUM,
            csum_start: start,
            csum_offset: offset,
            ..VnetHdr::default()
        };
        assert!(matches!(
            classify_read(&slot(csum(34, 6), &[0; 60], 128), 72, 1792, false),
            ReadOutcome::Frame { .. }
        ));
        assert_eq!(
            classify_read(&slot(csum(34, 25), &[0; 60], 128), 72, 1792, false),
            ReadOutcome::Drop(RxDrop::BadCsumOffsets)
        );
    }

    proptest! {
        /// Whatever the kernel wrote and reported, the verdict never panics, and a frame
        /// it lets through lies within the slot and a pool frame, is GSO only as TCP on a
        /// TSO port, and has its
        /// checksum offsets within the frame.
        #[test]
        fn a_delivered_frame_is_always_safe_to_copy(
            bytes in proptest::collection::vec(any::<u8>(), 0..300),
            result in prop_oneof![-200i32..400, any::<i32>()],
            max_frame in 0usize..400,
            tso in any::<bool>(),
        ) {
            if let ReadOutcome::Frame { hdr, len } = classify_read(&bytes, result, max_frame, tso) {
                prop_assert!(VNET_HDR_LEN + len <= bytes.len());
                prop_assert!(len <= max_frame);
                prop_assert!(!hdr.is_gso() || (tso && is_tcp_gso(&hdr)));
                if hdr.needs_csum() {
                    prop_assert!(usize::from(hdr.csum_start) + usize::from(hdr.csum_offset) + 2 <= len);
                }
                prop_assert_eq!(VNET_HDR_LEN + len, result as usize);
            }
        }

        /// A well-formed read of a plain frame is delivered whole, header stripped.
        #[test]
        fn plain_frames_are_delivered(frame in proptest::collection::vec(any::<u8>(), 14..1500)) {
            let s = slot(VnetHdr::default(), &frame, 2048);
            let got = classify_read(&s, (VNET_HDR_LEN + frame.len()) as i32, 1792, false);
            prop_assert_eq!(got, ReadOutcome::Frame { hdr: VnetHdr::default(), len: frame.len() });
        }
    }
}
