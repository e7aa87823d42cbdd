//! IPv6 (RFC 8200): the fixed header, and the walk over extension headers to the
//! upper-layer protocol.
//!
//! The data plane does not route IPv6; it reads it so that port security can check a VM's
//! IPv6 sources and refuse router advertisements and DHCPv6 replies from VMs, which would
//! otherwise pass a switch that only looks at IPv4.

use core::net::Ipv6Addr;

use super::{get_u16, Error, Field, IpProtocol, Rest, Result};

mod field {
    use super::{Field, Rest};

    pub const VER_TC_FLOW: Field = 0..4;
    pub const PAYLOAD_LEN: Field = 4..6;
    pub const NEXT_HEADER: usize = 6;
    pub const HOP_LIMIT: usize = 7;
    pub const SRC_ADDR: Field = 8..24;
    pub const DST_ADDR: Field = 24..40;
    pub const PAYLOAD: Rest = 40..;
}

/// ICMPv6, the next-header value after which no extension header follows.
pub const ICMPV6: IpProtocol = IpProtocol(58);

/// Extension headers [`Ipv6Packet::upper_layer`] walks over at most. A chain longer than
/// this is refused rather than followed: nothing legitimate needs more, and a bounded walk
/// keeps a hostile chain from costing more than a few reads.
pub const MAX_EXTENSION_HEADERS: usize = 8;

/// A read-only or read-write view of an IPv6 packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ipv6Packet<T: AsRef<[u8]>> {
    buffer: T,
}

/// Where the upper-layer header of an IPv6 packet is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpperLayer {
    /// The protocol and the offset of its header within the IPv6 payload.
    Header(IpProtocol, usize),
    /// A non-first fragment: the upper-layer header is in an earlier fragment.
    LaterFragment(IpProtocol),
}

impl<T: AsRef<[u8]>> Ipv6Packet<T> {
    /// The length of the fixed header.
    pub const HEADER_LEN: usize = 40;

    /// A view over `buffer`, checked with [`Ipv6Packet::check_len`].
    pub fn new_checked(buffer: T) -> Result<Self> {
        let packet = Ipv6Packet { buffer };
        packet.check_len()?;
        Ok(packet)
    }

    /// [`Ipv6Packet::new_checked`] for the first segment of a chained packet: `beyond` more
    /// bytes of the packet follow the buffer in other frames (see
    /// `Ipv4Packet::new_checked_within`); the payload view ends at the buffer's end.
    pub fn new_checked_within(buffer: T, beyond: usize) -> Result<Self> {
        let packet = Ipv6Packet { buffer };
        packet.check_len_within(beyond)?;
        Ok(packet)
    }

    /// Checks that the fixed header fits, that the version is 6 and that the payload the
    /// header announces fits in the buffer (trailing padding is allowed).
    pub fn check_len(&self) -> Result<()> {
        self.check_len_within(0)
    }

    /// [`Ipv6Packet::check_len`] with `beyond` bytes of the packet after the buffer.
    pub fn check_len_within(&self, beyond: usize) -> Result<()> {
        let data = self.buffer.as_ref();
        if data.len() < Self::HEADER_LEN {
            return Err(Error::Truncated);
        }
        if data[0] >> 4 != 6 {
            return Err(Error::Malformed);
        }
        if Self::HEADER_LEN + usize::from(self.payload_len()) > data.len() + beyond {
            return Err(Error::Truncated);
        }
        Ok(())
    }

    /// The version, traffic class and flow label word.
    pub fn ver_tc_flow(&self) -> u32 {
        super::get_u32(self.buffer.as_ref(), field::VER_TC_FLOW)
    }

    /// Length of the payload (extension headers included).
    pub fn payload_len(&self) -> u16 {
        get_u16(self.buffer.as_ref(), field::PAYLOAD_LEN)
    }

    /// The first next-header value.
    pub fn next_header(&self) -> IpProtocol {
        IpProtocol(self.buffer.as_ref()[field::NEXT_HEADER])
    }

