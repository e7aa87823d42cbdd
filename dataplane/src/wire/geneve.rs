//! Geneve (RFC 8926): an Ethernet frame inside UDP, tagged with a 24-bit network
//! identifier, followed by variable-length options.
//!
//! ```text
//!  0                   1                   2                   3
//! |Ver|  Opt Len  |O|C|    Rsvd.  |          Protocol Type        |
//! |        Virtual Network Identifier (VNI)       |    Reserved   |
//! |                    Variable-Length Options                    |
//! ```
//!
//! An option is a 4-byte header (class 16 bits, type 8 bits whose high bit is the
//! *critical* bit, 3 reserved bits, length 5 bits in 4-byte words) and its data.

use super::{get_u16, get_u32, Error, Result};

/// IANA-assigned UDP destination port for Geneve.
pub const GENEVE_PORT: u16 = 6081;
/// The only version RFC 8926 defines.
pub const VERSION: u8 = 0;
/// The O flag: a control message, not to be forwarded as data.
pub const FLAG_OAM: u8 = 0x80;
/// The C flag: at least one option is critical.
pub const FLAG_CRITICAL: u8 = 0x40;
/// The critical bit of an option's type.
pub const OPTION_CRITICAL: u8 = 0x80;
/// Protocol type of an Ethernet payload (transparent Ethernet bridging).
pub const PROTO_ETHERNET: u16 = 0x6558;
/// Largest VNI (24 bits).
pub const VNI_MAX: u32 = 0x00ff_ffff;

/// Length of the fixed header, without options.
pub const HEADER_LEN: usize = 8;

mod field {
    use crate::wire::Field;

    pub const VER_OPTLEN: usize = 0;
    pub const FLAGS: usize = 1;
    pub const PROTOCOL: Field = 2..4;
    /// The VNI (bytes 4..7) and the reserved byte, read as one word.
    pub const VNI_RESERVED: Field = 4..8;
}

/// A view of a Geneve header, its options and the frame it carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GenevePacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> GenevePacket<T> {
    /// Wraps `buffer` without checking it; accessors may panic on a short buffer.
    #[inline]
    pub const fn new_unchecked(buffer: T) -> Self {
        GenevePacket { buffer }
    }

    /// Wraps `buffer` after [`check_len`](Self::check_len).
    #[inline]
    pub fn new_checked(buffer: T) -> Result<Self> {
        let p = Self::new_unchecked(buffer);
        p.check_len()?;
        Ok(p)
    }

    /// Fails with [`Error::Truncated`] if the buffer cannot hold the header and the
    /// options its length field announces, and with [`Error::Malformed`] for a version
    /// other than 0 (RFC 8926 §3.4: a receiver drops a version it does not know).
    #[inline]
    pub fn check_len(&self) -> Result<()> {
        let b = self.buffer.as_ref();
        if b.len() < HEADER_LEN {
            return Err(Error::Truncated);
        }
        if self.version() != VERSION {
            return Err(Error::Malformed);
        }
        if b.len() < self.header_len() {
            return Err(Error::Truncated);
        }
        Ok(())
    }

    /// The version (2 bits).
    #[inline]
    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[field::VER_OPTLEN] >> 6
    }

    /// Length of the options, in bytes.
    #[inline]
    pub fn options_len(&self) -> usize {
        usize::from(self.buffer.as_ref()[field::VER_OPTLEN] & 0x3f) * 4
    }

    /// Length of the header with its options: where the payload starts.
    #[inline]
    pub fn header_len(&self) -> usize {
        HEADER_LEN + self.options_len()
    }

    /// The flags byte (O, C and reserved bits).
    #[inline]
    pub fn flags(&self) -> u8 {
        self.buffer.as_ref()[field::FLAGS]
    }

    /// The payload's protocol type (an EtherType).
    #[inline]
    pub fn protocol(&self) -> u16 {
        get_u16(self.buffer.as_ref(), field::PROTOCOL)
    }

    /// Virtual Network Identifier.
    #[inline]
    pub fn vni(&self) -> u32 {
        get_u32(self.buffer.as_ref(), field::VNI_RESERVED) >> 8
    }

    /// The options area.
    #[inline]
    pub fn options(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..self.header_len()]
    }

    /// Walks the options: `Ok(true)` if one of them has the critical bit set, `Ok(false)`
    /// if none has, [`Error::Malformed`] if an option's length runs past the options area.
    #[inline]
    pub fn has_critical_option(&self) -> Result<bool> {
        // What Pollux and Open vSwitch send by default: nothing to walk.
        if self.options_len() == 0 {
            return Ok(false);
        }
        self.walk_options()
    }

    /// The options walk of [`has_critical_option`](Self::has_critical_option), out of the
    /// way of packets without options.
    #[inline(never)]
    fn walk_options(&self) -> Result<bool> {
        let mut rest = self.options();
        let mut critical = false;
        while !rest.is_empty() {
            let Some(hdr) = rest.first_chunk::<4>() else {
                return Err(Error::Malformed);
            };
            critical |= hdr[2] & OPTION_CRITICAL != 0;
            let len = 4 + usize::from(hdr[3] & 0x1f) * 4;
            rest = rest.get(len..).ok_or(Error::Malformed)?;
        }
        Ok(critical)
    }

    /// The encapsulated frame.
    #[inline]
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[self.header_len()..]
    }
}

