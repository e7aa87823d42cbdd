//! ICMPv4 messages the router itself sends: errors about datagrams it cannot deliver
//! (RFC 792, RFC 1191, RFC 1812 §4.3.2) and echo replies for its own addresses.
//!
//! Everything writes into a caller's buffer (a frame from the pool) and returns a length;
//! nothing allocates, and no input makes anything panic. An error that must not be sent
//! comes back as a [`Suppressed`] reason, each of which can be counted on its own.
//!
//! Rate limiting is separate ([`crate::ratelimit`]): check the limiter before building, so
//! a refused error costs no copy.

use core::fmt;
use core::ops::Range;
use std::net::Ipv4Addr;

use crate::wire::checksum;
use crate::wire::icmpv4::HEADER_LEN as ICMP_HEADER_LEN;
use crate::wire::ipv4::{DEFAULT_TTL, HEADER_LEN as IPV4_HEADER_LEN};
use crate::wire::{
    EtherType, EthernetAddress, EthernetFrame, EthernetRepr, Icmpv4Packet, Icmpv4Type, IpProtocol,
    Ipv4Packet, Ipv4Repr,
};

/// Largest error message, IPv4 header included: RFC 1812 §4.3.2.3 quotes as much of the
/// offending datagram as fits without the error exceeding 576 bytes, the datagram size
/// every host must accept.
pub const MAX_ERROR_LEN: usize = 576;
/// Most bytes of the offending datagram an error quotes.
pub const MAX_QUOTE_LEN: usize = MAX_ERROR_LEN - IPV4_HEADER_LEN - ICMP_HEADER_LEN;
/// DSCP of errors: CS6, precedence 6 "internetwork control" (RFC 1812 §4.3.2.5), so
/// errors survive congestion that drops ordinary traffic.
const ERROR_DSCP: u8 = 48;
/// Length of an untagged Ethernet header.
const ETHERNET_HEADER_LEN: usize = EthernetFrame::<&[u8]>::HEADER_LEN;

/// Whether `addr` names a single host and so may be the source of a datagram, or the
/// destination of an error about it (RFC 1812 §4.3.2.7, §5.3.7): not 0/8 ("this
/// network"), 127/8 (loopback), 224/4 (multicast) or 240/4 (class E, which holds the
/// limited broadcast 255.255.255.255).
#[inline]
pub fn is_unicast_source(addr: Ipv4Addr) -> bool {
    !matches!(addr.octets()[0], 0 | 127 | 224..=255)
}

/// The error to send.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IcmpErrorKind {
    /// Time exceeded, TTL expired in transit (type 11, code 0).
    TimeExceeded,
    /// Destination unreachable: no route to the network (type 3, code 0).
    NetUnreachable,
    /// Destination unreachable: the host does not answer ARP (type 3, code 1).
    HostUnreachable,
    /// Destination unreachable: protocol not supported by the router itself (type 3, code 2).
    ProtocolUnreachable,
    /// Destination unreachable: no listener on the router's port (type 3, code 3).
    PortUnreachable,
    /// Destination unreachable: the datagram needs fragmenting but has DF set (type 3,
    /// code 4), with the next-hop MTU in the low half of the unused word (RFC 1191).
    FragNeeded {
        /// MTU of the link the datagram did not fit.
        mtu: u16,
    },
    /// Destination unreachable: communication administratively prohibited, e.g. by a
    /// security group rule that rejects rather than drops (type 3, code 13).
    AdminProhibited,
}

impl IcmpErrorKind {
    /// The ICMP type.
    pub const fn icmp_type(self) -> Icmpv4Type {
        match self {
            IcmpErrorKind::TimeExceeded => Icmpv4Type::TIME_EXCEEDED,
            _ => Icmpv4Type::DST_UNREACHABLE,
        }
    }

    /// The ICMP code.
    pub const fn code(self) -> u8 {
        match self {
            IcmpErrorKind::TimeExceeded | IcmpErrorKind::NetUnreachable => 0,
            IcmpErrorKind::HostUnreachable => 1,
            IcmpErrorKind::ProtocolUnreachable => 2,
            IcmpErrorKind::PortUnreachable => 3,
            IcmpErrorKind::FragNeeded { .. } => 4,
            IcmpErrorKind::AdminProhibited => 13,
        }
    }

    /// The 32-bit word after the checksum: unused (zero) except for the MTU.
    const fn rest_of_header(self) -> u32 {
        match self {
            IcmpErrorKind::FragNeeded { mtu } => mtu as u32,
            _ => 0,
        }
    }
}

macro_rules! reasons {
    ($(#[$meta:meta])* $ty:ident { $($variant:ident => $name:literal, $help:literal;)* }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[repr(u8)]
        pub enum $ty {
            $(#[doc = $help] $variant,)*
        }

        impl $ty {
            /// Every reason, in counter order.
            pub const ALL: &'static [$ty] = &[$($ty::$variant,)*];
            /// Number of reasons (the length of a per-reason counter array).
            pub const COUNT: usize = Self::ALL.len();

            /// Stable snake_case name, for metrics labels and the CLI.
            pub const fn name(self) -> &'static str {
                match self { $($ty::$variant => $name,)* }
            }

            /// One-line explanation for humans.
            pub const fn help(self) -> &'static str {
                match self { $($ty::$variant => $help,)* }
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.name())
            }
        }

        impl std::error::Error for $ty {}
    };
}

reasons! {
    /// Why no error was built. Checked in this order, so a datagram that is, say, both a
    /// non-first fragment and from a bad source counts as the earlier reason.
    Suppressed {
        Truncated => "truncated", "Shorter than an IPv4 header or than its total length, or an ICMP datagram too short to show its type.";
        NotIpv4 => "not_ipv4", "The version field is not 4.";
        Malformed => "malformed", "IHL below 5, or a total length shorter than the header.";
        BadChecksum => "bad_checksum", "Header checksum is wrong: a router discards such datagrams silently (RFC 1812 §5.2.2).";
        BroadcastDestination => "broadcast_destination", "Sent to the limited broadcast address 255.255.255.255.";
        MulticastDestination => "multicast_destination", "Sent to a multicast group (224.0.0.0/4).";
        BadSource => "bad_source", "Source is not one host (0/8, 127/8, multicast, class E or broadcast): nobody to tell.";
        NonFirstFragment => "non_first_fragment", "A fragment other than the first: only the first carries the headers the sender needs.";
        IcmpError => "icmp_error", "Itself an ICMP error (or an unknown ICMP type): errors about errors can loop.";
        OutputTooSmall => "output_too_small", "The caller's buffer cannot hold the message (a caller bug, not a property of the datagram).";
    }
}

