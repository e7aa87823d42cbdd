//! Ethernet II frames and MAC addresses.

use core::fmt;
use core::str::FromStr;

use super::{get_u16, set_u16, Error, Result};
use crate::ident::PackedMac;

/// A 48-bit IEEE MAC address.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EthernetAddress(pub [u8; 6]);

impl EthernetAddress {
    /// `ff:ff:ff:ff:ff:ff`.
    pub const BROADCAST: EthernetAddress = EthernetAddress([0xff; 6]);

    /// The address's six bytes, first on the wire first.
    #[inline]
    pub const fn as_bytes(&self) -> &[u8; 6] {
        &self.0
    }

    /// All ones.
    #[inline]
    pub fn is_broadcast(&self) -> bool {
        *self == Self::BROADCAST
    }

    /// The I/G bit is set: a group address, broadcast included.
    #[inline]
    pub const fn is_multicast(&self) -> bool {
        self.0[0] & 0x01 != 0
    }

    /// An individual (station) address: the I/G bit is clear.
    #[inline]
    pub const fn is_unicast(&self) -> bool {
        !self.is_multicast()
    }

    /// The U/L bit is set: locally administered rather than vendor-assigned.
    #[inline]
    pub const fn is_local(&self) -> bool {
        self.0[0] & 0x02 != 0
    }

    /// The address packed big-endian into the low 48 bits, so that integer order is the
    /// byte order and a `u64` key can stand for the address in tables.
    #[inline]
    pub const fn as_u64(&self) -> u64 {
        let b = self.0;
        // Two loads and shifts; building an 8-byte array first compiles to vector shuffles.
        ((u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as u64) << 16)
            | u16::from_be_bytes([b[4], b[5]]) as u64
    }

    /// The inverse of [`as_u64`](Self::as_u64); the top 16 bits are ignored.
    #[inline]
    pub const fn from_u64(v: u64) -> Self {
        let b = v.to_be_bytes();
        EthernetAddress([b[2], b[3], b[4], b[5], b[6], b[7]])
    }
}

impl fmt::Display for EthernetAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

/// The text was not six colon-separated two-digit hex octets (`aa:bb:cc:dd:ee:ff`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ParseEthernetAddressError(());

impl fmt::Display for ParseEthernetAddressError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("invalid MAC address: expected six two-digit hex octets like aa:bb:cc:dd:ee:ff")
    }
}

impl std::error::Error for ParseEthernetAddressError {}

impl FromStr for EthernetAddress {
    type Err = ParseEthernetAddressError;

    /// Parses `aa:bb:cc:dd:ee:ff`, hex digits in either case.
    fn from_str(s: &str) -> core::result::Result<Self, Self::Err> {
        let err = ParseEthernetAddressError(());
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for byte in &mut out {
            let part = parts.next().ok_or(err)?;
            if part.len() != 2 || !part.bytes().all(|c| c.is_ascii_hexdigit()) {
                return Err(err);
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| err)?;
        }
        if parts.next().is_some() {
            return Err(err);
        }
        Ok(EthernetAddress(out))
    }
}

/// The EtherType field: what the frame (or VLAN tag) carries next.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EtherType(pub u16);

impl EtherType {
    /// Internet Protocol version 4.
    pub const IPV4: EtherType = EtherType(0x0800);
    /// Address Resolution Protocol.
    pub const ARP: EtherType = EtherType(0x0806);
    /// IEEE 802.1Q customer VLAN tag (C-TAG).
    pub const VLAN: EtherType = EtherType(0x8100);
    /// IEEE 802.1ad service VLAN tag (S-TAG, the outer tag of QinQ).
    pub const QINQ: EtherType = EtherType(0x88a8);
    /// Internet Protocol version 6.
    pub const IPV6: EtherType = EtherType(0x86dd);
}