    /// Hop limit.
    pub fn hop_limit(&self) -> u8 {
        self.buffer.as_ref()[field::HOP_LIMIT]
    }

    /// Source address.
    pub fn src_addr(&self) -> Ipv6Addr {
        Ipv6Addr::from(self.addr(field::SRC_ADDR))
    }

    /// Destination address.
    pub fn dst_addr(&self) -> Ipv6Addr {
        Ipv6Addr::from(self.addr(field::DST_ADDR))
    }

    fn addr(&self, field: Field) -> [u8; 16] {
        let mut a = [0; 16];
        a.copy_from_slice(&self.buffer.as_ref()[field]);
        a
    }

    /// The payload the header announces.
    pub fn payload(&self) -> &[u8] {
        // Within the buffer: a chained packet's payload goes on in other frames.
        let end =
            (Self::HEADER_LEN + usize::from(self.payload_len())).min(self.buffer.as_ref().len());
        &self.buffer.as_ref()[field::PAYLOAD][..end - Self::HEADER_LEN]
    }

    /// Follows the extension headers (hop-by-hop, routing, fragment, destination options)
    /// to the upper-layer protocol. `Err(Truncated)` when a header does not fit,
    /// `Err(Unsupported)` for a chain longer than [`MAX_EXTENSION_HEADERS`].
    pub fn upper_layer(&self) -> Result<UpperLayer> {
        let payload = self.payload();
        let mut next = self.next_header();
        let mut at = 0usize;
        for _ in 0..MAX_EXTENSION_HEADERS {
            match next.0 {
                // Hop-by-hop, routing, destination options: length in 8-octet units,
                // not counting the first 8.
                0 | 43 | 60 => {
                    let h = payload.get(at..at + 2).ok_or(Error::Truncated)?;
                    next = IpProtocol(h[0]);
                    at += (usize::from(h[1]) + 1) * 8;
                    if at > payload.len() {
                        return Err(Error::Truncated);
                    }
                }
                // Fragment: fixed 8 octets; offset in the top 13 bits of bytes 2..4.
                44 => {
                    let h = payload.get(at..at + 8).ok_or(Error::Truncated)?;
                    next = IpProtocol(h[0]);
                    let offset = u16::from_be_bytes([h[2], h[3]]) >> 3;
                    at += 8;
                    if offset != 0 {
                        return Ok(UpperLayer::LaterFragment(next));
                    }
                }
                _ => return Ok(UpperLayer::Header(next, at)),
            }
        }
        Err(Error::Unsupported)
    }
}