/// Checks that an error may be sent about `offending` (the datagram's bytes, with
/// `beyond` more in a chain's later frames) and returns the bytes to quote.
fn offending_quote(offending: &[u8], beyond: usize) -> Result<&[u8], Suppressed> {
    match offending.first() {
        None => return Err(Suppressed::Truncated),
        Some(b) if b >> 4 != 4 => return Err(Suppressed::NotIpv4),
        Some(_) => {}
    }
    let ip = Ipv4Packet::new_checked_within(offending, beyond).map_err(|e| match e {
        crate::wire::Error::Malformed => Suppressed::Malformed,
        _ => Suppressed::Truncated,
    })?;
    if !ip.verify_checksum() {
        return Err(Suppressed::BadChecksum);
    }
    let dst = ip.dst_addr();
    if dst.is_broadcast() {
        return Err(Suppressed::BroadcastDestination);
    }
    if dst.is_multicast() {
        return Err(Suppressed::MulticastDestination);
    }
    if !is_unicast_source(ip.src_addr()) {
        return Err(Suppressed::BadSource);
    }
    if ip.frag_offset() != 0 {
        return Err(Suppressed::NonFirstFragment);
    }
    if ip.protocol() == IpProtocol::ICMP {
        let ty = ip.payload().first().ok_or(Suppressed::Truncated)?;
        if is_error_or_unknown(*ty) {
            return Err(Suppressed::IcmpError);
        }
    }
    let total = usize::from(ip.total_len());
    // `check_len` guaranteed `total <= offending.len() + beyond`; the quote stops at the
    // total length so Ethernet padding is never quoted (a chain's first frame holds more
    // than a quote).
    offending
        .get(..total.min(MAX_QUOTE_LEN))
        .ok_or(Suppressed::Truncated)
}

/// Whether an ICMP type is an error message, or one this router does not know. Linux
/// (`icmp_send`) treats unknown types as errors too: a type defined later could be one,
/// and staying silent is the side that cannot start a loop.
fn is_error_or_unknown(ty: u8) -> bool {
    // 3 unreachable, 4 source quench, 5 redirect, 11 time exceeded, 12 parameter problem;
    // 18 (address mask reply) is the highest type RFC 1812's era defined.
    matches!(ty, 3 | 4 | 5 | 11 | 12) || ty > 18
}

/// Builds an ICMP error about `offending` (a datagram starting at its IPv4 header, as
/// received; a TTL already decremented with an incremental checksum update is fine) from
/// `router_ip` to the offender's source, into `out`. Returns the length of the IPv4
/// packet written at the start of `out`.
///
/// The message has TTL 64, DSCP CS6, DF clear, identification `ident`, and quotes the
/// offending datagram up to its total length or [`MAX_QUOTE_LEN`] bytes, whichever is
/// less: the header with options and as much payload as fits in 576 bytes. `out` must
/// hold `28 + quote` bytes; 576 is always enough.
///
/// Datagrams sent as link-layer broadcast or multicast (RFC 1812 §4.3.2.7) and to a
/// subnet's directed broadcast address must not be answered either; only the caller
/// knows the frame's destination MAC and the subnets, so it checks those.
pub fn build(
    kind: IcmpErrorKind,
    router_ip: Ipv4Addr,
    ident: u16,
    offending: &[u8],
    out: &mut [u8],
) -> Result<usize, Suppressed> {
    build_within(kind, router_ip, ident, offending, 0, out)
}

/// [`build`] about a datagram with `beyond` more bytes after `offending` in a chain.
fn build_within(
    kind: IcmpErrorKind,
    router_ip: Ipv4Addr,
    ident: u16,
    offending: &[u8],
    beyond: usize,
    out: &mut [u8],
) -> Result<usize, Suppressed> {
    let quote = offending_quote(offending, beyond)?;
    let icmp_len = ICMP_HEADER_LEN + quote.len();
    let len = IPV4_HEADER_LEN + icmp_len;
    let out = out.get_mut(..len).ok_or(Suppressed::OutputTooSmall)?;
    let (ip_header, icmp) = out.split_at_mut(IPV4_HEADER_LEN);

    let ip = Ipv4Repr {
        src_addr: router_ip,
        dst_addr: Ipv4Packet::new_unchecked(quote).src_addr(),
        protocol: IpProtocol::ICMP,
        payload_len: icmp_len,
        ttl: DEFAULT_TTL,
        dscp: ERROR_DSCP,
        ecn: 0,
        ident,
        dont_frag: false,
        more_frags: false,
        frag_offset: 0,
    };
    ip.emit(&mut Ipv4Packet::new_unchecked(ip_header));

    let mut msg = Icmpv4Packet::new_unchecked(icmp);
    msg.set_msg_type(kind.icmp_type());
    msg.set_msg_code(kind.code());
    msg.set_rest_of_header(kind.rest_of_header());
    msg.data_mut().copy_from_slice(quote);
    msg.fill_checksum();
    Ok(len)
}

/// [`build`] behind an untagged Ethernet header from `src_mac` to `dst_mac` (the output
/// stage adds an 802.1Q tag where the port needs one), about a datagram with `beyond`
/// more bytes after `offending` in a chain's later frames. Returns the frame length.
#[allow(clippy::too_many_arguments)]
pub fn build_frame(
    kind: IcmpErrorKind,
    router_ip: Ipv4Addr,
    ident: u16,
    offending: &[u8],
    beyond: usize,
    dst_mac: EthernetAddress,
    src_mac: EthernetAddress,
    out: &mut [u8],
) -> Result<usize, Suppressed> {
    if out.len() < ETHERNET_HEADER_LEN {
        return Err(Suppressed::OutputTooSmall);
    }
    let (eth, ip) = out.split_at_mut(ETHERNET_HEADER_LEN);
    let len = build_within(kind, router_ip, ident, offending, beyond, ip)?;
    EthernetRepr {
        src_addr: src_mac,
        dst_addr: dst_mac,
        ethertype: EtherType::IPV4,
    }
    .emit(&mut EthernetFrame::new_unchecked(eth));
    Ok(ETHERNET_HEADER_LEN + len)
}

