//! VXLAN (RFC 7348): an Ethernet frame inside UDP, tagged with a 24-bit network identifier.
//!
//! ```text
//!  0       1       2       3
//! |R R R R I R R R|        Reserved (24)          |
//! |        VXLAN Network Identifier (24)  | Rsvd  |
//! ```

use super::{get_u32, Error, Result};

/// IANA-assigned UDP destination port for VXLAN.
pub const VXLAN_PORT: u16 = 4789;
/// The I flag: the VNI is valid. RFC 7348 requires it set.
pub const FLAG_I: u8 = 0x08;
/// Largest VNI (24 bits).
pub const VNI_MAX: u32 = 0x00ff_ffff;

/// Length of the VXLAN header.
pub const HEADER_LEN: usize = field::PAYLOAD.start;

mod field {
    use crate::wire::{Field, Rest};

    pub const FLAGS: usize = 0;
    pub const RESERVED1: Field = 1..4;
    /// The VNI (bytes 4..7) and the last reserved byte, read as one word.
    pub const VNI_RESERVED2: Field = 4..8;
    pub const VNI: Field = 4..7;
    pub const RESERVED2: usize = 7;
    pub const PAYLOAD: Rest = 8..;
}

/// A view of a VXLAN header and the Ethernet frame it carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VxlanPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> VxlanPacket<T> {
    /// Wraps `buffer` without checking it; accessors may panic on a short buffer.
    #[inline]
    pub const fn new_unchecked(buffer: T) -> Self {
        VxlanPacket { buffer }
    }

    /// Wraps `buffer` after [`check_len`](Self::check_len).
    #[inline]
    pub fn new_checked(buffer: T) -> Result<Self> {
        let p = Self::new_unchecked(buffer);
        p.check_len()?;
        Ok(p)
    }

    /// Fails with [`Error::Truncated`] if the buffer cannot hold the header, and with
    /// [`Error::Malformed`] if the I flag is clear (RFC 7348 §5: the VNI is then not
    /// valid). Reserved bits are ignored, as the RFC asks of receivers.
    #[inline]
    pub fn check_len(&self) -> Result<()> {
        if self.buffer.as_ref().len() < HEADER_LEN {
            return Err(Error::Truncated);
        }
        if self.flags() & FLAG_I == 0 {
            return Err(Error::Malformed);
        }
        Ok(())
    }

    /// The underlying buffer.
    #[inline]
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// The flags byte.
    #[inline]
    pub fn flags(&self) -> u8 {
        self.buffer.as_ref()[field::FLAGS]
    }

    /// VXLAN Network Identifier.
    #[inline]
    pub fn vni(&self) -> u32 {
        get_u32(self.buffer.as_ref(), field::VNI_RESERVED2) >> 8
    }

    /// The encapsulated Ethernet frame.
    #[inline]
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[field::PAYLOAD]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> VxlanPacket<T> {
    /// Sets the flags byte.
    #[inline]
    pub fn set_flags(&mut self, flags: u8) {
        self.buffer.as_mut()[field::FLAGS] = flags;
    }

    /// Sets the VNI (low 24 bits used), leaving the reserved byte after it alone.
    #[inline]
    pub fn set_vni(&mut self, vni: u32) {
        let b = (vni & VNI_MAX).to_be_bytes();
        self.buffer.as_mut()[field::VNI].copy_from_slice(&b[1..]);
    }

    /// The encapsulated Ethernet frame, writable.
    #[inline]
    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[field::PAYLOAD]
    }
}

/// A VXLAN header as values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct VxlanRepr {
    /// VXLAN Network Identifier (24 bits).
    pub vni: u32,
}

impl VxlanRepr {
    /// Reads `packet` (a clear I flag is [`Error::Malformed`]).
    pub fn parse<T: AsRef<[u8]>>(packet: &VxlanPacket<T>) -> Result<Self> {
        packet.check_len()?;
        Ok(VxlanRepr { vni: packet.vni() })
    }

