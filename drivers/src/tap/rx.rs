//! What a completed read holds: a frame to deliver, a read to retry, or a drop with its
//! reason. Pure (bytes in, verdict out), so every case is tested without a kernel.

use super::vnet::{VnetHdr, VNET_HDR_LEN};

/// Why a read's frame is not delivered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RxDrop {
    /// The read failed (the tap was detached or deleted, ...).
    Error,
    /// Shorter than the virtio-net header.
    Short,
    /// Larger than the slot (truncated by the kernel) or than a pool frame.
    Oversize,
    /// A GSO super-frame, which phase 1 cannot carry (no offload was enabled).
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
/// pool whose frames hold at most `max_frame` bytes.
pub fn classify_read(slot: &[u8], result: i32, max_frame: usize) -> ReadOutcome {
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
    if hdr.is_gso() {
        return ReadOutcome::Drop(RxDrop::Gso);
    }
    if hdr.needs_csum() && usize::from(hdr.csum_start) + usize::from(hdr.csum_offset) + 2 > len {
        return ReadOutcome::Drop(RxDrop::BadCsumOffsets);
    }
    ReadOutcome::Frame { hdr, len }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tap::vnet::{FLAG_NEEDS_CSUM, GSO_ECN};
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
            classify_read(&plain, 72, 1792),
            ReadOutcome::Frame {
                hdr: VnetHdr::default(),
                len: 60
            }
        );
        assert_eq!(
            classify_read(&plain, -libc::EAGAIN, 1792),
            ReadOutcome::Retry
        );
        assert_eq!(
            classify_read(&plain, -libc::EBADFD, 1792),
            ReadOutcome::Drop(RxDrop::Error)
        );
        assert_eq!(
            classify_read(&plain, 11, 1792),
            ReadOutcome::Drop(RxDrop::Short)
        );
        assert_eq!(
            classify_read(&plain, 12 + 1793, 1792),
            ReadOutcome::Drop(RxDrop::Oversize),
            "fits the slot, not a pool frame"
        );
        assert_eq!(
            classify_read(&plain, 2049, 4096),
            ReadOutcome::Drop(RxDrop::Oversize),
            "the kernel reports more than the slot held: truncated"
        );
        let gso = VnetHdr {
            gso_type: 1,
            ..VnetHdr::default()
        };
        assert_eq!(
            classify_read(&slot(gso, &[0; 60], 128), 72, 1792),
            ReadOutcome::Drop(RxDrop::Gso)
        );
        let ecn_only = VnetHdr {
            gso_type: GSO_ECN,
            ..VnetHdr::default()
        };
        assert!(matches!(
            classify_read(&slot(ecn_only, &[0; 60], 128), 72, 1792),
            ReadOutcome::Frame { .. }
        ));
        let csum = |start, offset| VnetHdr {
            flags: FLAG_NEEDS_CSUM,
            csum_start: start,
            csum_offset: offset,
            ..VnetHdr::default()
        };
        assert!(matches!(
            classify_read(&slot(csum(34, 6), &[0; 60], 128), 72, 1792),
            ReadOutcome::Frame { .. }
        ));
        assert_eq!(
            classify_read(&slot(csum(34, 25), &[0; 60], 128), 72, 1792),
            ReadOutcome::Drop(RxDrop::BadCsumOffsets)
        );
    }

    proptest! {
        /// Whatever the kernel wrote and reported, the verdict never panics, and a frame
        /// it lets through lies within the slot and a pool frame, is not GSO, and has its
        /// checksum offsets within the frame.
        #[test]
        fn a_delivered_frame_is_always_safe_to_copy(
            bytes in proptest::collection::vec(any::<u8>(), 0..300),
            result in prop_oneof![-200i32..400, any::<i32>()],
            max_frame in 0usize..400,
        ) {
            if let ReadOutcome::Frame { hdr, len } = classify_read(&bytes, result, max_frame) {
                prop_assert!(VNET_HDR_LEN + len <= bytes.len());
                prop_assert!(len <= max_frame);
                prop_assert!(!hdr.is_gso());
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
            let got = classify_read(&s, (VNET_HDR_LEN + frame.len()) as i32, 1792);
            prop_assert_eq!(got, ReadOutcome::Frame { hdr: VnetHdr::default(), len: frame.len() });
        }
    }
}