impl fmt::Display for EtherType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            EtherType::IPV4 => f.write_str("IPv4"),
            EtherType::ARP => f.write_str("ARP"),
            EtherType::VLAN => f.write_str("802.1Q"),
            EtherType::QINQ => f.write_str("802.1ad"),
            EtherType::IPV6 => f.write_str("IPv6"),
            EtherType(v) => write!(f, "0x{v:04x}"),
        }
    }
}

mod field {
    use crate::wire::{Field, Rest};

    pub const DST: Field = 0..6;
    pub const SRC: Field = 6..12;
    pub const ETHERTYPE: Field = 12..14;
    pub const PAYLOAD: Rest = 14..;
}

/// A view of an Ethernet II frame: destination, source, EtherType, payload. The payload
/// runs to the end of the buffer (any FCS has already been stripped by the driver).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EthernetFrame<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> EthernetFrame<T> {
    /// Length of the header: two addresses and the EtherType.
    pub const HEADER_LEN: usize = field::PAYLOAD.start;

    /// Wraps `buffer` without checking its length; accessors may panic on a short buffer.
    #[inline]
    pub const fn new_unchecked(buffer: T) -> Self {
        EthernetFrame { buffer }
    }

    /// Wraps `buffer` after [`check_len`](Self::check_len).
    #[inline]
    pub fn new_checked(buffer: T) -> Result<Self> {
        let frame = Self::new_unchecked(buffer);
        frame.check_len()?;
        Ok(frame)
    }

    /// Fails with [`Error::Truncated`] if the buffer cannot hold the header.
    #[inline]
    pub fn check_len(&self) -> Result<()> {
        if self.buffer.as_ref().len() < Self::HEADER_LEN {
            return Err(Error::Truncated);
        }
        Ok(())
    }

    /// The underlying buffer.
    #[inline]
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// Destination address.
    #[inline]
    pub fn dst_addr(&self) -> EthernetAddress {
        let mut a = [0; 6];
        a.copy_from_slice(&self.buffer.as_ref()[field::DST]);
        EthernetAddress(a)
    }

    /// Source address.
    #[inline]
    pub fn src_addr(&self) -> EthernetAddress {
        let mut a = [0; 6];
        a.copy_from_slice(&self.buffer.as_ref()[field::SRC]);
        EthernetAddress(a)
    }

    /// Destination address packed as [`EthernetAddress::as_u64`] does, read with one 8-byte
    /// load (the hot path keys its tables on this).
    #[inline]
    pub fn dst_mac(&self) -> PackedMac {
        let mut b = [0; 8];
        b.copy_from_slice(&self.buffer.as_ref()[field::DST.start..field::DST.start + 8]);
        PackedMac::from_bits(u64::from_be_bytes(b) >> 16)
    }

    /// Source address packed as [`EthernetAddress::as_u64`] does, read with one 8-byte load
    /// that ends where the source address ends.
    #[inline]
    pub fn src_mac(&self) -> PackedMac {
        let mut b = [0; 8];
        b.copy_from_slice(&self.buffer.as_ref()[field::SRC.end - 8..field::SRC.end]);
        PackedMac::from_bits(u64::from_be_bytes(b) & 0xffff_ffff_ffff)
    }

    /// EtherType (or TPID, if the frame is VLAN-tagged).
    #[inline]
    pub fn ethertype(&self) -> EtherType {
        EtherType(get_u16(self.buffer.as_ref(), field::ETHERTYPE))
    }

    /// Everything after the header.
    #[inline]
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[field::PAYLOAD]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> EthernetFrame<T> {
    /// Sets the destination address.
    #[inline]
    pub fn set_dst_addr(&mut self, addr: EthernetAddress) {
        self.buffer.as_mut()[field::DST].copy_from_slice(&addr.0);
    }

    /// Sets the source address.
    #[inline]
    pub fn set_src_addr(&mut self, addr: EthernetAddress) {
        self.buffer.as_mut()[field::SRC].copy_from_slice(&addr.0);
    }

    /// Sets the EtherType.
    #[inline]
    pub fn set_ethertype(&mut self, ethertype: EtherType) {
        set_u16(self.buffer.as_mut(), field::ETHERTYPE, ethertype.0);
    }

    /// Everything after the header, writable.
    #[inline]
    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[field::PAYLOAD]
    }
}