reasons! {
    /// Why an echo request got no reply.
    EchoError {
        Truncated => "truncated", "Shorter than an IPv4 header, its total length, or an ICMP header.";
        NotIpv4 => "not_ipv4", "The version field is not 4.";
        Malformed => "malformed", "IHL below 5, or a total length shorter than the header.";
        BadChecksum => "bad_checksum", "IPv4 header checksum is wrong.";
        NotIcmp => "not_icmp", "The protocol is not ICMP.";
        Fragment => "fragment", "A fragment: replying needs the whole request, and the router does not reassemble.";
        NotEchoRequest => "not_echo_request", "ICMP type is not echo request, or its code is not 0.";
        BadSource => "bad_source", "Source is not one host: nobody to reply to.";
        NotUnicastDestination => "not_unicast_destination", "Sent to a broadcast, multicast or other non-host address, which must not become the reply's source.";
    }
}

/// Turns the ICMP echo request in `packet` (starting at its IPv4 header) into the echo
/// reply, in place, and returns where in `packet` the reply now is.
///
/// In place because a reply is the request with a few fields changed: no second frame,
/// no copy of the payload, and the ICMP checksum is patched for the type change (RFC 1624)
/// instead of summed over the payload. The ICMP checksum is not verified either: a bad
/// one stays bad through the patch, so the requester discards the reply, as it would
/// never have got one had the request been dropped here, and a flood of pings costs no
/// pass over their payloads. The 20-byte IPv4 header is rebuilt and summed in full.
///
/// The reply goes from the request's destination (the router's address; the caller has
/// matched it) to its source, with identification `ident`, TTL 64 and the request's
/// DSCP; ECN and DF are cleared. IP options are removed: record-route, timestamp and source-route
/// replies would each need their own processing (RFC 1122 §3.2.2.6), and a reply without
/// them still answers the ping. Removing them moves the fixed header forward by the
/// options' length, so the returned range starts past 0 when the request had options;
/// the caller moves its packet offset there (the Ethernet header goes in front of it).
pub fn echo_reply_in_place(packet: &mut [u8], ident: u16) -> Result<Range<usize>, EchoError> {
    let (header_len, total_len) = {
        match packet.first() {
            None => return Err(EchoError::Truncated),
            Some(b) if b >> 4 != 4 => return Err(EchoError::NotIpv4),
            Some(_) => {}
        }
        let ip = Ipv4Packet::new_checked(&*packet).map_err(|e| match e {
            crate::wire::Error::Malformed => EchoError::Malformed,
            _ => EchoError::Truncated,
        })?;
        if !ip.verify_checksum() {
            return Err(EchoError::BadChecksum);
        }
        if ip.protocol() != IpProtocol::ICMP {
            return Err(EchoError::NotIcmp);
        }
        if ip.is_fragment() {
            return Err(EchoError::Fragment);
        }
        let icmp = Icmpv4Packet::new_checked(ip.payload()).map_err(|_| EchoError::Truncated)?;
        if icmp.msg_type() != Icmpv4Type::ECHO_REQUEST || icmp.msg_code() != 0 {
            return Err(EchoError::NotEchoRequest);
        }
        if !is_unicast_source(ip.src_addr()) {
            return Err(EchoError::BadSource);
        }
        if !is_unicast_source(ip.dst_addr()) {
            return Err(EchoError::NotUnicastDestination);
        }
        (ip.header_len(), usize::from(ip.total_len()))
    };

    // `new_checked` guaranteed `20 <= header_len <= total_len <= packet.len()`.
    let start = header_len - IPV4_HEADER_LEN;
    Ok(start..start + finish_reply(packet, start, total_len, ident)?)
}

/// The second half of [`echo_reply_in_place`], once the request is known good: rewrites
/// the header at `start` and the ICMP message after it; returns the reply's length.
fn finish_reply(
    packet: &mut [u8],
    start: usize,
    total_len: usize,
    ident: u16,
) -> Result<usize, EchoError> {
    if start > 0 {
        // The fixed header slides forward over the options, ending where they ended.
        if packet.len() < start + IPV4_HEADER_LEN {
            return Err(EchoError::Truncated);
        }
        packet.copy_within(..IPV4_HEADER_LEN, start);
    }
    let reply = packet
        .get_mut(start..total_len)
        .ok_or(EchoError::Truncated)?;
    let reply_len = reply.len();
    let (header, icmp) = reply.split_at_mut(IPV4_HEADER_LEN);

    let mut ip = Ipv4Packet::new_unchecked(&mut *header);
    let (src, dst) = (ip.src_addr(), ip.dst_addr());
    ip.set_header_len(IPV4_HEADER_LEN);
    ip.set_ecn(0);
    // `reply_len` is at most the request's 16-bit total length.
    ip.set_total_len(reply_len as u16);
    ip.set_ident(ident);
    // Clears DF, MF, the reserved bit and the (already zero) offset in one go.
    header[6..8].fill(0);
    let mut ip = Ipv4Packet::new_unchecked(&mut *header);
    ip.set_ttl(DEFAULT_TTL);
    ip.set_src_addr(dst);
    ip.set_dst_addr(src);
    ip.fill_checksum();

    let mut msg = Icmpv4Packet::new_unchecked(&mut *icmp);
    let old = u16::from_be_bytes([Icmpv4Type::ECHO_REQUEST.0, 0]);
    let new = u16::from_be_bytes([Icmpv4Type::ECHO_REPLY.0, 0]);
    msg.set_msg_type(Icmpv4Type::ECHO_REPLY);
    let mut csum = checksum::update16(msg.checksum(), old, new);
    // RFC 1624's update yields 0x0000 for all-zero data, where a full sum gives 0xffff
    // and receivers (Linux included) reject 0x0000. That result also means the request's
    // checksum was right, so replacing it launders nothing. Only then is the data scanned.
    if csum == 0 && msg.data().iter().chain(&icmp_rest(&msg)).all(|&b| b == 0) {
        csum = 0xffff;
    }
    msg.set_checksum(csum);
    Ok(reply_len)
}

