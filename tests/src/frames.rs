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