/// An Ethernet II header as values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct EthernetRepr {
    /// Source address.
    pub src_addr: EthernetAddress,
    /// Destination address.
    pub dst_addr: EthernetAddress,
    /// EtherType.
    pub ethertype: EtherType,
}

impl EthernetRepr {
    /// Reads the header of `frame`.
    pub fn parse<T: AsRef<[u8]>>(frame: &EthernetFrame<T>) -> Result<Self> {
        frame.check_len()?;
        Ok(EthernetRepr {
            src_addr: frame.src_addr(),
            dst_addr: frame.dst_addr(),
            ethertype: frame.ethertype(),
        })
    }

    /// Length of the header.
    #[inline]
    pub const fn header_len(&self) -> usize {
        field::PAYLOAD.start
    }

    /// Bytes `emit` writes: the header only; the payload is the caller's.
    #[inline]
    pub const fn buffer_len(&self) -> usize {
        self.header_len()
    }

    /// Writes the header into `frame`.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, frame: &mut EthernetFrame<T>) {
        frame.set_dst_addr(self.dst_addr);
        frame.set_src_addr(self.src_addr);
        frame.set_ethertype(self.ethertype);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Broadcast ARP request from 52:54:00:12:34:56 (header + first payload bytes).
    const FRAME: [u8; 18] = [
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, // dst
        0x52, 0x54, 0x00, 0x12, 0x34, 0x56, // src
        0x08, 0x06, // ARP
        0x00, 0x01, 0x08, 0x00, // payload
    ];

    #[test]
    fn fixture_fields() {
        let f = EthernetFrame::new_checked(&FRAME[..]).unwrap();
        assert_eq!(f.dst_addr(), EthernetAddress::BROADCAST);
        assert_eq!(
            f.src_addr(),
            EthernetAddress([0x52, 0x54, 0x00, 0x12, 0x34, 0x56])
        );
        assert_eq!(f.ethertype(), EtherType::ARP);
        assert_eq!(f.payload(), &[0x00, 0x01, 0x08, 0x00]);
        assert_eq!(EthernetFrame::<&[u8]>::HEADER_LEN, 14);
    }

    #[test]
    fn fixture_round_trip() {
        let repr = EthernetRepr::parse(&EthernetFrame::new_checked(&FRAME[..]).unwrap()).unwrap();
        assert_eq!(repr.buffer_len(), 14);
        let mut buf = FRAME;
        buf[..14].fill(0);
        let mut f = EthernetFrame::new_unchecked(&mut buf[..]);
        repr.emit(&mut f);
        assert_eq!(buf, FRAME);
    }

    #[test]
    fn short_buffers() {
        assert_eq!(
            EthernetFrame::new_checked(&FRAME[..13]).unwrap_err(),
            Error::Truncated
        );
        let f = EthernetFrame::new_checked(&FRAME[..14]).unwrap();
        assert!(f.payload().is_empty());
    }

    #[test]
    fn address_classes() {
        let bcast = EthernetAddress::BROADCAST;
        assert!(bcast.is_broadcast() && bcast.is_multicast() && !bcast.is_unicast());
        let mcast = EthernetAddress([0x01, 0x00, 0x5e, 0x00, 0x00, 0x01]);
        assert!(mcast.is_multicast() && !mcast.is_broadcast() && !mcast.is_local());
        let local = EthernetAddress([0x02, 0, 0, 0, 0, 1]);
        assert!(local.is_unicast() && local.is_local());
        let oui = EthernetAddress([0x00, 0x1b, 0x21, 0, 0, 1]);
        assert!(oui.is_unicast() && !oui.is_local());
    }

