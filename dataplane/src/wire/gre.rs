//! GRE (RFC 2784) with the key and sequence number extensions (RFC 2890): what Neutron's
//! `gre` networks carry, an Ethernet frame (protocol 0x6558) with the network's key.
//!
//! ```text
//!  0                   1                   2                   3
//! |C| |K|S| Reserved0               | Ver |         Protocol Type         |
//! |      Checksum (optional)      |       Reserved1 (Optional)    |
//! |                         Key (optional)                        |
//! |                 Sequence Number (Optional)                    |
//! ```

use super::{checksum, get_u16, get_u32, Error, Result};

/// IPv4 protocol number of GRE.
pub const IP_PROTOCOL: u8 = 47;
/// The C flag: a checksum (and the reserved word after it) follows.
pub const FLAG_CHECKSUM: u16 = 0x8000;
/// The K flag: a key follows.
pub const FLAG_KEY: u16 = 0x2000;
/// The S flag: a sequence number follows.
pub const FLAG_SEQUENCE: u16 = 0x1000;
/// Bits 1 and 4..5 (RFC 1701's routing, strict source route and recursion): RFC 2784 §2.5
/// has a receiver that does not implement RFC 1701 discard a packet with any of them set.
pub const FLAGS_RFC1701: u16 = 0x4c00;
/// The version bits; RFC 2784 defines only 0.
pub const VERSION_MASK: u16 = 0x0007;
/// Protocol type of an Ethernet payload (transparent Ethernet bridging).
pub const PROTO_ETHERNET: u16 = 0x6558;

/// Length of the mandatory part of the header.
pub const BASE_LEN: usize = 4;
/// Length of the header Pollux sends: base and key.
pub const KEYED_LEN: usize = 8;

/// A view of a GRE header and the packet it carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GrePacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> GrePacket<T> {
    /// Wraps `buffer` without checking it; accessors may panic on a short buffer.
    #[inline]
    pub const fn new_unchecked(buffer: T) -> Self {
        GrePacket { buffer }
    }

    /// Wraps `buffer` after [`check_len`](Self::check_len).
    #[inline]
    pub fn new_checked(buffer: T) -> Result<Self> {
        let p = Self::new_unchecked(buffer);
        p.check_len()?;
        Ok(p)
    }

    /// Fails with [`Error::Truncated`] if the buffer cannot hold the header its flags
    /// announce, and with [`Error::Malformed`] for a version other than 0 or RFC 1701's
    /// routing, strict source route or recursion bits.
    #[inline]
    pub fn check_len(&self) -> Result<()> {
        let b = self.buffer.as_ref();
        if b.len() < BASE_LEN {
            return Err(Error::Truncated);
        }
        let flags = self.flags();
        if flags & (VERSION_MASK | FLAGS_RFC1701) != 0 {
            return Err(Error::Malformed);
        }
        if b.len() < self.header_len() {
            return Err(Error::Truncated);
        }
        Ok(())
    }

    /// The flags and version word.
    #[inline]
    pub fn flags(&self) -> u16 {
        get_u16(self.buffer.as_ref(), 0..2)
    }

    /// The payload's protocol type (an EtherType).
    #[inline]
    pub fn protocol(&self) -> u16 {
        get_u16(self.buffer.as_ref(), 2..4)
    }

    /// Length of the header with the optional fields its flags announce.
    #[inline]
    pub fn header_len(&self) -> usize {
        let f = self.flags();
        let word = |bit: u16| if f & bit != 0 { 4 } else { 0 };
        BASE_LEN + word(FLAG_CHECKSUM) + word(FLAG_KEY) + word(FLAG_SEQUENCE)
    }

    /// Offset of the key (after the checksum word, if any).
    #[inline]
    fn key_offset(&self) -> usize {
        BASE_LEN
            + if self.flags() & FLAG_CHECKSUM != 0 {
                4
            } else {
                0
            }
    }

    /// The key, if the K flag is set.
    #[inline]
    pub fn key(&self) -> Option<u32> {
        if self.flags() & FLAG_KEY == 0 {
            return None;
        }
        let at = self.key_offset();
        Some(get_u32(self.buffer.as_ref(), at..at + 4))
    }

    /// The sequence number, if the S flag is set.
    #[inline]
    pub fn sequence(&self) -> Option<u32> {
        let f = self.flags();
        if f & FLAG_SEQUENCE == 0 {
            return None;
        }
        let at = self.key_offset() + if f & FLAG_KEY != 0 { 4 } else { 0 };
        Some(get_u32(self.buffer.as_ref(), at..at + 4))
    }

    /// Whether the checksum, if the C flag is set, covers the header and the payload
    /// correctly (true without C flag).
    #[inline]
    pub fn verify_checksum(&self) -> bool {
        self.flags() & FLAG_CHECKSUM == 0 || checksum::checksum(self.buffer.as_ref()) == 0
    }

    /// The encapsulated packet.
    #[inline]
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[self.header_len()..]
    }
}

