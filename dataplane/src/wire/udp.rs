//! UDP (RFC 768) datagrams over IPv4.

use std::net::Ipv4Addr;

use super::checksum;
use super::{get_u16, set_u16, Error, IpProtocol, Result};

/// Length of the UDP header.
pub const HEADER_LEN: usize = field::PAYLOAD.start;

mod field {
    use crate::wire::{Field, Rest};

    pub const SRC_PORT: Field = 0..2;
    pub const DST_PORT: Field = 2..4;
    pub const LENGTH: Field = 4..6;
    pub const CHECKSUM: Field = 6..8;
    pub const PAYLOAD: Rest = 8..;
}

/// Over IPv4 a computed checksum of 0 is sent as `0xffff`, because 0 means "no checksum".
#[inline]
fn nonzero(csum: u16) -> u16 {
    if csum == 0 {
        0xffff
    } else {
        csum
    }
}

/// A view of a UDP datagram. The buffer should start at the UDP header (normally
/// [`Ipv4Packet::payload`](super::Ipv4Packet::payload)); the datagram ends where its
/// length field says, which may be before the end of the buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UdpPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> UdpPacket<T> {
    /// Wraps `buffer` without checking it; accessors may panic on a short buffer.
    #[inline]
    pub const fn new_unchecked(buffer: T) -> Self {
        UdpPacket { buffer }
    }

    /// Wraps `buffer` after [`check_len`](Self::check_len).
    #[inline]
    pub fn new_checked(buffer: T) -> Result<Self> {
        let p = Self::new_unchecked(buffer);
        p.check_len()?;
        Ok(p)
    }

    /// Checks `8 <= length <= buffer length`: [`Error::Truncated`] if the buffer is
    /// shorter than the header or the length field, [`Error::Malformed`] if the length
    /// field is below 8.
    #[inline]
    pub fn check_len(&self) -> Result<()> {
        let len = self.buffer.as_ref().len();
        if len < HEADER_LEN {
            return Err(Error::Truncated);
        }
        let field_len = usize::from(self.length());
        if field_len < HEADER_LEN {
            return Err(Error::Malformed);
        }
        if field_len > len {
            return Err(Error::Truncated);
        }
        Ok(())
    }

    /// The underlying buffer.
    #[inline]
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// Source port.
    #[inline]
    pub fn src_port(&self) -> u16 {
        get_u16(self.buffer.as_ref(), field::SRC_PORT)
    }

    /// Destination port.
    #[inline]
    pub fn dst_port(&self) -> u16 {
        get_u16(self.buffer.as_ref(), field::DST_PORT)
    }

    /// The length field: header plus payload.
    #[inline]
    pub fn length(&self) -> u16 {
        get_u16(self.buffer.as_ref(), field::LENGTH)
    }

    /// The checksum field (0: none was computed).
    #[inline]
    pub fn checksum(&self) -> u16 {
        get_u16(self.buffer.as_ref(), field::CHECKSUM)
    }

    /// End of the datagram within the buffer (clamped, so a setter cannot make it panic).
    #[inline]
    fn end(&self) -> usize {
        usize::from(self.length()).clamp(HEADER_LEN, self.buffer.as_ref().len())
    }

    /// The payload, ending where the length field says.
    #[inline]
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..self.end()]
    }

    /// One's-complement sum of the pseudo-header and the datagram.
    #[inline]
    fn sum(&self, src: Ipv4Addr, dst: Ipv4Addr) -> u16 {
        let ph = checksum::pseudo_header_v4(src, dst, IpProtocol::UDP.0, self.length());
        checksum::add(ph, checksum::sum(&self.buffer.as_ref()[..self.end()]))
    }

    /// Whether the checksum is absent (0) or correct for these IPv4 addresses.
    #[inline]
    pub fn verify_checksum(&self, src: Ipv4Addr, dst: Ipv4Addr) -> bool {
        self.checksum() == 0 || self.sum(src, dst) == 0xffff
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> UdpPacket<T> {
    /// Sets the source port, leaving the checksum stale.
    #[inline]
    pub fn set_src_port(&mut self, port: u16) {
        set_u16(self.buffer.as_mut(), field::SRC_PORT, port);
    }

    /// Sets the destination port, leaving the checksum stale.
    #[inline]
    pub fn set_dst_port(&mut self, port: u16) {
        set_u16(self.buffer.as_mut(), field::DST_PORT, port);
    }

    /// Sets the length field.
    #[inline]
    pub fn set_length(&mut self, len: u16) {
        set_u16(self.buffer.as_mut(), field::LENGTH, len);
    }

    /// Sets the checksum field (0 for none).
    #[inline]
    pub fn set_checksum(&mut self, csum: u16) {
        set_u16(self.buffer.as_mut(), field::CHECKSUM, csum);
    }

    /// The payload (up to the length field), writable.
    #[inline]
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let end = self.end();
        &mut self.buffer.as_mut()[HEADER_LEN..end]
    }

    /// Computes the checksum with the IPv4 pseudo-header (a result of 0 is sent as 0xffff).
    #[inline]
    pub fn fill_checksum(&mut self, src: Ipv4Addr, dst: Ipv4Addr) {
        self.set_checksum(0);
        let csum = !self.sum(src, dst);
        self.set_checksum(nonzero(csum));
    }

    /// Applies an RFC 1624 update unless the datagram carries no checksum.
    #[inline]
    fn patch_checksum(&mut self, update: impl FnOnce(u16) -> u16) {
        let old = self.checksum();
        if old != 0 {
            self.set_checksum(nonzero(update(old)));
        }
    }

    /// Sets the source port and patches the checksum for it.
    #[inline]
    pub fn set_src_port_incremental(&mut self, port: u16) {
        let old = self.src_port();
        self.set_src_port(port);
        self.patch_checksum(|c| checksum::update16(c, old, port));
    }

    /// Sets the destination port and patches the checksum for it.
    #[inline]
    pub fn set_dst_port_incremental(&mut self, port: u16) {
        let old = self.dst_port();
        self.set_dst_port(port);
        self.patch_checksum(|c| checksum::update16(c, old, port));
    }

    /// Patches the checksum for an IPv4 source or destination address that changed from
    /// `old` to `new` (the pseudo-header covers both), e.g. after
    /// [`Ipv4Packet::set_src_incremental`](super::Ipv4Packet::set_src_incremental).
    #[inline]
    pub fn update_checksum_for_addr(&mut self, old: Ipv4Addr, new: Ipv4Addr) {
        self.patch_checksum(|c| checksum::update32(c, old.into(), new.into()));
    }
}