    #[test]
    fn u64_packing() {
        let a = EthernetAddress([0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff]);
        assert_eq!(a.as_u64(), 0x0000_aabb_ccdd_eeff);
        assert_eq!(EthernetAddress::from_u64(0xffff_aabb_ccdd_eeff), a);
        assert!(
            EthernetAddress([0, 0, 0, 0, 0, 1]).as_u64()
                < EthernetAddress([0, 0, 0, 0, 1, 0]).as_u64()
        );
    }

    #[test]
    fn display_and_parse() {
        let a = EthernetAddress([0x0a, 0xbb, 0x0c, 0xdd, 0x0e, 0xff]);
        assert_eq!(a.to_string(), "0a:bb:0c:dd:0e:ff");
        assert_eq!("0a:bb:0c:dd:0e:ff".parse::<EthernetAddress>(), Ok(a));
        assert_eq!("0A:BB:0C:DD:0E:FF".parse::<EthernetAddress>(), Ok(a));
        for bad in [
            "",
            "0a:bb:0c:dd:0e",
            "0a:bb:0c:dd:0e:ff:00",
            "a:bb:0c:dd:0e:ff",
            "0a:bb:0c:dd:0e:fg",
            "0a-bb-0c-dd-0e-ff",
            "+a:bb:0c:dd:0e:ff",
            "0a:bb:0c:dd:0e:ff:",
        ] {
            assert!(bad.parse::<EthernetAddress>().is_err(), "{bad:?}");
        }
        let err = "x".parse::<EthernetAddress>().unwrap_err();
        assert!(err.to_string().contains("aa:bb:cc:dd:ee:ff"));
    }

    #[test]
    fn ethertype_display() {
        assert_eq!(EtherType::IPV4.to_string(), "IPv4");
        assert_eq!(EtherType(0x88cc).to_string(), "0x88cc");
    }

    proptest! {
        #[test]
        fn checked_never_panics(data in proptest::collection::vec(any::<u8>(), 0..200)) {
            if let Ok(f) = EthernetFrame::new_checked(&data[..]) {
                let _ = (f.dst_addr(), f.src_addr(), f.ethertype(), f.payload());
                prop_assert_eq!(f.dst_mac(), PackedMac::new(f.dst_addr()));
                prop_assert_eq!(f.src_mac(), PackedMac::new(f.src_addr()));
                let repr = EthernetRepr::parse(&f).unwrap();
                prop_assert_eq!(repr.src_addr, f.src_addr());
            }
            let mut copy = data.clone();
            if let Ok(mut f) = EthernetFrame::new_checked(&mut copy[..]) {
                f.set_dst_addr(EthernetAddress::BROADCAST);
                f.set_src_addr(EthernetAddress::BROADCAST);
                f.set_ethertype(EtherType::IPV4);
                f.payload_mut().fill(0);
            }
        }

        #[test]
        fn repr_round_trip(src in any::<[u8; 6]>(), dst in any::<[u8; 6]>(), ty in any::<u16>()) {
            let repr = EthernetRepr { src_addr: EthernetAddress(src), dst_addr: EthernetAddress(dst), ethertype: EtherType(ty) };
            let mut buf = [0u8; 14];
            repr.emit(&mut EthernetFrame::new_unchecked(&mut buf[..]));
            prop_assert_eq!(EthernetRepr::parse(&EthernetFrame::new_checked(&buf[..]).unwrap()).unwrap(), repr);
        }

        #[test]
        fn mac_text_and_u64_round_trip(b in any::<[u8; 6]>(), top in any::<u16>()) {
            let a = EthernetAddress(b);
            prop_assert_eq!(a.to_string().parse::<EthernetAddress>(), Ok(a));
            prop_assert_eq!(EthernetAddress::from_u64(a.as_u64() | (u64::from(top) << 48)), a);
            let expected = b.iter().fold(0u64, |acc, &x| (acc << 8) | u64::from(x));
            prop_assert_eq!(a.as_u64(), expected);
        }
    }
}