/// A Geneve header without options, as values: what Pollux sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct GeneveRepr {
    /// Virtual Network Identifier (24 bits).
    pub vni: u32,
    /// Protocol type of the payload.
    pub protocol: u16,
}

impl GeneveRepr {
    /// Reads `packet`: version 0, no control message, no critical option (Pollux knows
    /// none, RFC 8926 §3.5.1 asks to drop), options skipped.
    pub fn parse<T: AsRef<[u8]>>(packet: &GenevePacket<T>) -> Result<Self> {
        packet.check_len()?;
        if packet.has_critical_option()? || packet.flags() & FLAG_OAM != 0 {
            return Err(Error::Unsupported);
        }
        Ok(GeneveRepr {
            vni: packet.vni(),
            protocol: packet.protocol(),
        })
    }

    /// Bytes `emit` writes: the header only; the inner frame is the caller's.
    #[inline]
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    /// Writes the header: version 0, no options, no flags, the protocol and the VNI.
    pub fn emit(&self, buf: &mut [u8]) {
        let b = &mut buf[..HEADER_LEN];
        b[0] = 0;
        b[1] = 0;
        b[2..4].copy_from_slice(&self.protocol.to_be_bytes());
        b[4..8].copy_from_slice(&((self.vni & VNI_MAX) << 8).to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn header_fields_and_options() {
        // Version 0, 2 words of options, C flag; Ethernet; VNI 0x123456; one critical
        // option (class 0x0102, type 0x80 | 5, one data word).
        let pkt = [
            0x02, 0x40, 0x65, 0x58, 0x12, 0x34, 0x56, 0x00, //
            0x01, 0x02, 0x85, 0x01, 0xde, 0xad, 0xbe, 0xef, //
            0xaa, 0xbb,
        ];
        let p = GenevePacket::new_checked(&pkt[..]).unwrap();
        assert_eq!(
            (p.version(), p.options_len(), p.protocol(), p.vni()),
            (0, 8, PROTO_ETHERNET, 0x123456)
        );
        assert_eq!(p.payload(), &[0xaa, 0xbb]);
        assert_eq!(p.has_critical_option(), Ok(true));
        assert_eq!(GeneveRepr::parse(&p), Err(Error::Unsupported));
        // The same option without its critical bit is skipped.
        let mut plain = pkt;
        plain[10] = 0x05;
        let p = GenevePacket::new_checked(&plain[..]).unwrap();
        assert_eq!(
            GeneveRepr::parse(&p),
            Ok(GeneveRepr {
                vni: 0x123456,
                protocol: PROTO_ETHERNET
            })
        );
        // An option longer than the options area.
        let mut long = plain;
        long[11] = 0x02;
        let p = GenevePacket::new_checked(&long[..]).unwrap();
        assert_eq!(p.has_critical_option(), Err(Error::Malformed));
        // Options announced past the buffer; another version; a control message.
        assert_eq!(
            GenevePacket::new_checked(&pkt[..12]).unwrap_err(),
            Error::Truncated
        );
        let mut v1 = plain;
        v1[0] |= 0x40;
        assert_eq!(
            GenevePacket::new_checked(&v1[..]).unwrap_err(),
            Error::Malformed
        );
        let mut oam = plain;
        oam[1] = FLAG_OAM;
        assert_eq!(
            GeneveRepr::parse(&GenevePacket::new_checked(&oam[..]).unwrap()),
            Err(Error::Unsupported)
        );
    }

    #[test]
    fn emit_writes_the_bare_header() {
        let mut buf = [0xee; 8];
        GeneveRepr {
            vni: 0x0abc_def1,
            protocol: PROTO_ETHERNET,
        }
        .emit(&mut buf);
        assert_eq!(buf, [0, 0, 0x65, 0x58, 0xbc, 0xde, 0xf1, 0]);
    }

    proptest! {
        #[test]
        fn checked_never_panics(data in proptest::collection::vec(any::<u8>(), 0..300)) {
            if let Ok(p) = GenevePacket::new_checked(&data[..]) {
                let _ = (p.flags(), p.vni(), p.protocol(), p.payload(), p.options());
                let _ = p.has_critical_option();
                if let Ok(r) = GeneveRepr::parse(&p) {
                    prop_assert_eq!(r.vni, p.vni());
                    prop_assert!(p.header_len() <= data.len());
                }
            }
        }

        #[test]
        fn repr_round_trip(vni in 0u32..=VNI_MAX, protocol in any::<u16>()) {
            let repr = GeneveRepr { vni, protocol };
            let mut buf = [0xffu8; 8];
            repr.emit(&mut buf);
            prop_assert_eq!(GeneveRepr::parse(&GenevePacket::new_checked(&buf[..]).unwrap()), Ok(repr));
        }
    }
}