/// A GRE header with a key and without checksum or sequence number, as values: what
/// Pollux sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct GreRepr {
    /// The key.
    pub key: u32,
    /// Protocol type of the payload.
    pub protocol: u16,
}

impl GreRepr {
    /// Reads `packet`: a key is required, a checksum must verify, a sequence number is
    /// skipped (no reordering, as Linux's and Open vSwitch's receivers by default).
    pub fn parse<T: AsRef<[u8]>>(packet: &GrePacket<T>) -> Result<Self> {
        packet.check_len()?;
        if !packet.verify_checksum() {
            return Err(Error::Checksum);
        }
        let key = packet.key().ok_or(Error::Unsupported)?;
        Ok(GreRepr {
            key,
            protocol: packet.protocol(),
        })
    }

    /// Bytes `emit` writes: the header only.
    #[inline]
    pub const fn buffer_len(&self) -> usize {
        KEYED_LEN
    }

    /// Writes the header: the K flag, version 0, the protocol and the key.
    pub fn emit(&self, buf: &mut [u8]) {
        let b = &mut buf[..KEYED_LEN];
        b[0..2].copy_from_slice(&FLAG_KEY.to_be_bytes());
        b[2..4].copy_from_slice(&self.protocol.to_be_bytes());
        b[4..8].copy_from_slice(&self.key.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn keyed_header() {
        let pkt = [0x20, 0x00, 0x65, 0x58, 0x00, 0x00, 0x13, 0x88, 0xaa, 0xbb];
        let p = GrePacket::new_checked(&pkt[..]).unwrap();
        assert_eq!(p.header_len(), 8);
        assert_eq!((p.key(), p.sequence()), (Some(5000), None));
        assert_eq!(p.payload(), &[0xaa, 0xbb]);
        assert_eq!(
            GreRepr::parse(&p),
            Ok(GreRepr {
                key: 5000,
                protocol: PROTO_ETHERNET
            })
        );
        let mut buf = [0xee; 8];
        GreRepr {
            key: 5000,
            protocol: PROTO_ETHERNET,
        }
        .emit(&mut buf);
        assert_eq!(buf, pkt[..8]);
    }

    #[test]
    fn checksum_key_and_sequence() {
        // C, K and S: checksum word, key 7, sequence 9, two payload bytes.
        let mut pkt = [
            0xb0, 0x00, 0x65, 0x58, 0x00, 0x00, 0x00, 0x00, //
            0x00, 0x00, 0x00, 0x07, 0x00, 0x00, 0x00, 0x09, 0x12, 0x34,
        ];
        let c = checksum::checksum(&pkt);
        pkt[4..6].copy_from_slice(&c.to_be_bytes());
        let p = GrePacket::new_checked(&pkt[..]).unwrap();
        assert_eq!(p.header_len(), 16);
        assert_eq!((p.key(), p.sequence()), (Some(7), Some(9)));
        assert!(p.verify_checksum());
        assert_eq!(GreRepr::parse(&p).map(|r| r.key), Ok(7));
        pkt[17] ^= 1;
        let p = GrePacket::new_checked(&pkt[..]).unwrap();
        assert_eq!(GreRepr::parse(&p), Err(Error::Checksum));
        assert_eq!(
            GrePacket::new_checked(&pkt[..15]).unwrap_err(),
            Error::Truncated
        );
    }

    #[test]
    fn refuses_versions_routing_and_keyless() {
        let base = [0x20, 0x00, 0x65, 0x58, 0, 0, 0, 1];
        for (byte, bits) in [(1, 0x01), (0, 0x40), (0, 0x08), (0, 0x04)] {
            let mut p = base;
            p[byte] |= bits;
            assert_eq!(
                GrePacket::new_checked(&p[..]).unwrap_err(),
                Error::Malformed,
                "{p:02x?}"
            );
        }
        let keyless = [0x00, 0x00, 0x65, 0x58];
        assert_eq!(
            GreRepr::parse(&GrePacket::new_checked(&keyless[..]).unwrap()),
            Err(Error::Unsupported)
        );
    }

    proptest! {
        #[test]
        fn checked_never_panics(data in proptest::collection::vec(any::<u8>(), 0..100)) {
            if let Ok(p) = GrePacket::new_checked(&data[..]) {
                let _ = (p.flags(), p.protocol(), p.key(), p.sequence(), p.payload());
                let _ = p.verify_checksum();
                if let Ok(r) = GreRepr::parse(&p) {
                    prop_assert_eq!(Some(r.key), p.key());
                }
            }
        }

        #[test]
        fn repr_round_trip(key in any::<u32>(), protocol in any::<u16>()) {
            let repr = GreRepr { key, protocol };
            let mut buf = [0xffu8; 8];
            repr.emit(&mut buf);
            prop_assert_eq!(GreRepr::parse(&GrePacket::new_checked(&buf[..]).unwrap()), Ok(repr));
        }
    }
}