/// The link-local address a host forms from its MAC (modified EUI-64, RFC 4291
/// appendix A), as Neutron computes it for anti-spoofing rules.
pub fn link_local_from_mac(mac: [u8; 6]) -> Ipv6Addr {
    Ipv6Addr::from([
        0xfe,
        0x80,
        0,
        0,
        0,
        0,
        0,
        0,
        mac[0] ^ 0x02,
        mac[1],
        mac[2],
        0xff,
        0xfe,
        mac[3],
        mac[4],
        mac[5],
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(next: u8, payload: &[u8]) -> Vec<u8> {
        let mut p = vec![0u8; 40];
        p[0] = 0x60;
        p[4..6].copy_from_slice(&(payload.len() as u16).to_be_bytes());
        p[6] = next;
        p[7] = 255;
        p[8..24].copy_from_slice(&Ipv6Addr::LOCALHOST.octets());
        p[24..40].copy_from_slice(&"ff02::1".parse::<Ipv6Addr>().unwrap().octets());
        p.extend_from_slice(payload);
        p
    }

    #[test]
    fn a_chained_packets_payload_length_is_checked_against_the_whole_chain() {
        let mut p = packet(17, &[0; 960]);
        p[4..6].copy_from_slice(&3000u16.to_be_bytes());
        assert_eq!(
            Ipv6Packet::new_checked(&p[..]).unwrap_err(),
            Error::Truncated
        );
        assert!(Ipv6Packet::new_checked_within(&p[..], 2039).is_err());
        let ip = Ipv6Packet::new_checked_within(&p[..], 2040).unwrap();
        assert_eq!(ip.payload().len(), 960);
    }

    #[test]
    fn fixed_header_fields() {
        let p = packet(58, &[134, 0, 0, 0]);
        let v = Ipv6Packet::new_checked(&p[..]).unwrap();
        assert_eq!(v.payload_len(), 4);
        assert_eq!(v.next_header(), ICMPV6);
        assert_eq!(v.hop_limit(), 255);
        assert_eq!(v.src_addr(), Ipv6Addr::LOCALHOST);
        assert_eq!(v.dst_addr(), "ff02::1".parse::<Ipv6Addr>().unwrap());
        assert_eq!(v.upper_layer(), Ok(UpperLayer::Header(ICMPV6, 0)));
        assert_eq!(v.ver_tc_flow() >> 28, 6);
    }

    #[test]
    fn walks_extension_headers_to_icmpv6() {
        // Hop-by-hop (8 bytes) then destination options (16 bytes) then ICMPv6.
        let mut payload = vec![60, 0, 0, 0, 0, 0, 0, 0];
        payload.extend_from_slice(&[58, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        payload.extend_from_slice(&[134, 0, 0, 0]);
        let p = packet(0, &payload);
        let v = Ipv6Packet::new_checked(&p[..]).unwrap();
        assert_eq!(v.upper_layer(), Ok(UpperLayer::Header(ICMPV6, 24)));
    }

    #[test]
    fn later_fragment_has_no_upper_header() {
        let frag = [17, 0, 0x00, 0x08, 0, 0, 0, 1];
        let p = packet(44, &frag);
        let v = Ipv6Packet::new_checked(&p[..]).unwrap();
        assert_eq!(
            v.upper_layer(),
            Ok(UpperLayer::LaterFragment(IpProtocol(17)))
        );
        let first = [17, 0, 0x00, 0x01, 0, 0, 0, 1];
        let p = packet(44, &first);
        let v = Ipv6Packet::new_checked(&p[..]).unwrap();
        assert_eq!(v.upper_layer(), Ok(UpperLayer::Header(IpProtocol(17), 8)));
    }

    #[test]
    fn refuses_truncated_and_endless_chains() {
        assert_eq!(
            Ipv6Packet::new_checked(&[0x60u8; 39][..]),
            Err(Error::Truncated)
        );
        let mut p = packet(58, &[0; 4]);
        p[0] = 0x40;
        assert_eq!(Ipv6Packet::new_checked(&p[..]), Err(Error::Malformed));
        let mut p = packet(58, &[0; 4]);
        p[5] = 200;
        assert_eq!(Ipv6Packet::new_checked(&p[..]), Err(Error::Truncated));
        // A header claiming more than the payload holds.
        let p = packet(0, &[58, 4, 0, 0, 0, 0, 0, 0]);
        let v = Ipv6Packet::new_checked(&p[..]).unwrap();
        assert_eq!(v.upper_layer(), Err(Error::Truncated));
        // Nine hop-by-hop headers in a row.
        let payload: Vec<u8> = (0..9).flat_map(|_| [0u8, 0, 0, 0, 0, 0, 0, 0]).collect();
        let p = packet(0, &payload);
        let v = Ipv6Packet::new_checked(&p[..]).unwrap();
        assert_eq!(v.upper_layer(), Err(Error::Unsupported));
    }

    #[test]
    fn link_local_is_modified_eui64() {
        assert_eq!(
            link_local_from_mac([0xfa, 0x16, 0x3e, 0x00, 0x00, 0x01]),
            "fe80::f816:3eff:fe00:1".parse::<Ipv6Addr>().unwrap()
        );
    }

    proptest::proptest! {
        #[test]
        fn never_panics(data in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
            if let Ok(v) = Ipv6Packet::new_checked(&data[..]) {
                let _ = (v.src_addr(), v.dst_addr(), v.payload(), v.upper_layer());
            }
        }
    }
}