    /// Length of the header.
    #[inline]
    pub const fn header_len(&self) -> usize {
        HEADER_LEN
    }

    /// Bytes `emit` writes: the header only; the inner frame is the caller's.
    #[inline]
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    /// Writes the header: the I flag, the VNI, and zeros in every reserved bit.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut VxlanPacket<T>) {
        packet.set_flags(FLAG_I);
        let b = packet.buffer.as_mut();
        b[field::RESERVED1].fill(0);
        b[field::RESERVED2] = 0;
        packet.set_vni(self.vni);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{
        ArpPacket, ArpRepr, EtherType, EthernetAddress, EthernetFrame, EthernetRepr, IpProtocol,
        Ipv4Packet, Ipv4Repr, UdpPacket, UdpRepr,
    };
    use proptest::prelude::*;
    use std::net::Ipv4Addr;

    /// An ARP request carried in VNI 100 from VTEP 192.168.1.1 to 192.168.1.2, with a zero
    /// UDP checksum as most VTEPs send.
    const ENCAPSULATED: [u8; 92] = [
        0x52, 0x54, 0x00, 0x00, 0x00, 0x02, 0x52, 0x54, 0x00, 0x00, 0x00, 0x01, 0x08,
        0x00, // outer Ethernet
        0x45, 0x00, 0x00, 0x4e, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0xb7, 0x4b, // outer IPv4
        0xc0, 0xa8, 0x01, 0x01, 0xc0, 0xa8, 0x01, 0x02, //
        0xd4, 0x31, 0x12, 0xb5, 0x00, 0x3a, 0x00,
        0x00, // UDP 54321 -> 4789, length 58, no checksum
        0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x64, 0x00, // VXLAN, I flag, VNI 100
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x52, 0x54, 0x00, 0x12, 0x34, 0x56, 0x08,
        0x06, // inner Ethernet
        0x00, 0x01, 0x08, 0x00, 0x06, 0x04, 0x00, 0x01, // ARP request
        0x52, 0x54, 0x00, 0x12, 0x34, 0x56, 0x0a, 0x00, 0x00, 0x01, //
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x0a, 0x00, 0x00, 0x02, //
    ];

    #[test]
    fn encapsulated_fixture() {
        let outer = EthernetFrame::new_checked(&ENCAPSULATED[..]).unwrap();
        assert_eq!(outer.ethertype(), EtherType::IPV4);
        let ip = Ipv4Packet::new_checked(outer.payload()).unwrap();
        assert!(ip.verify_checksum());
        assert_eq!(ip.protocol(), IpProtocol::UDP);
        assert_eq!(
            (ip.src_addr(), ip.dst_addr()),
            (Ipv4Addr::new(192, 168, 1, 1), Ipv4Addr::new(192, 168, 1, 2))
        );
        let udp = UdpPacket::new_checked(ip.payload()).unwrap();
        assert_eq!(
            (udp.src_port(), udp.dst_port(), udp.length(), udp.checksum()),
            (54321, VXLAN_PORT, 58, 0)
        );
        assert!(udp.verify_checksum(ip.src_addr(), ip.dst_addr()));
        let vxlan = VxlanPacket::new_checked(udp.payload()).unwrap();
        assert_eq!(vxlan.flags(), FLAG_I);
        assert_eq!(vxlan.vni(), 100);
        let inner = EthernetFrame::new_checked(vxlan.payload()).unwrap();
        assert_eq!(inner.dst_addr(), EthernetAddress::BROADCAST);
        assert_eq!(inner.ethertype(), EtherType::ARP);
        let arp = ArpRepr::parse(&ArpPacket::new_checked(inner.payload()).unwrap()).unwrap();
        assert_eq!(arp.target_protocol_addr, Ipv4Addr::new(10, 0, 0, 2));

        // Rebuild every layer from its repr.
        let reprs = (
            EthernetRepr::parse(&outer).unwrap(),
            Ipv4Repr::parse(&ip).unwrap(),
            UdpRepr::parse(&udp).unwrap(),
            VxlanRepr::parse(&vxlan).unwrap(),
            EthernetRepr::parse(&inner).unwrap(),
        );
        assert_eq!(reprs.3, VxlanRepr { vni: 100 });
        assert_eq!((reprs.3.header_len(), reprs.3.buffer_len()), (8, 8));
        let mut buf = [0xeeu8; 92];
        let mut f = EthernetFrame::new_unchecked(&mut buf[..]);
        reprs.0.emit(&mut f);
        let mut ip = Ipv4Packet::new_unchecked(f.payload_mut());
        reprs.1.emit(&mut ip);
        let mut udp = UdpPacket::new_unchecked(ip.payload_mut());
        reprs.2.emit(&mut udp);
        let mut vx = VxlanPacket::new_unchecked(udp.payload_mut());
        reprs.3.emit(&mut vx);
        let mut inner = EthernetFrame::new_unchecked(vx.payload_mut());
        reprs.4.emit(&mut inner);
        arp.emit(&mut ArpPacket::new_unchecked(inner.payload_mut()));
        assert_eq!(buf, ENCAPSULATED);
    }

