//! ICMP for IPv4 (RFC 792): echo, destination unreachable, time exceeded.

use super::checksum;
use super::{get_u16, get_u32, set_u16, set_u32, Error, Result};

/// The ICMP message type.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Icmpv4Type(pub u8);

impl Icmpv4Type {
    /// Echo reply.
    pub const ECHO_REPLY: Icmpv4Type = Icmpv4Type(0);
    /// Destination unreachable.
    pub const DST_UNREACHABLE: Icmpv4Type = Icmpv4Type(3);
    /// Redirect.
    pub const REDIRECT: Icmpv4Type = Icmpv4Type(5);
    /// Echo request.
    pub const ECHO_REQUEST: Icmpv4Type = Icmpv4Type(8);
    /// Time exceeded.
    pub const TIME_EXCEEDED: Icmpv4Type = Icmpv4Type(11);
}

/// Length of the ICMP header (type, code, checksum, rest of header).
pub const HEADER_LEN: usize = field::DATA.start;

mod field {
    use crate::wire::{Field, Rest};

    pub const TYPE: usize = 0;
    pub const CODE: usize = 1;
    pub const CHECKSUM: Field = 2..4;
    pub const REST: Field = 4..8;
    pub const ECHO_IDENT: Field = 4..6;
    pub const ECHO_SEQNO: Field = 6..8;
    /// Next-hop MTU of "fragmentation needed" (RFC 1191).
    pub const MTU: Field = 6..8;
    pub const DATA: Rest = 8..;
}

/// A view of an ICMPv4 message. The buffer must be exactly the message (normally
/// [`Ipv4Packet::payload`](super::Ipv4Packet::payload)): the checksum covers all of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Icmpv4Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Icmpv4Packet<T> {
    /// Wraps `buffer` without checking it; accessors may panic on a short buffer.
    #[inline]
    pub const fn new_unchecked(buffer: T) -> Self {
        Icmpv4Packet { buffer }
    }

    /// Wraps `buffer` after [`check_len`](Self::check_len).
    #[inline]
    pub fn new_checked(buffer: T) -> Result<Self> {
        let p = Self::new_unchecked(buffer);
        p.check_len()?;
        Ok(p)
    }

    /// Fails with [`Error::Truncated`] if the buffer cannot hold the 8-byte header.
    #[inline]
    pub fn check_len(&self) -> Result<()> {
        if self.buffer.as_ref().len() < HEADER_LEN {
            return Err(Error::Truncated);
        }
        Ok(())
    }

    /// The underlying buffer.
    #[inline]
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// Message type.
    #[inline]
    pub fn msg_type(&self) -> Icmpv4Type {
        Icmpv4Type(self.buffer.as_ref()[field::TYPE])
    }

    /// Message code.
    #[inline]
    pub fn msg_code(&self) -> u8 {
        self.buffer.as_ref()[field::CODE]
    }

    /// Checksum field.
    #[inline]
    pub fn checksum(&self) -> u16 {
        get_u16(self.buffer.as_ref(), field::CHECKSUM)
    }

    /// The type-specific "rest of header" word.
    #[inline]
    pub fn rest_of_header(&self) -> u32 {
        get_u32(self.buffer.as_ref(), field::REST)
    }

    /// Echo identifier.
    #[inline]
    pub fn echo_ident(&self) -> u16 {
        get_u16(self.buffer.as_ref(), field::ECHO_IDENT)
    }

    /// Echo sequence number.
    #[inline]
    pub fn echo_seq_no(&self) -> u16 {
        get_u16(self.buffer.as_ref(), field::ECHO_SEQNO)
    }

    /// Next-hop MTU of a "fragmentation needed" message.
    #[inline]
    pub fn next_hop_mtu(&self) -> u16 {
        get_u16(self.buffer.as_ref(), field::MTU)
    }

    /// Everything after the header: echo data, or the quoted datagram of an error.
    #[inline]
    pub fn data(&self) -> &[u8] {
        &self.buffer.as_ref()[field::DATA]
    }

    /// Whether the checksum over the whole message is correct.
    #[inline]
    pub fn verify_checksum(&self) -> bool {
        checksum::sum(self.buffer.as_ref()) == 0xffff
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Icmpv4Packet<T> {
    /// Sets the message type.
    #[inline]
    pub fn set_msg_type(&mut self, ty: Icmpv4Type) {
        self.buffer.as_mut()[field::TYPE] = ty.0;
    }

    /// Sets the message code.
    #[inline]
    pub fn set_msg_code(&mut self, code: u8) {
        self.buffer.as_mut()[field::CODE] = code;
    }

    /// Sets the checksum field.
    #[inline]
    pub fn set_checksum(&mut self, csum: u16) {
        set_u16(self.buffer.as_mut(), field::CHECKSUM, csum);
    }

    /// Sets the "rest of header" word.
    #[inline]
    pub fn set_rest_of_header(&mut self, rest: u32) {
        set_u32(self.buffer.as_mut(), field::REST, rest);
    }

    /// Sets the echo identifier.
    #[inline]
    pub fn set_echo_ident(&mut self, ident: u16) {
        set_u16(self.buffer.as_mut(), field::ECHO_IDENT, ident);
    }

    /// Sets the echo sequence number.
    #[inline]
    pub fn set_echo_seq_no(&mut self, seq_no: u16) {
        set_u16(self.buffer.as_mut(), field::ECHO_SEQNO, seq_no);
    }

    /// Sets the next-hop MTU.
    #[inline]
    pub fn set_next_hop_mtu(&mut self, mtu: u16) {
        set_u16(self.buffer.as_mut(), field::MTU, mtu);
    }

    /// Everything after the header, writable.
    #[inline]
    pub fn data_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[field::DATA]
    }

    /// Computes the checksum over the whole buffer.
    #[inline]
    pub fn fill_checksum(&mut self) {
        self.set_checksum(0);
        let csum = checksum::checksum(self.buffer.as_ref());
        self.set_checksum(csum);
    }
}