/// A UDP header as values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct UdpRepr {
    /// Source port.
    pub src_port: u16,
    /// Destination port.
    pub dst_port: u16,
    /// Length of the payload (`length - 8`).
    pub payload_len: usize,
}

impl UdpRepr {
    /// Reads `packet`. The checksum needs the IP addresses, so it is not checked here:
    /// call [`UdpPacket::verify_checksum`].
    pub fn parse<T: AsRef<[u8]>>(packet: &UdpPacket<T>) -> Result<Self> {
        packet.check_len()?;
        Ok(UdpRepr {
            src_port: packet.src_port(),
            dst_port: packet.dst_port(),
            payload_len: usize::from(packet.length()) - HEADER_LEN,
        })
    }

    /// Length of the header.
    #[inline]
    pub const fn header_len(&self) -> usize {
        HEADER_LEN
    }

    /// Header plus payload: the length field `emit` writes.
    #[inline]
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN + self.payload_len
    }

    /// Writes the header with a zero ("none") checksum. Write the payload, then call
    /// [`UdpPacket::fill_checksum`] to checksum it. `buffer_len()` must fit in 16 bits.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut UdpPacket<T>) {
        debug_assert!(self.buffer_len() <= usize::from(u16::MAX));
        packet.set_src_port(self.src_port);
        packet.set_dst_port(self.dst_port);
        packet.set_length(self.buffer_len() as u16);
        packet.set_checksum(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{Ipv4Packet, Ipv4Repr};
    use proptest::prelude::*;

    const SRC: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
    const DST: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);

    /// A DNS query for example.com A, 10.0.0.1:53000 -> 10.0.0.2:53, in IPv4.
    const DNS: [u8; 57] = [
        0x45, 0x00, 0x00, 0x39, 0x4d, 0x2e, 0x00, 0x00, 0x40, 0x11, 0x19, 0x84, // IPv4
        0x0a, 0x00, 0x00, 0x01, 0x0a, 0x00, 0x00, 0x02, //
        0xcf, 0x08, 0x00, 0x35, // ports 53000 -> 53
        0x00, 0x25, 0xa1, 0x28, // length 37, checksum
        0xab, 0xcd, 0x01, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // DNS header
        0x07, b'e', b'x', b'a', b'm', b'p', b'l', b'e', 0x03, b'c', b'o', b'm', 0x00, // QNAME
        0x00, 0x01, 0x00, 0x01, // QTYPE A, QCLASS IN
    ];

    #[test]
    fn dns_fixture() {
        let ip = Ipv4Packet::new_checked(&DNS[..]).unwrap();
        assert!(ip.verify_checksum());
        assert_eq!(ip.protocol(), IpProtocol::UDP);
        let udp = UdpPacket::new_checked(ip.payload()).unwrap();
        assert_eq!(udp.src_port(), 53000);
        assert_eq!(udp.dst_port(), 53);
        assert_eq!(udp.length(), 37);
        assert_eq!(udp.checksum(), 0xa128);
        assert_eq!(udp.payload(), &DNS[28..]);
        assert!(udp.verify_checksum(SRC, DST));
        assert!(!udp.verify_checksum(SRC, Ipv4Addr::new(10, 0, 0, 3)));

        let ip_repr = Ipv4Repr::parse(&ip).unwrap();
        let repr = UdpRepr::parse(&udp).unwrap();
        assert_eq!(
            repr,
            UdpRepr {
                src_port: 53000,
                dst_port: 53,
                payload_len: 29
            }
        );
        assert_eq!((repr.header_len(), repr.buffer_len()), (8, 37));

        let mut buf = [0u8; 57];
        let mut ip_out = Ipv4Packet::new_unchecked(&mut buf[..]);
        ip_repr.emit(&mut ip_out);
        let mut udp_out = UdpPacket::new_unchecked(ip_out.payload_mut());
        repr.emit(&mut udp_out);
        udp_out.payload_mut().copy_from_slice(&DNS[28..]);
        udp_out.fill_checksum(ip_repr.src_addr, ip_repr.dst_addr);
        assert_eq!(buf, DNS);
    }

    #[test]
    fn zero_checksum_means_none() {
        let mut dgram = [0u8; 37];
        dgram.copy_from_slice(&DNS[20..]);
        let mut udp = UdpPacket::new_checked(&mut dgram[..]).unwrap();
        udp.set_checksum(0);
        assert!(udp.verify_checksum(SRC, Ipv4Addr::BROADCAST));
        udp.set_src_port_incremental(1234);
        udp.update_checksum_for_addr(SRC, DST);
        assert_eq!(udp.checksum(), 0);
    }

    #[test]
    fn computed_zero_is_sent_as_ffff() {
        // Make the datagram's sum 0xffff by choosing the last payload word.
        let mut dgram = [0u8; 10];
        dgram[4..6].copy_from_slice(&10u16.to_be_bytes());
        let mut udp = UdpPacket::new_checked(&mut dgram[..]).unwrap();
        udp.fill_checksum(SRC, DST);
        let word = udp.checksum();
        udp.set_checksum(0);
        udp.payload_mut().copy_from_slice(&word.to_be_bytes());
        udp.fill_checksum(SRC, DST);
        assert_eq!(udp.checksum(), 0xffff);
        assert!(udp.verify_checksum(SRC, DST));
    }

    #[test]
    fn nat_rewrite_keeps_both_checksums_valid() {
        let mut buf = DNS;
        let mut ip = Ipv4Packet::new_checked(&mut buf[..]).unwrap();
        let new_src = Ipv4Addr::new(203, 0, 113, 9);
        let old = ip.set_src_incremental(new_src);
        let mut udp = UdpPacket::new_checked(ip.payload_mut()).unwrap();
        udp.update_checksum_for_addr(old, new_src);
        udp.set_src_port_incremental(40000);
        assert!(udp.verify_checksum(new_src, DST));
        assert!(ip.verify_checksum());
    }

    #[test]
    fn check_len_errors() {
        assert_eq!(
            UdpPacket::new_checked(&DNS[20..27]).unwrap_err(),
            Error::Truncated
        );
        assert_eq!(
            UdpPacket::new_checked(&DNS[20..56]).unwrap_err(),
            Error::Truncated
        );
        let mut d = [0u8; 8];
        d[5] = 7;
        assert_eq!(
            UdpPacket::new_checked(&d[..]).unwrap_err(),
            Error::Malformed
        );
        // Trailing bytes beyond the length field are not payload.
        let mut d = [0u8; 12];
        d[5] = 9;
        assert_eq!(UdpPacket::new_checked(&d[..]).unwrap().payload().len(), 1);
    }

    /// A checksummed datagram with arbitrary ports and payload, and its addresses.
    fn arb_datagram() -> impl Strategy<Value = (Vec<u8>, Ipv4Addr, Ipv4Addr)> {
        (
            proptest::collection::vec(any::<u8>(), 8..80),
            any::<u32>(),
            any::<u32>(),
        )
            .prop_map(|(mut d, s, t)| {
                let len = d.len() as u16;
                let (src, dst) = (Ipv4Addr::from(s), Ipv4Addr::from(t));
                let mut udp = UdpPacket::new_unchecked(&mut d[..]);
                udp.set_length(len);
                udp.fill_checksum(src, dst);
                (d, src, dst)
            })
    }

    proptest! {
        #[test]
        fn checked_never_panics(mut data in proptest::collection::vec(any::<u8>(), 0..200), fix in any::<Option<u16>>()) {
            // Random bytes rarely pass `check_len`; half the time make the length plausible.
            if let (Some(len), true) = (fix, data.len() >= 6) {
                let len = usize::from(len) % (data.len() + 4);
                data[4..6].copy_from_slice(&(len as u16).to_be_bytes());
            }
            if let Ok(p) = UdpPacket::new_checked(&data[..]) {
                let _ = (p.src_port(), p.dst_port(), p.length(), p.checksum(), p.payload());
                let _ = p.verify_checksum(Ipv4Addr::LOCALHOST, Ipv4Addr::BROADCAST);
                let r = UdpRepr::parse(&p).unwrap();
                prop_assert_eq!(r.payload_len, p.payload().len());
            }
        }

        #[test]
        fn repr_round_trip(src_port in any::<u16>(), dst_port in any::<u16>(), payload_len in 0usize..100) {
            let repr = UdpRepr { src_port, dst_port, payload_len };
            let mut buf = vec![0x5a; repr.buffer_len()];
            repr.emit(&mut UdpPacket::new_unchecked(&mut buf[..]));
            prop_assert_eq!(UdpRepr::parse(&UdpPacket::new_checked(&buf[..]).unwrap()), Ok(repr));
        }

        #[test]
        fn incremental_port_matches_recompute((mut d, src, dst) in arb_datagram(), sp in any::<u16>(), dp in any::<u16>()) {
            let mut udp = UdpPacket::new_checked(&mut d[..]).unwrap();
            udp.set_src_port_incremental(sp);
            udp.set_dst_port_incremental(dp);
            let incremental = udp.checksum();
            udp.fill_checksum(src, dst);
            prop_assert_eq!(incremental, udp.checksum());
        }

        #[test]
        fn incremental_addr_matches_recompute((mut d, src, dst) in arb_datagram(), new_src in any::<u32>(), new_dst in any::<u32>()) {
            let (new_src, new_dst) = (Ipv4Addr::from(new_src), Ipv4Addr::from(new_dst));
            let mut udp = UdpPacket::new_checked(&mut d[..]).unwrap();
            udp.update_checksum_for_addr(src, new_src);
            udp.update_checksum_for_addr(dst, new_dst);
            let incremental = udp.checksum();
            prop_assert!(udp.verify_checksum(new_src, new_dst));
            udp.fill_checksum(new_src, new_dst);
            prop_assert_eq!(incremental, udp.checksum());
        }
    }
}