    #[test]
    fn rejects_missing_i_flag_and_short() {
        let mut hdr = [0x08, 0, 0, 0, 0xab, 0xcd, 0xef, 0];
        assert_eq!(
            VxlanPacket::new_checked(&hdr[..]).map(|p| p.vni()),
            Ok(0xabcdef)
        );
        assert_eq!(
            VxlanPacket::new_checked(&hdr[..7]).unwrap_err(),
            Error::Truncated
        );
        hdr[0] = 0x00;
        assert_eq!(
            VxlanPacket::new_checked(&hdr[..]).unwrap_err(),
            Error::Malformed
        );
        assert_eq!(
            VxlanRepr::parse(&VxlanPacket::new_unchecked(&hdr[..])),
            Err(Error::Malformed)
        );
        // Reserved bits are ignored on receive.
        let hdr = [0xff; 8];
        assert_eq!(
            VxlanRepr::parse(&VxlanPacket::new_checked(&hdr[..]).unwrap()),
            Ok(VxlanRepr { vni: VNI_MAX })
        );
    }

    #[test]
    fn set_vni_keeps_reserved_byte() {
        let mut hdr = [0x08, 0, 0, 0, 0, 0, 0, 0x5a];
        let mut p = VxlanPacket::new_checked(&mut hdr[..]).unwrap();
        p.set_vni(0x0123_4567);
        assert_eq!(p.vni(), 0x23_4567);
        assert_eq!(hdr, [0x08, 0, 0, 0, 0x23, 0x45, 0x67, 0x5a]);
    }

    proptest! {
        #[test]
        fn checked_never_panics(data in proptest::collection::vec(any::<u8>(), 0..200)) {
            if let Ok(p) = VxlanPacket::new_checked(&data[..]) {
                let _ = (p.flags(), p.vni(), p.payload());
                prop_assert_eq!(VxlanRepr::parse(&p).map(|r| r.vni), Ok(p.vni()));
            }
        }

        #[test]
        fn repr_round_trip(vni in 0u32..=VNI_MAX, junk in any::<[u8; 8]>()) {
            let repr = VxlanRepr { vni };
            let mut buf = junk;
            repr.emit(&mut VxlanPacket::new_unchecked(&mut buf[..]));
            prop_assert_eq!(buf[0], FLAG_I);
            prop_assert_eq!(&buf[1..4], &[0, 0, 0]);
            prop_assert_eq!(buf[7], 0);
            prop_assert_eq!(VxlanRepr::parse(&VxlanPacket::new_checked(&buf[..]).unwrap()), Ok(repr));
        }
    }
}