/// Why a destination was unreachable: the code of a type-3 message (RFC 792, RFC 1122,
/// RFC 1812).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Unreachable {
    /// 0: network unreachable.
    Net,
    /// 1: host unreachable.
    Host,
    /// 2: protocol unreachable.
    Protocol,
    /// 3: port unreachable.
    Port,
    /// 4: fragmentation needed but DF set; carries the next-hop MTU (RFC 1191).
    FragNeeded {
        /// MTU of the link the datagram did not fit (0 from pre-RFC 1191 routers).
        next_hop_mtu: u16,
    },
    /// 5: source route failed.
    SourceRouteFailed,
    /// 6: destination network unknown.
    NetUnknown,
    /// 7: destination host unknown.
    HostUnknown,
    /// 8: source host isolated.
    SourceHostIsolated,
    /// 9: network administratively prohibited.
    NetProhibited,
    /// 10: host administratively prohibited.
    HostProhibited,
    /// 11: network unreachable for the type of service.
    NetTos,
    /// 12: host unreachable for the type of service.
    HostTos,
    /// 13: communication administratively prohibited.
    AdminProhibited,
    /// 14: host precedence violation.
    HostPrecedence,
    /// 15: precedence cutoff in effect.
    PrecedenceCutoff,
}

impl Unreachable {
    /// The message code.
    pub const fn code(self) -> u8 {
        match self {
            Unreachable::Net => 0,
            Unreachable::Host => 1,
            Unreachable::Protocol => 2,
            Unreachable::Port => 3,
            Unreachable::FragNeeded { .. } => 4,
            Unreachable::SourceRouteFailed => 5,
            Unreachable::NetUnknown => 6,
            Unreachable::HostUnknown => 7,
            Unreachable::SourceHostIsolated => 8,
            Unreachable::NetProhibited => 9,
            Unreachable::HostProhibited => 10,
            Unreachable::NetTos => 11,
            Unreachable::HostTos => 12,
            Unreachable::AdminProhibited => 13,
            Unreachable::HostPrecedence => 14,
            Unreachable::PrecedenceCutoff => 15,
        }
    }