/// The "rest of header" bytes of a message, which the checksum also covers.
fn icmp_rest<T: AsRef<[u8]>>(msg: &Icmpv4Packet<T>) -> [u8; 4] {
    msg.rest_of_header().to_be_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{Icmpv4Repr, TimeExceeded, Unreachable};
    use proptest::prelude::*;

    /// A traceroute probe: UDP 198.18.1.10:40000 -> 198.18.2.10:33434, TTL 1, id 0xbeef,
    /// 12 bytes of data. Checksums computed independently (Python).
    const PROBE: [u8; 40] = [
        0x45, 0x00, 0x00, 0x28, 0xbe, 0xef, 0x00, 0x00, 0x01, 0x11, 0x6b, 0x9d, 0xc6, 0x12, 0x01,
        0x0a, 0xc6, 0x12, 0x02, 0x0a, 0x9c, 0x40, 0x82, 0x9a, 0x00, 0x14, 0x11, 0x6e, 0x74, 0x72,
        0x61, 0x63, 0x65, 0x72, 0x6f, 0x75, 0x74, 0x65, 0x21, 0x21,
    ];

    /// Time exceeded about `PROBE` from 198.18.1.1, id 0x1234.
    const PROBE_TIME_EXCEEDED: [u8; 68] = [
        0x45, 0xc0, 0x00, 0x44, 0x12, 0x34, 0x00, 0x00, 0x40, 0x01, 0xd9, 0x95, 0xc6, 0x12, 0x01,
        0x01, 0xc6, 0x12, 0x01, 0x0a, 0x0b, 0x00, 0x84, 0x5e, 0x00, 0x00, 0x00, 0x00, 0x45, 0x00,
        0x00, 0x28, 0xbe, 0xef, 0x00, 0x00, 0x01, 0x11, 0x6b, 0x9d, 0xc6, 0x12, 0x01, 0x0a, 0xc6,
        0x12, 0x02, 0x0a, 0x9c, 0x40, 0x82, 0x9a, 0x00, 0x14, 0x11, 0x6e, 0x74, 0x72, 0x61, 0x63,
        0x65, 0x72, 0x6f, 0x75, 0x74, 0x65, 0x21, 0x21,
    ];

    /// Ping 10.0.0.2 from 10.0.0.1 (the `wire::icmpv4` fixture without Ethernet).
    const PING: [u8; 44] = [
        0x45, 0x00, 0x00, 0x2c, 0x1c, 0x46, 0x40, 0x00, 0x40, 0x01, 0x0a, 0x89, 0x0a, 0x00, 0x00,
        0x01, 0x0a, 0x00, 0x00, 0x02, 0x08, 0x00, 0xa7, 0x89, 0x0d, 0x2a, 0x00, 0x01, 0x61, 0x62,
        0x63, 0x64, 0x65, 0x66, 0x67, 0x68, 0x69, 0x6a, 0x6b, 0x6c, 0x6d, 0x6e, 0x6f, 0x70,
    ];

    /// The reply to `PING` with id 0x5555.
    const PONG: [u8; 44] = [
        0x45, 0x00, 0x00, 0x2c, 0x55, 0x55, 0x00, 0x00, 0x40, 0x01, 0x11, 0x7a, 0x0a, 0x00, 0x00,
        0x02, 0x0a, 0x00, 0x00, 0x01, 0x00, 0x00, 0xaf, 0x89, 0x0d, 0x2a, 0x00, 0x01, 0x61, 0x62,
        0x63, 0x64, 0x65, 0x66, 0x67, 0x68, 0x69, 0x6a, 0x6b, 0x6c, 0x6d, 0x6e, 0x6f, 0x70,
    ];

    const ROUTER: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 1);

    /// `packet` after `edit`, with its header checksum made right again.
    fn edited(packet: &[u8], edit: impl FnOnce(&mut Ipv4Packet<&mut [u8]>)) -> Vec<u8> {
        let mut v = packet.to_vec();
        let mut p = Ipv4Packet::new_unchecked(&mut v[..]);
        edit(&mut p);
        p.fill_checksum();
        v
    }

    fn build_vec(kind: IcmpErrorKind, offending: &[u8]) -> Result<Vec<u8>, Suppressed> {
        let mut out = [0u8; 600];
        let len = build(kind, ROUTER, 0x1234, offending, &mut out)?;
        Ok(out[..len].to_vec())
    }

    #[test]
    fn time_exceeded_fixture() {
        let mut out = [0xee; 1500];
        let len = build(
            IcmpErrorKind::TimeExceeded,
            ROUTER,
            0x1234,
            &PROBE,
            &mut out,
        )
        .unwrap();
        assert_eq!(&out[..len], &PROBE_TIME_EXCEEDED[..]);

        // Field by field, with the crate's own views.
        let ip = Ipv4Packet::new_checked(&out[..len]).unwrap();
        assert_eq!((ip.version(), ip.header_len()), (4, 20));
        assert_eq!((ip.dscp(), ip.ecn()), (48, 0));
        assert_eq!(ip.total_len(), 68);
        assert_eq!(ip.ident(), 0x1234);
        assert!(!ip.dont_frag() && !ip.more_frags() && ip.frag_offset() == 0);
        assert_eq!(ip.ttl(), 64);
        assert_eq!(ip.protocol(), IpProtocol::ICMP);
        assert_eq!(ip.checksum(), 0xd995);
        assert!(ip.verify_checksum());
        assert_eq!(ip.src_addr(), ROUTER);
        assert_eq!(ip.dst_addr(), Ipv4Addr::new(198, 18, 1, 10));
        let icmp = Icmpv4Packet::new_checked(ip.payload()).unwrap();
        assert_eq!(icmp.msg_type(), Icmpv4Type::TIME_EXCEEDED);
        assert_eq!(icmp.msg_code(), 0);
        assert_eq!(icmp.checksum(), 0x845e);
        assert_eq!(icmp.rest_of_header(), 0);
        assert!(icmp.verify_checksum());
        assert_eq!(
            Icmpv4Repr::parse(&icmp),
            Ok(Icmpv4Repr::TimeExceeded {
                reason: TimeExceeded::TtlExpired,
                original: &PROBE[..]
            })
        );
        // Nothing written past the message.
        assert!(out[len..].iter().all(|&b| b == 0xee));
    }

    #[test]
    fn every_kind_has_its_type_code_and_word() {
        let cases = [
            (IcmpErrorKind::TimeExceeded, 11, 0, 0),
            (IcmpErrorKind::NetUnreachable, 3, 0, 0),
            (IcmpErrorKind::HostUnreachable, 3, 1, 0),
            (IcmpErrorKind::ProtocolUnreachable, 3, 2, 0),
            (IcmpErrorKind::PortUnreachable, 3, 3, 0),
            (IcmpErrorKind::FragNeeded { mtu: 1450 }, 3, 4, 1450),
            (IcmpErrorKind::AdminProhibited, 3, 13, 0),
        ];
        for (kind, ty, code, rest) in cases {
            let msg = build_vec(kind, &PROBE).unwrap();
            let ip = Ipv4Packet::new_checked(&msg[..]).unwrap();
            assert!(ip.verify_checksum());
            let icmp = Icmpv4Packet::new_checked(ip.payload()).unwrap();
            assert_eq!(
                (icmp.msg_type().0, icmp.msg_code(), icmp.rest_of_header()),
                (ty, code, rest),
                "{kind:?}"
            );
            assert!(icmp.verify_checksum(), "{kind:?}");
            assert_eq!(icmp.data(), &PROBE[..]);
            if ty == 3 {
                let reason = Unreachable::from_code(code, rest as u16).unwrap();
                assert_eq!(
                    Icmpv4Repr::parse(&icmp),
                    Ok(Icmpv4Repr::DstUnreachable {
                        reason,
                        original: &PROBE[..]
                    })
                );
            }
        }
    }

    #[test]
    fn frag_needed_quotes_up_to_576_bytes() {
        // 1400 bytes of TCP with DF, too big for a 1280-byte link.
        let mut big = vec![0u8; 1400];
        big[..20].copy_from_slice(&[
            0x45, 0x00, 0x05, 0x78, 0x01, 0x01, 0x40, 0x00, 0x3f, 0x06, 0, 0, 198, 18, 1, 10, 198,
            18, 2, 10,
        ]);
        for (i, b) in big[20..].iter_mut().enumerate() {
            *b = (i * 7) as u8;
        }
        Ipv4Packet::new_unchecked(&mut big[..]).fill_checksum();
        // Ethernet padding after the datagram is not quoted either.
        big.extend_from_slice(&[0xaa; 6]);

        let mut out = [0u8; MAX_ERROR_LEN];
        let len = build(
            IcmpErrorKind::FragNeeded { mtu: 1280 },
            ROUTER,
            2,
            &big,
            &mut out,
        )
        .unwrap();
        assert_eq!(len, 576);
        assert_eq!(
            &out[..28],
            &[
                0x45, 0xc0, 0x02, 0x40, 0x00, 0x02, 0x00, 0x00, 0x40, 0x01, 0xe9, 0xcb, 0xc6, 0x12,
                0x01, 0x01, 0xc6, 0x12, 0x01, 0x0a, 0x03, 0x04, 0xed, 0xba, 0x00, 0x00, 0x05, 0x00,
            ]
        );
        assert_eq!(&out[28..], &big[..MAX_QUOTE_LEN]);
        let icmp = Icmpv4Packet::new_checked(&out[20..]).unwrap();
        assert_eq!(icmp.next_hop_mtu(), 1280);
        assert!(icmp.verify_checksum());

        // 575 bytes is one too few.
        let mut short = [0u8; MAX_ERROR_LEN - 1];
        assert_eq!(
            build(
                IcmpErrorKind::FragNeeded { mtu: 1280 },
                ROUTER,
                2,
                &big,
                &mut short
            ),
            Err(Suppressed::OutputTooSmall)
        );
    }

    #[test]
    fn header_options_are_quoted() {
        // IHL 6 with a Router Alert option; the whole 24-byte header and 8 bytes follow.
        let mut p = vec![0u8; 40];
        p[..24].copy_from_slice(&[
            0x46, 0, 0, 40, 0, 1, 0, 0, 1, 17, 0, 0, 198, 18, 1, 10, 198, 18, 2, 10, 0x94, 4, 0, 0,
        ]);
        Ipv4Packet::new_unchecked(&mut p[..]).fill_checksum();
        let msg = build_vec(IcmpErrorKind::TimeExceeded, &p).unwrap();
        assert_eq!(&msg[28..], &p[..]);
        let icmp = Icmpv4Packet::new_checked(&msg[20..]).unwrap();
        assert!(Icmpv4Repr::parse(&icmp).is_ok());
    }

    #[test]
    fn build_frame_writes_ethernet() {
        let dst = EthernetAddress([0x52, 0x54, 0x00, 0x00, 0x00, 0x0a]);
        let src = EthernetAddress([0xfa, 0x16, 0x3e, 0x00, 0x00, 0x01]);
        let mut out = [0u8; 2048];
        let len = build_frame(
            IcmpErrorKind::TimeExceeded,
            ROUTER,
            0x1234,
            &PROBE,
            0,
            dst,
            src,
            &mut out,
        )
        .unwrap();
        assert_eq!(len, 14 + 68);
        assert_eq!(
            &out[..14],
            &[0x52, 0x54, 0x00, 0x00, 0x00, 0x0a, 0xfa, 0x16, 0x3e, 0x00, 0x00, 0x01, 0x08, 0x00]
        );
        assert_eq!(&out[14..len], &PROBE_TIME_EXCEEDED[..]);
        assert_eq!(
            build_frame(
                IcmpErrorKind::TimeExceeded,
                ROUTER,
                0,
                &PROBE,
                0,
                dst,
                src,
                &mut [0u8; 13]
            ),
            Err(Suppressed::OutputTooSmall)
        );
        assert_eq!(
            build_frame(
                IcmpErrorKind::TimeExceeded,
                ROUTER,
                0,
                &PROBE,
                0,
                dst,
                src,
                &mut [0u8; 14 + 67]
            ),
            Err(Suppressed::OutputTooSmall)
        );
    }

    #[test]
    fn short_datagrams_are_quoted_whole() {
        // A bare 20-byte header (no payload) and one with 3 payload bytes.
        for payload in [0usize, 3] {
            let p = edited(&PROBE[..20 + payload], |p| {
                p.set_total_len((20 + payload) as u16)
            });
            let msg = build_vec(IcmpErrorKind::NetUnreachable, &p).unwrap();
            assert_eq!(msg.len(), 28 + 20 + payload);
            assert_eq!(&msg[28..], &p[..]);
            let icmp = Icmpv4Packet::new_checked(&msg[20..]).unwrap();
            assert!(icmp.verify_checksum());
        }
    }

    #[test]
    fn each_suppression_reason() {
        use Suppressed::*;
        let kind = IcmpErrorKind::HostUnreachable;
        let check = |p: &[u8], want: Suppressed| {
            assert_eq!(build_vec(kind, p), Err(want), "{p:02x?}");
        };
        check(&[], Truncated);
        check(&PROBE[..19], Truncated);
        check(&PROBE[..39], Truncated);
        check(&edited(&PROBE, |p| p.set_version(6)), NotIpv4);
        check(&[0x60, 0, 0], NotIpv4);
        check(&edited(&PROBE, |p| p.set_header_len(16)), Malformed);
        check(&edited(&PROBE, |p| p.set_total_len(19)), Malformed);
        let mut bad = PROBE;
        bad[11] ^= 0x40;
        check(&bad, BadChecksum);
        check(
            &edited(&PROBE, |p| p.set_dst_addr(Ipv4Addr::BROADCAST)),
            BroadcastDestination,
        );
        for group in [[224, 0, 0, 1], [239, 255, 255, 250]] {
            check(
                &edited(&PROBE, |p| p.set_dst_addr(group.into())),
                MulticastDestination,
            );
        }
        for src in [
            [0, 0, 0, 0],
            [0, 1, 2, 3],
            [127, 0, 0, 1],
            [224, 0, 0, 5],
            [240, 0, 0, 1],
            [255, 255, 255, 255],
        ] {
            check(&edited(&PROBE, |p| p.set_src_addr(src.into())), BadSource);
        }
        check(&edited(&PROBE, |p| p.set_frag_offset(8)), NonFirstFragment);

        // ICMP errors, and types this router does not know, are never answered.
        let icmp = |ty: u8| {
            let mut v = edited(&PROBE, |p| p.set_protocol(IpProtocol::ICMP));
            v[20] = ty;
            v
        };
        for ty in [3, 4, 5, 11, 12, 19, 40, 255] {
            check(&icmp(ty), IcmpError);
        }
        let bare = edited(&PROBE[..20], |p| {
            p.set_protocol(IpProtocol::ICMP);
            p.set_total_len(20);
        });
        check(&bare, Truncated);

        check_names_unique(Suppressed::ALL.iter().map(|r| r.name()));
        assert_eq!(Suppressed::COUNT, 10);
        assert_eq!(IcmpError.to_string(), "icmp_error");
        assert!(!IcmpError.help().is_empty());
    }

    #[test]
    fn answered_despite_looking_special() {
        // A first fragment (MF, offset 0) is answered: it carries the L4 header.
        let first = edited(&PROBE, |p| p.set_more_frags(true));
        assert!(build_vec(IcmpErrorKind::TimeExceeded, &first).is_ok());
        // Echo requests and other informational ICMP are answered.
        for ty in [0, 8, 13, 17, 18] {
            let mut v = edited(&PROBE, |p| p.set_protocol(IpProtocol::ICMP));
            v[20] = ty;
            assert!(build_vec(IcmpErrorKind::TimeExceeded, &v).is_ok(), "{ty}");
        }
        // DF set, an odd TTL, class A/B/C sources, a class E destination other than
        // broadcast: all unicast matters only.
        let df = edited(&PROBE, |p| {
            p.set_dont_frag(true);
            p.set_src_addr(Ipv4Addr::new(1, 2, 3, 4));
            p.set_dst_addr(Ipv4Addr::new(250, 0, 0, 1));
        });
        let msg = build_vec(IcmpErrorKind::FragNeeded { mtu: 576 }, &df).unwrap();
        assert_eq!(
            Ipv4Packet::new_checked(&msg[..]).unwrap().dst_addr(),
            Ipv4Addr::new(1, 2, 3, 4)
        );
    }

    fn check_names_unique<'a>(names: impl Iterator<Item = &'a str>) {
        let mut v: Vec<_> = names.collect();
        let n = v.len();
        v.sort_unstable();
        v.dedup();
        assert_eq!(v.len(), n);
    }

    #[test]
    fn unicast_sources() {
        for (a, ok) in [
            ([0, 0, 0, 0], false),
            ([0, 255, 0, 1], false),
            ([1, 0, 0, 0], true),
            ([10, 0, 0, 1], true),
            ([126, 255, 255, 255], true),
            ([127, 0, 0, 1], false),
            ([128, 0, 0, 1], true),
            ([198, 18, 0, 1], true),
            ([223, 255, 255, 255], true),
            ([224, 0, 0, 0], false),
            ([239, 1, 1, 1], false),
            ([240, 0, 0, 0], false),
            ([255, 255, 255, 255], false),
        ] {
            assert_eq!(is_unicast_source(a.into()), ok, "{a:?}");
        }
    }

    #[test]
    fn echo_reply_fixture() {
        let mut buf = PING;
        let range = echo_reply_in_place(&mut buf, 0x5555).unwrap();
        assert_eq!(range, 0..44);
        assert_eq!(buf, PONG);

        let ip = Ipv4Packet::new_checked(&buf[..]).unwrap();
        assert!(ip.verify_checksum());
        assert_eq!(ip.checksum(), 0x117a);
        assert_eq!(
            (ip.src_addr(), ip.dst_addr()),
            (Ipv4Addr::new(10, 0, 0, 2), Ipv4Addr::new(10, 0, 0, 1))
        );
        assert_eq!((ip.ttl(), ip.ident(), ip.dont_frag()), (64, 0x5555, false));
        let icmp = Icmpv4Packet::new_checked(ip.payload()).unwrap();
        assert!(icmp.verify_checksum());
        assert_eq!(icmp.checksum(), 0xaf89);
        assert_eq!(
            Icmpv4Repr::parse(&icmp),
            Ok(Icmpv4Repr::EchoReply {
                ident: 0x0d2a,
                seq_no: 1,
                data: b"abcdefghijklmnop"
            })
        );
    }

    #[test]
    fn echo_reply_keeps_dscp_clears_ecn_and_ignores_padding() {
        let mut req = edited(&PING, |p| {
            p.set_dscp(46);
            p.set_ecn(3);
        });
        req.extend_from_slice(&[0; 16]);
        let range = echo_reply_in_place(&mut req, 7).unwrap();
        assert_eq!(range, 0..44);
        let ip = Ipv4Packet::new_checked(&req[range]).unwrap();
        assert_eq!((ip.dscp(), ip.ecn()), (46, 0));
        assert!(ip.verify_checksum());
        assert!(Icmpv4Packet::new_checked(ip.payload())
            .unwrap()
            .verify_checksum());
    }

    #[test]
    fn echo_reply_strips_options() {
        // PING with a 12-byte record-route option (ping -R) inserted.
        let rr = [0x07, 0x0b, 0x04, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        let mut req = [&PING[..20], &rr[..], &PING[20..]].concat();
        {
            let mut p = Ipv4Packet::new_unchecked(&mut req[..]);
            p.set_header_len(32);
            p.set_total_len(56);
            p.fill_checksum();
        }
        let range = echo_reply_in_place(&mut req, 0x5555).unwrap();
        assert_eq!(range, 12..56);
        assert_eq!(&req[range], &PONG[..]);
    }

    #[test]
    fn echo_reply_all_zero_message_gets_ffff() {
        // Identifier 0, sequence 0, no data: after the type change every covered word is
        // zero, and the only checksum receivers accept is 0xffff.
        let mut req = edited(&PING[..28], |p| p.set_total_len(28));
        req[20..28].copy_from_slice(&[8, 0, 0, 0, 0, 0, 0, 0]);
        Icmpv4Packet::new_unchecked(&mut req[20..]).fill_checksum();
        assert_eq!(&req[22..24], &[0xf7, 0xff]);
        let range = echo_reply_in_place(&mut req, 1).unwrap();
        let icmp = Icmpv4Packet::new_checked(&req[range][20..]).unwrap();
        assert_eq!(icmp.checksum(), 0xffff);
        assert!(icmp.verify_checksum());

        // A wrong checksum on the same message stays wrong.
        let mut req = edited(&PING[..28], |p| p.set_total_len(28));
        req[20..28].copy_from_slice(&[8, 0, 0x12, 0x34, 0, 0, 0, 0]);
        let range = echo_reply_in_place(&mut req, 1).unwrap();
        assert!(!Icmpv4Packet::new_checked(&req[range][20..])
            .unwrap()
            .verify_checksum());
    }

    #[test]
    fn echo_reply_refusals() {
        use EchoError::*;
        let check = |p: &[u8], want: EchoError| {
            let mut v = p.to_vec();
            assert_eq!(echo_reply_in_place(&mut v, 0), Err(want), "{p:02x?}");
            // A refused request is left exactly as it was.
            assert_eq!(v, p);
        };
        check(&[], Truncated);
        check(&PING[..27], Truncated);
        check(&PING[..43], Truncated);
        check(&edited(&PING[..24], |p| p.set_total_len(24)), Truncated);
        check(&edited(&PING, |p| p.set_version(6)), NotIpv4);
        check(&edited(&PING, |p| p.set_header_len(12)), Malformed);
        let mut bad = PING;
        bad[10] ^= 1;
        check(&bad, BadChecksum);
        check(&edited(&PING, |p| p.set_protocol(IpProtocol::UDP)), NotIcmp);
        check(&edited(&PING, |p| p.set_more_frags(true)), Fragment);
        check(&edited(&PING, |p| p.set_frag_offset(16)), Fragment);
        let mut reply = PONG;
        check(&reply, NotEchoRequest);
        reply = PING;
        reply[21] = 1;
        check(&reply, NotEchoRequest);
        check(
            &edited(&PING, |p| p.set_src_addr(Ipv4Addr::new(127, 0, 0, 1))),
            BadSource,
        );
        for dst in [[255, 255, 255, 255], [224, 0, 0, 1], [0, 0, 0, 0]] {
            check(
                &edited(&PING, |p| p.set_dst_addr(dst.into())),
                NotUnicastDestination,
            );
        }
        check_names_unique(EchoError::ALL.iter().map(|r| r.name()));
    }

    /// Plausible IPv4 datagrams: random bytes with version, IHL, total length and checksum
    /// made consistent, sources and destinations from a mix of address classes, sometimes
    /// ICMP of a random type, sometimes with trailing padding.
    fn arb_datagram() -> impl Strategy<Value = Vec<u8>> {
        let addr = prop_oneof![
            Just([198u8, 18, 1, 10]),
            Just([0, 0, 0, 0]),
            Just([127, 0, 0, 1]),
            Just([224, 0, 0, 1]),
            Just([255, 255, 255, 255]),
            any::<[u8; 4]>(),
        ];
        (
            5usize..=15,
            0usize..700,
            proptest::collection::vec(any::<u8>(), 800),
            addr.clone(),
            addr,
            any::<Option<u8>>(),
            0usize..4,
            any::<bool>(),
        )
            .prop_map(
                |(ihl, payload, mut bytes, src, dst, icmp_type, pad, frag0)| {
                    let total = ihl * 4 + payload;
                    bytes.truncate(total + pad);
                    bytes[0] = 0x40 | ihl as u8;
                    bytes[2..4].copy_from_slice(&(total as u16).to_be_bytes());
                    bytes[12..16].copy_from_slice(&src);
                    bytes[16..20].copy_from_slice(&dst);
                    if frag0 {
                        bytes[6] &= 0xe0;
                        bytes[7] = 0;
                    }
                    if let Some(ty) = icmp_type {
                        bytes[9] = 1;
                        if payload > 0 {
                            bytes[ihl * 4] = ty;
                        }
                    }
                    Ipv4Packet::new_unchecked(&mut bytes[..]).fill_checksum();
                    bytes
                },
            )
    }

    fn kind_from(i: u8, mtu: u16) -> IcmpErrorKind {
        match i % 7 {
            0 => IcmpErrorKind::TimeExceeded,
            1 => IcmpErrorKind::NetUnreachable,
            2 => IcmpErrorKind::HostUnreachable,
            3 => IcmpErrorKind::ProtocolUnreachable,
            4 => IcmpErrorKind::PortUnreachable,
            5 => IcmpErrorKind::FragNeeded { mtu },
            _ => IcmpErrorKind::AdminProhibited,
        }
    }

    /// Every message `build` produces parses with the wire views and has valid checksums.
    fn check_built(kind: IcmpErrorKind, offending: &[u8], out: &[u8]) -> Result<(), TestCaseError> {
        prop_assert!(out.len() <= MAX_ERROR_LEN);
        let ip = Ipv4Packet::new_checked(out).unwrap();
        prop_assert!(ip.verify_checksum());
        prop_assert_eq!(usize::from(ip.total_len()), out.len());
        prop_assert_eq!(ip.protocol(), IpProtocol::ICMP);
        prop_assert_eq!(ip.ttl(), DEFAULT_TTL);
        prop_assert!(!ip.dont_frag() && !ip.is_fragment());
        let orig = Ipv4Packet::new_checked(offending).unwrap();
        prop_assert_eq!(ip.dst_addr(), orig.src_addr());
        let icmp = Icmpv4Packet::new_checked(ip.payload()).unwrap();
        prop_assert!(icmp.verify_checksum());
        prop_assert_eq!(
            (icmp.msg_type(), icmp.msg_code()),
            (kind.icmp_type(), kind.code())
        );
        let quoted = icmp.data();
        prop_assert_eq!(
            quoted.len(),
            usize::from(orig.total_len()).min(MAX_QUOTE_LEN)
        );
        prop_assert_eq!(quoted, &offending[..quoted.len()]);
        if quoted.len() >= orig.header_len() + 8 {
            prop_assert!(Icmpv4Repr::parse(&icmp).is_ok());
        }
        Ok(())
    }

    proptest! {
        #[test]
        fn build_never_panics_on_arbitrary_bytes(
            data in proptest::collection::vec(any::<u8>(), 0..200),
            k in any::<u8>(),
            mtu in any::<u16>(),
            out_len in 0usize..700,
        ) {
            let kind = kind_from(k, mtu);
            let mut out = vec![0u8; out_len];
            if let Ok(len) = build(kind, ROUTER, 1, &data, &mut out) {
                check_built(kind, &data, &out[..len])?;
            }
            let _ = build_frame(kind, ROUTER, 1, &data, 0, EthernetAddress::BROADCAST, EthernetAddress([2, 0, 0, 0, 0, 1]), &mut out);
            let mut copy = data.clone();
            if let Ok(r) = echo_reply_in_place(&mut copy, 9) {
                let ip = Ipv4Packet::new_checked(&copy[r]).unwrap();
                prop_assert!(ip.verify_checksum());
            }
        }

        #[test]
        fn build_on_plausible_datagrams(
            data in arb_datagram(),
            k in any::<u8>(),
            mtu in any::<u16>(),
        ) {
            let kind = kind_from(k, mtu);
            let mut out = [0u8; MAX_ERROR_LEN];
            match build(kind, ROUTER, 1, &data, &mut out) {
                Ok(len) => check_built(kind, &data, &out[..len])?,
                Err(Suppressed::OutputTooSmall) => prop_assert!(false, "576 bytes always suffice"),
                Err(_) => {}
            }
        }

        #[test]
        fn echo_reply_on_plausible_requests(
            mut data in arb_datagram(),
            ident in any::<u16>(),
            fix_icmp in any::<bool>(),
        ) {
            // Make many of them echo requests with a right or wrong ICMP checksum.
            let (hl, total) = {
                let p = Ipv4Packet::new_checked(&data[..]).unwrap();
                (p.header_len(), usize::from(p.total_len()))
            };
            if total >= hl + 8 {
                data[6] = 0;
                data[7] = 0;
                data[9] = 1;
                data[hl] = 8;
                data[hl + 1] = 0;
                if fix_icmp {
                    Icmpv4Packet::new_unchecked(&mut data[hl..total]).fill_checksum();
                }
                Ipv4Packet::new_unchecked(&mut data[..]).fill_checksum();
            }
            let icmp_ok = total >= hl + 8 && Icmpv4Packet::new_unchecked(&data[hl..total]).verify_checksum();
            let before = data.clone();
            match echo_reply_in_place(&mut data, ident) {
                Ok(r) => {
                    prop_assert_eq!(r.clone(), hl - 20..total);
                    let ip = Ipv4Packet::new_checked(&data[r]).unwrap();
                    prop_assert!(ip.verify_checksum());
                    prop_assert_eq!(ip.header_len(), 20);
                    prop_assert_eq!(ip.ident(), ident);
                    let req = Ipv4Packet::new_checked(&before[..]).unwrap();
                    prop_assert_eq!((ip.src_addr(), ip.dst_addr()), (req.dst_addr(), req.src_addr()));
                    let icmp = Icmpv4Packet::new_checked(ip.payload()).unwrap();
                    prop_assert_eq!(icmp.msg_type(), Icmpv4Type::ECHO_REPLY);
                    prop_assert_eq!(icmp.verify_checksum(), icmp_ok);
                    prop_assert_eq!(icmp.data(), &before[hl + 8..total]);
                }
                Err(_) => prop_assert_eq!(&data, &before),
            }
        }
    }
}