    /// The reason for `code`, taking the MTU for code 4; `None` for unknown codes.
    pub const fn from_code(code: u8, next_hop_mtu: u16) -> Option<Self> {
        Some(match code {
            0 => Unreachable::Net,
            1 => Unreachable::Host,
            2 => Unreachable::Protocol,
            3 => Unreachable::Port,
            4 => Unreachable::FragNeeded { next_hop_mtu },
            5 => Unreachable::SourceRouteFailed,
            6 => Unreachable::NetUnknown,
            7 => Unreachable::HostUnknown,
            8 => Unreachable::SourceHostIsolated,
            9 => Unreachable::NetProhibited,
            10 => Unreachable::HostProhibited,
            11 => Unreachable::NetTos,
            12 => Unreachable::HostTos,
            13 => Unreachable::AdminProhibited,
            14 => Unreachable::HostPrecedence,
            15 => Unreachable::PrecedenceCutoff,
            _ => return None,
        })
    }
}

/// What expired: the code of a type-11 message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TimeExceeded {
    /// 0: TTL reached zero in transit.
    TtlExpired,
    /// 1: fragment reassembly timed out.
    FragReassembly,
}

impl TimeExceeded {
    /// The message code.
    pub const fn code(self) -> u8 {
        match self {
            TimeExceeded::TtlExpired => 0,
            TimeExceeded::FragReassembly => 1,
        }
    }
}

/// The part of an IPv4 datagram an ICMP error quotes: its header and the first 8 bytes
/// of its payload (RFC 792), or less if the datagram is shorter.
pub fn quote(ip_packet: &[u8]) -> &[u8] {
    let header_len = ip_packet.first().map_or(0, |b| usize::from(b & 0x0f) * 4);
    let total_len = match ip_packet {
        [_, _, hi, lo, ..] => usize::from(u16::from_be_bytes([*hi, *lo])),
        _ => ip_packet.len(),
    };
    &ip_packet[..(header_len + 8).min(total_len).min(ip_packet.len())]
}

/// An ICMPv4 message of a supported kind, as values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Icmpv4Repr<'a> {
    /// Echo request (ping).
    EchoRequest {
        /// Identifier.
        ident: u16,
        /// Sequence number.
        seq_no: u16,
        /// Data, echoed back by the reply.
        data: &'a [u8],
    },
    /// Echo reply.
    EchoReply {
        /// Identifier, from the request.
        ident: u16,
        /// Sequence number, from the request.
        seq_no: u16,
        /// Data, from the request.
        data: &'a [u8],
    },
    /// Destination unreachable.
    DstUnreachable {
        /// The code, with the next-hop MTU for "fragmentation needed".
        reason: Unreachable,
        /// The offending datagram's IPv4 header and first 8 payload bytes (see [`quote`]).
        original: &'a [u8],
    },
    /// Time exceeded.
    TimeExceeded {
        /// The code.
        reason: TimeExceeded,
        /// The offending datagram's IPv4 header and first 8 payload bytes (see [`quote`]).
        original: &'a [u8],
    },
}

/// Whether `original` is an IPv4 header followed by at least 8 bytes, as an error must quote.
fn is_quote(original: &[u8]) -> bool {
    match original.first() {
        Some(&b) => b >> 4 == 4 && b & 0x0f >= 5 && original.len() >= usize::from(b & 0x0f) * 4 + 8,
        None => false,
    }
}

impl<'a> Icmpv4Repr<'a> {
    /// Reads `packet`; the data borrows from its buffer. Verifies the checksum
    /// ([`Error::Checksum`]); echo with a non-zero code, or an error that does not quote
    /// an IPv4 header plus 8 bytes, is [`Error::Malformed`]; other types and codes are
    /// [`Error::Unsupported`]. Unused "rest of header" bytes are ignored.
    pub fn parse<T: AsRef<[u8]> + ?Sized>(packet: &Icmpv4Packet<&'a T>) -> Result<Self> {
        packet.check_len()?;
        if !packet.verify_checksum() {
            return Err(Error::Checksum);
        }
        let data: &'a [u8] = &<T as AsRef<[u8]>>::as_ref(packet.buffer)[field::DATA];
        let (ty, code) = (packet.msg_type(), packet.msg_code());
        let error_quote = || {
            if is_quote(data) {
                Ok(data)
            } else {
                Err(Error::Malformed)
            }
        };
        match ty {
            Icmpv4Type::ECHO_REQUEST | Icmpv4Type::ECHO_REPLY if code != 0 => Err(Error::Malformed),
            Icmpv4Type::ECHO_REQUEST => Ok(Icmpv4Repr::EchoRequest {
                ident: packet.echo_ident(),
                seq_no: packet.echo_seq_no(),
                data,
            }),
            Icmpv4Type::ECHO_REPLY => Ok(Icmpv4Repr::EchoReply {
                ident: packet.echo_ident(),
                seq_no: packet.echo_seq_no(),
                data,
            }),
            Icmpv4Type::DST_UNREACHABLE => {
                let reason = Unreachable::from_code(code, packet.next_hop_mtu())
                    .ok_or(Error::Unsupported)?;
                Ok(Icmpv4Repr::DstUnreachable {
                    reason,
                    original: error_quote()?,
                })
            }
            Icmpv4Type::TIME_EXCEEDED => {
                let reason = match code {
                    0 => TimeExceeded::TtlExpired,
                    1 => TimeExceeded::FragReassembly,
                    _ => return Err(Error::Unsupported),
                };
                Ok(Icmpv4Repr::TimeExceeded {
                    reason,
                    original: error_quote()?,
                })
            }
            _ => Err(Error::Unsupported),
        }
    }

    /// The bytes after the header.
    #[inline]
    fn data(&self) -> &'a [u8] {
        match *self {
            Icmpv4Repr::EchoRequest { data, .. } | Icmpv4Repr::EchoReply { data, .. } => data,
            Icmpv4Repr::DstUnreachable { original, .. }
            | Icmpv4Repr::TimeExceeded { original, .. } => original,
        }
    }

    /// Length of the header.
    #[inline]
    pub const fn header_len(&self) -> usize {
        HEADER_LEN
    }

    /// Length of the whole message.
    #[inline]
    pub fn buffer_len(&self) -> usize {
        HEADER_LEN + self.data().len()
    }

    /// Writes the whole message, checksum included. The buffer must be exactly
    /// `buffer_len()` bytes, since the checksum covers all of it.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut Icmpv4Packet<T>) {
        let (ty, code, rest) = match *self {
            Icmpv4Repr::EchoRequest { ident, seq_no, .. } => (
                Icmpv4Type::ECHO_REQUEST,
                0,
                (u32::from(ident) << 16) | u32::from(seq_no),
            ),
            Icmpv4Repr::EchoReply { ident, seq_no, .. } => (
                Icmpv4Type::ECHO_REPLY,
                0,
                (u32::from(ident) << 16) | u32::from(seq_no),
            ),
            Icmpv4Repr::DstUnreachable { reason, .. } => {
                let mtu = match reason {
                    Unreachable::FragNeeded { next_hop_mtu } => next_hop_mtu,
                    _ => 0,
                };
                (Icmpv4Type::DST_UNREACHABLE, reason.code(), u32::from(mtu))
            }
            Icmpv4Repr::TimeExceeded { reason, .. } => {
                (Icmpv4Type::TIME_EXCEEDED, reason.code(), 0)
            }
        };
        packet.set_msg_type(ty);
        packet.set_msg_code(code);
        packet.set_rest_of_header(rest);
        let data = self.data();
        packet.data_mut()[..data.len()].copy_from_slice(data);
        packet.fill_checksum();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{EtherType, EthernetFrame, IpProtocol, Ipv4Packet};
    use proptest::prelude::*;

    /// Ping 10.0.0.2 from 10.0.0.1: Ethernet, IPv4, ICMP echo request with 16 data bytes.
    const PING: [u8; 58] = [
        0x52, 0x54, 0x00, 0xaa, 0xbb, 0xcc, 0x52, 0x54, 0x00, 0x12, 0x34, 0x56, 0x08,
        0x00, // Ethernet
        0x45, 0x00, 0x00, 0x2c, 0x1c, 0x46, 0x40, 0x00, 0x40, 0x01, 0x0a, 0x89, // IPv4
        0x0a, 0x00, 0x00, 0x01, 0x0a, 0x00, 0x00, 0x02, //
        0x08, 0x00, 0xa7, 0x89, // echo request, code 0, checksum
        0x0d, 0x2a, 0x00, 0x01, // ident 0x0d2a, seq 1
        b'a', b'b', b'c', b'd', b'e', b'f', b'g', b'h', b'i', b'j', b'k', b'l', b'm', b'n', b'o',
        b'p',
    ];

    /// "Fragmentation needed, next-hop MTU 1400", quoting the IPv4 header and UDP header of
    /// a DNS query.
    static FRAG_NEEDED: [u8; 36] = [
        0x03, 0x04, 0x86, 0xf8, 0x00, 0x00, 0x05, 0x78, // type 3 code 4, checksum, MTU 1400
        0x45, 0x00, 0x00, 0x39, 0x4d, 0x2e, 0x00, 0x00, 0x40, 0x11, 0x19, 0x84, // quoted IPv4
        0x0a, 0x00, 0x00, 0x01, 0x0a, 0x00, 0x00, 0x02, //
        0xcf, 0x08, 0x00, 0x35, 0x00, 0x25, 0xa1, 0x28, // quoted UDP header
    ];

    /// "TTL expired in transit", quoting a TCP SYN's IPv4 header and first 8 TCP bytes.
    const TTL_EXPIRED: [u8; 36] = [
        0x0b, 0x00, 0xcc, 0x02, 0x00, 0x00, 0x00, 0x00, // type 11 code 0, checksum, unused
        0x45, 0x00, 0x00, 0x3c, 0x3a, 0x5c, 0x40, 0x00, 0x40, 0x06, 0xec, 0x5d, // quoted IPv4
        0x0a, 0x00, 0x00, 0x01, 0x0a, 0x00, 0x00, 0x02, //
        0xc0, 0x00, 0x00, 0x50, 0x12, 0x34, 0x56, 0x78, // ports, seq
    ];

    fn round_trip(msg: &[u8]) -> Icmpv4Repr<'_> {
        let repr = Icmpv4Repr::parse(&Icmpv4Packet::new_checked(msg).unwrap()).unwrap();
        assert_eq!(repr.buffer_len(), msg.len());
        let mut buf = vec![0xee; repr.buffer_len()];
        repr.emit(&mut Icmpv4Packet::new_unchecked(&mut buf[..]));
        assert_eq!(buf, msg);
        repr
    }

    #[test]
    fn ping_fixture() {
        let eth = EthernetFrame::new_checked(&PING[..]).unwrap();
        assert_eq!(eth.ethertype(), EtherType::IPV4);
        let ip = Ipv4Packet::new_checked(eth.payload()).unwrap();
        assert!(ip.verify_checksum());
        assert_eq!(ip.protocol(), IpProtocol::ICMP);
        let icmp = Icmpv4Packet::new_checked(ip.payload()).unwrap();
        assert_eq!(icmp.msg_type(), Icmpv4Type::ECHO_REQUEST);
        assert_eq!(icmp.msg_code(), 0);
        assert_eq!(icmp.checksum(), 0xa789);
        assert_eq!(icmp.echo_ident(), 0x0d2a);
        assert_eq!(icmp.echo_seq_no(), 1);
        assert_eq!(icmp.rest_of_header(), 0x0d2a_0001);
        assert_eq!(icmp.data(), b"abcdefghijklmnop");
        assert!(icmp.verify_checksum());
        let repr = round_trip(&PING[34..]);
        assert_eq!(
            repr,
            Icmpv4Repr::EchoRequest {
                ident: 0x0d2a,
                seq_no: 1,
                data: b"abcdefghijklmnop"
            }
        );
        assert_eq!(repr.header_len(), 8);
    }

    #[test]
    fn echo_reply() {
        let repr = Icmpv4Repr::EchoReply {
            ident: 7,
            seq_no: 9,
            data: b"xyz",
        };
        let mut buf = [0u8; 11];
        repr.emit(&mut Icmpv4Packet::new_unchecked(&mut buf[..]));
        let p = Icmpv4Packet::new_checked(&buf[..]).unwrap();
        assert_eq!((p.msg_type(), p.msg_code()), (Icmpv4Type::ECHO_REPLY, 0));
        assert!(p.verify_checksum());
        assert_eq!(Icmpv4Repr::parse(&p), Ok(repr));
    }

    #[test]
    fn frag_needed_fixture() {
        let p = Icmpv4Packet::new_checked(&FRAG_NEEDED[..]).unwrap();
        assert_eq!(
            (p.msg_type(), p.msg_code()),
            (Icmpv4Type::DST_UNREACHABLE, 4)
        );
        assert_eq!(p.next_hop_mtu(), 1400);
        assert_eq!(p.checksum(), 0x86f8);
        let repr = round_trip(&FRAG_NEEDED);
        assert_eq!(
            repr,
            Icmpv4Repr::DstUnreachable {
                reason: Unreachable::FragNeeded { next_hop_mtu: 1400 },
                original: &FRAG_NEEDED[8..]
            }
        );
        if let Icmpv4Repr::DstUnreachable { original, .. } = repr {
            // The quote can be read with the ordinary views, bar the truncated payload.
            let inner = Ipv4Packet::new_unchecked(original);
            assert_eq!(inner.dst_addr(), std::net::Ipv4Addr::new(10, 0, 0, 2));
            assert_eq!(inner.protocol(), IpProtocol::UDP);
        }
    }

    #[test]
    fn ttl_expired_fixture() {
        let p = Icmpv4Packet::new_checked(&TTL_EXPIRED[..]).unwrap();
        assert_eq!((p.msg_type(), p.msg_code()), (Icmpv4Type::TIME_EXCEEDED, 0));
        assert_eq!(p.rest_of_header(), 0);
        assert_eq!(p.checksum(), 0xcc02);
        let repr = round_trip(&TTL_EXPIRED);
        assert_eq!(
            repr,
            Icmpv4Repr::TimeExceeded {
                reason: TimeExceeded::TtlExpired,
                original: &TTL_EXPIRED[8..]
            }
        );
    }

    #[test]
    fn quote_takes_header_and_8_bytes() {
        let syn_ip = [&TTL_EXPIRED[8..], &[0u8; 32][..]].concat(); // a 60-byte datagram
        assert_eq!(quote(&syn_ip), &TTL_EXPIRED[8..]);
        assert_eq!(quote(&[]), &[] as &[u8]);
        assert_eq!(quote(&[0x45, 0, 0, 22, 0, 0]), &[0x45, 0, 0, 22, 0, 0]);
        let short_total = [
            0x45, 0, 0, 22, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 2, 9, 9, 9, 9,
        ];
        assert_eq!(quote(&short_total).len(), 22);
    }

    #[test]
    fn parse_errors() {
        let mut bad = [0u8; 36];
        bad.copy_from_slice(&FRAG_NEEDED);
        bad[3] ^= 1;
        assert_eq!(
            Icmpv4Repr::parse(&Icmpv4Packet::new_checked(&bad[..]).unwrap()),
            Err(Error::Checksum)
        );

        let mut msg = FRAG_NEEDED;
        let mut p = Icmpv4Packet::new_checked(&mut msg[..]).unwrap();
        p.set_msg_code(16);
        p.fill_checksum();
        assert_eq!(
            Icmpv4Repr::parse(&Icmpv4Packet::new_unchecked(&msg[..])),
            Err(Error::Unsupported)
        );

        // An error quoting less than a header plus 8 bytes.
        let mut msg = [0u8; 35];
        msg.copy_from_slice(&FRAG_NEEDED[..35]);
        Icmpv4Packet::new_unchecked(&mut msg[..]).fill_checksum();
        assert_eq!(
            Icmpv4Repr::parse(&Icmpv4Packet::new_unchecked(&msg[..])),
            Err(Error::Malformed)
        );

        let mut echo = [0x08, 0x01, 0, 0, 0, 0, 0, 0];
        Icmpv4Packet::new_unchecked(&mut echo[..]).fill_checksum();
        assert_eq!(
            Icmpv4Repr::parse(&Icmpv4Packet::new_unchecked(&echo[..])),
            Err(Error::Malformed)
        );

        let mut redirect = [0x05, 0x00, 0, 0, 0, 0, 0, 0];
        Icmpv4Packet::new_unchecked(&mut redirect[..]).fill_checksum();
        assert_eq!(
            Icmpv4Repr::parse(&Icmpv4Packet::new_unchecked(&redirect[..])),
            Err(Error::Unsupported)
        );

        assert_eq!(
            Icmpv4Packet::new_checked(&PING[34..41]).unwrap_err(),
            Error::Truncated
        );
    }

    #[test]
    fn unreachable_codes_round_trip() {
        for code in 0..=15 {
            assert_eq!(Unreachable::from_code(code, 1500).unwrap().code(), code);
        }
        assert_eq!(Unreachable::from_code(16, 0), None);
    }

    fn arb_repr(
        data: &'static [u8],
        quoted: &'static [u8],
    ) -> impl Strategy<Value = Icmpv4Repr<'static>> {
        prop_oneof![
            (any::<u16>(), any::<u16>(), 0..=data.len()).prop_map(move |(ident, seq_no, n)| {
                Icmpv4Repr::EchoRequest {
                    ident,
                    seq_no,
                    data: &data[..n],
                }
            }),
            (any::<u16>(), any::<u16>(), 0..=data.len()).prop_map(move |(ident, seq_no, n)| {
                Icmpv4Repr::EchoReply {
                    ident,
                    seq_no,
                    data: &data[..n],
                }
            }),
            (0u8..16, any::<u16>()).prop_map(move |(code, mtu)| Icmpv4Repr::DstUnreachable {
                reason: Unreachable::from_code(code, mtu).unwrap(),
                original: quoted,
            }),
            any::<bool>().prop_map(move |frag| Icmpv4Repr::TimeExceeded {
                reason: if frag {
                    TimeExceeded::FragReassembly
                } else {
                    TimeExceeded::TtlExpired
                },
                original: quoted,
            }),
        ]
    }

    proptest! {
        #[test]
        fn checked_never_panics(data in proptest::collection::vec(any::<u8>(), 0..200)) {
            if let Ok(p) = Icmpv4Packet::new_checked(&data[..]) {
                let _ = (p.msg_type(), p.msg_code(), p.checksum(), p.rest_of_header(), p.echo_ident(), p.echo_seq_no());
                let _ = (p.next_hop_mtu(), p.data(), p.verify_checksum());
                let _ = Icmpv4Repr::parse(&p);
                let _ = quote(p.data());
            }
            // With a valid checksum, parsing gets past the checksum check.
            let mut fixed = data.clone();
            if let Ok(mut p) = Icmpv4Packet::new_checked(&mut fixed[..]) {
                p.fill_checksum();
                if let Ok(r) = Icmpv4Repr::parse(&Icmpv4Packet::new_unchecked(&fixed[..])) {
                    prop_assert_eq!(r.buffer_len(), fixed.len());
                }
            }
        }

        #[test]
        fn repr_round_trip(repr in arb_repr(b"0123456789abcdefghijklmnopqrstuvwxyz", &FRAG_NEEDED[8..])) {
            let mut buf = vec![0u8; repr.buffer_len()];
            repr.emit(&mut Icmpv4Packet::new_unchecked(&mut buf[..]));
            prop_assert_eq!(Icmpv4Repr::parse(&Icmpv4Packet::new_checked(&buf[..]).unwrap()), Ok(repr));
        }
    }
}
