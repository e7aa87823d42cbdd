//! IPv4 (RFC 791) packets.

use core::fmt;
use std::net::Ipv4Addr;

use super::checksum;
use super::{get_ipv4, get_u16, set_ipv4, set_u16, Error, Result};

/// The IPv4 Protocol field (the IPv6 Next Header namespace).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IpProtocol(pub u8);

impl IpProtocol {
    /// Internet Control Message Protocol.
    pub const ICMP: IpProtocol = IpProtocol(1);
    /// Transmission Control Protocol.
    pub const TCP: IpProtocol = IpProtocol(6);
    /// User Datagram Protocol.
    pub const UDP: IpProtocol = IpProtocol(17);
}

impl fmt::Display for IpProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            IpProtocol::ICMP => f.write_str("ICMP"),
            IpProtocol::TCP => f.write_str("TCP"),
            IpProtocol::UDP => f.write_str("UDP"),
            IpProtocol(v) => write!(f, "{v}"),
        }
    }
}

/// Length of a header without options.
pub const HEADER_LEN: usize = field::DST.end;

/// TTL of the packets Pollux originates or answers itself (router replies, ICMP errors,
/// DHCP replies): Linux's default `ip_default_ttl`.
pub const DEFAULT_TTL: u8 = 64;

/// The Don't Fragment bit of the flags/fragment-offset word.
const FLAG_DF: u16 = 0x4000;
/// The More Fragments bit.
const FLAG_MF: u16 = 0x2000;
/// The fragment offset bits, in units of 8 bytes.
const FRAG_OFFSET_MASK: u16 = 0x1fff;

mod field {
    use crate::wire::Field;

    pub const VER_IHL: usize = 0;
    pub const DSCP_ECN: usize = 1;
    pub const LENGTH: Field = 2..4;
    pub const IDENT: Field = 4..6;
    pub const FLG_OFF: Field = 6..8;
    pub const TTL: usize = 8;
    pub const PROTOCOL: usize = 9;
    /// TTL and protocol: the 16-bit word the checksum sees when the TTL changes.
    pub const TTL_PROTOCOL: Field = 8..10;
    pub const CHECKSUM: Field = 10..12;
    pub const SRC: Field = 12..16;
    pub const DST: Field = 16..20;
}

/// A view of an IPv4 packet.
///
/// After `check_len`, variable-length parts (options, payload) are still sliced within the
/// buffer even if a setter later changes the header or total length, so they never panic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ipv4Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Ipv4Packet<T> {
    /// Wraps `buffer` without checking it; accessors may panic on a short buffer.
    #[inline]
    pub const fn new_unchecked(buffer: T) -> Self {
        Ipv4Packet { buffer }
    }

    /// Wraps `buffer` after [`check_len`](Self::check_len).
    #[inline]
    pub fn new_checked(buffer: T) -> Result<Self> {
        let p = Self::new_unchecked(buffer);
        p.check_len()?;
        Ok(p)
    }

    /// [`Ipv4Packet::new_checked`] for the first segment of a chained packet (see
    /// `crate::buf`): `buffer` holds the header and `beyond` more bytes of the packet follow
    /// in other frames, so the total length is checked against both. Payload views end at
    /// the buffer's end; the rest of the payload is in the chain.
    #[inline]
    pub fn new_checked_within(buffer: T, beyond: usize) -> Result<Self> {
        let p = Self::new_unchecked(buffer);
        p.check_len_within(beyond)?;
        Ok(p)
    }

    /// Checks that the buffer holds a fixed header, that the version is 4 and the IHL at
    /// least 5, and that `header_len <= total_len <= buffer length` ([`Error::Truncated`]
    /// for a short buffer, [`Error::Malformed`] for inconsistent fields). A buffer longer
    /// than `total_len` is fine: Ethernet pads short frames.
    #[inline]
    pub fn check_len(&self) -> Result<()> {
        self.check_len_within(0)
    }

    /// [`Ipv4Packet::check_len`] with `beyond` bytes of the packet after the buffer (in a
    /// chain's later frames); the header itself must lie in the buffer.
    #[inline]
    pub fn check_len_within(&self, beyond: usize) -> Result<()> {
        let held = self.buffer.as_ref().len();
        let len = held + beyond;
        if held < HEADER_LEN {
            return Err(Error::Truncated);
        }
        if self.version() != 4 || self.header_len() < HEADER_LEN {
            return Err(Error::Malformed);
        }
        let total = usize::from(self.total_len());
        if total < self.header_len() {
            return Err(Error::Malformed);
        }
        // With `beyond`, the options may lie past the buffer only in a chain whose first
        // frame is shorter than an IPv4 header with options, which drivers never make
        // (they fill it to its end); the views clamp to the buffer even then.
        if total > len {
            return Err(Error::Truncated);
        }
        Ok(())
    }

    /// The underlying buffer.
    #[inline]
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// IP version (4).
    #[inline]
    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[field::VER_IHL] >> 4
    }

    /// Internet Header Length in 32-bit words.
    #[inline]
    pub fn ihl(&self) -> u8 {
        self.buffer.as_ref()[field::VER_IHL] & 0x0f
    }

    /// Header length in bytes, options included.
    #[inline]
    pub fn header_len(&self) -> usize {
        usize::from(self.ihl()) * 4
    }

    /// Differentiated Services Code Point.
    #[inline]
    pub fn dscp(&self) -> u8 {
        self.buffer.as_ref()[field::DSCP_ECN] >> 2
    }

    /// Explicit Congestion Notification.
    #[inline]
    pub fn ecn(&self) -> u8 {
        self.buffer.as_ref()[field::DSCP_ECN] & 0x03
    }

    /// Total length of header and payload.
    #[inline]
    pub fn total_len(&self) -> u16 {
        get_u16(self.buffer.as_ref(), field::LENGTH)
    }

    /// Identification.
    #[inline]
    pub fn ident(&self) -> u16 {
        get_u16(self.buffer.as_ref(), field::IDENT)
    }

    /// Don't Fragment.
    #[inline]
    pub fn dont_frag(&self) -> bool {
        get_u16(self.buffer.as_ref(), field::FLG_OFF) & FLAG_DF != 0
    }

    /// More Fragments.
    #[inline]
    pub fn more_frags(&self) -> bool {
        get_u16(self.buffer.as_ref(), field::FLG_OFF) & FLAG_MF != 0
    }

    /// Fragment offset in bytes (the field counts 8-byte units).
    #[inline]
    pub fn frag_offset(&self) -> u16 {
        (get_u16(self.buffer.as_ref(), field::FLG_OFF) & FRAG_OFFSET_MASK) * 8
    }

    /// Whether this is a fragment (MF set or a non-zero offset): its L4 header may be
    /// absent or incomplete.
    #[inline]
    pub fn is_fragment(&self) -> bool {
        get_u16(self.buffer.as_ref(), field::FLG_OFF) & (FLAG_MF | FRAG_OFFSET_MASK) != 0
    }

    /// Time to live.
    #[inline]
    pub fn ttl(&self) -> u8 {
        self.buffer.as_ref()[field::TTL]
    }

    /// Protocol of the payload.
    #[inline]
    pub fn protocol(&self) -> IpProtocol {
        IpProtocol(self.buffer.as_ref()[field::PROTOCOL])
    }

    /// Header checksum.
    #[inline]
    pub fn checksum(&self) -> u16 {
        get_u16(self.buffer.as_ref(), field::CHECKSUM)
    }

    /// Source address.
    #[inline]
    pub fn src_addr(&self) -> Ipv4Addr {
        get_ipv4(self.buffer.as_ref(), field::SRC)
    }

    /// Destination address.
    #[inline]
    pub fn dst_addr(&self) -> Ipv4Addr {
        get_ipv4(self.buffer.as_ref(), field::DST)
    }

    /// End of the header within the buffer.
    #[inline]
    fn header_end(&self) -> usize {
        self.header_len()
            .clamp(HEADER_LEN, self.buffer.as_ref().len())
    }

    /// Payload bounds: from the header end to `total_len`, both within the buffer.
    #[inline]
    fn payload_range(&self) -> core::ops::Range<usize> {
        let start = self.header_end();
        let end = usize::from(self.total_len()).clamp(start, self.buffer.as_ref().len());
        start..end
    }

    /// The header options (empty when IHL is 5).
    #[inline]
    pub fn options(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..self.header_end()]
    }

    /// The payload, ending at `total_len` rather than at the end of the buffer.
    #[inline]
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[self.payload_range()]
    }

    /// Whether the header checksum is correct. Always inlined: every routed packet asks,
    /// and as a call it cost ~15 instructions more per packet.
    #[inline(always)]
    pub fn verify_checksum(&self) -> bool {
        let header = &self.buffer.as_ref()[..self.header_end()];
        // Headers without options are the rule: summed without a loop.
        match <&[u8; HEADER_LEN]>::try_from(header) {
            Ok(h) => checksum::sums_to_ones20(h),
            Err(_) => checksum::sum(header) == 0xffff,
        }
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Ipv4Packet<T> {
    /// Sets the version.
    #[inline]
    pub fn set_version(&mut self, version: u8) {
        let b = &mut self.buffer.as_mut()[field::VER_IHL];
        *b = (*b & 0x0f) | (version << 4);
    }

    /// Sets the header length in bytes (rounded down to 32-bit words, at most 60).
    #[inline]
    pub fn set_header_len(&mut self, len: usize) {
        let ihl = (len / 4).min(15) as u8;
        let b = &mut self.buffer.as_mut()[field::VER_IHL];
        *b = (*b & 0xf0) | ihl;
    }

    /// Sets the DSCP (low 6 bits used).
    #[inline]
    pub fn set_dscp(&mut self, dscp: u8) {
        let b = &mut self.buffer.as_mut()[field::DSCP_ECN];
        *b = (*b & 0x03) | (dscp << 2);
    }

    /// Sets the ECN bits (low 2 bits used).
    #[inline]
    pub fn set_ecn(&mut self, ecn: u8) {
        let b = &mut self.buffer.as_mut()[field::DSCP_ECN];
        *b = (*b & 0xfc) | (ecn & 0x03);
    }

    /// Sets the total length.
    #[inline]
    pub fn set_total_len(&mut self, len: u16) {
        set_u16(self.buffer.as_mut(), field::LENGTH, len);
    }

    /// Sets the identification.
    #[inline]
    pub fn set_ident(&mut self, ident: u16) {
        set_u16(self.buffer.as_mut(), field::IDENT, ident);
    }

    #[inline]
    fn set_flag(&mut self, flag: u16, on: bool) {
        let w = get_u16(self.buffer.as_ref(), field::FLG_OFF);
        set_u16(
            self.buffer.as_mut(),
            field::FLG_OFF,
            if on { w | flag } else { w & !flag },
        );
    }

    /// Sets Don't Fragment.
    #[inline]
    pub fn set_dont_frag(&mut self, on: bool) {
        self.set_flag(FLAG_DF, on);
    }

    /// Sets More Fragments.
    #[inline]
    pub fn set_more_frags(&mut self, on: bool) {
        self.set_flag(FLAG_MF, on);
    }

    /// Sets the fragment offset in bytes (rounded down to a multiple of 8).
    #[inline]
    pub fn set_frag_offset(&mut self, offset: u16) {
        let w = get_u16(self.buffer.as_ref(), field::FLG_OFF);
        set_u16(
            self.buffer.as_mut(),
            field::FLG_OFF,
            (w & !FRAG_OFFSET_MASK) | (offset / 8),
        );
    }

    /// Sets the TTL, leaving the checksum stale.
    #[inline]
    pub fn set_ttl(&mut self, ttl: u8) {
        self.buffer.as_mut()[field::TTL] = ttl;
    }

    /// Sets the protocol.
    #[inline]
    pub fn set_protocol(&mut self, protocol: IpProtocol) {
        self.buffer.as_mut()[field::PROTOCOL] = protocol.0;
    }

    /// Sets the header checksum field.
    #[inline]
    pub fn set_checksum(&mut self, csum: u16) {
        set_u16(self.buffer.as_mut(), field::CHECKSUM, csum);
    }

    /// Sets the source address, leaving the checksum stale.
    #[inline]
    pub fn set_src_addr(&mut self, addr: Ipv4Addr) {
        set_ipv4(self.buffer.as_mut(), field::SRC, addr);
    }

    /// Sets the destination address, leaving the checksum stale.
    #[inline]
    pub fn set_dst_addr(&mut self, addr: Ipv4Addr) {
        set_ipv4(self.buffer.as_mut(), field::DST, addr);
    }

    /// The options, writable.
    #[inline]
    pub fn options_mut(&mut self) -> &mut [u8] {
        let end = self.header_end();
        &mut self.buffer.as_mut()[HEADER_LEN..end]
    }

    /// The payload (up to `total_len`), writable.
    #[inline]
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let range = self.payload_range();
        &mut self.buffer.as_mut()[range]
    }

    /// Recomputes the header checksum from scratch.
    #[inline]
    pub fn fill_checksum(&mut self) {
        self.set_checksum(0);
        let end = self.header_end();
        let csum = checksum::checksum(&self.buffer.as_ref()[..end]);
        self.set_checksum(csum);
    }

    /// Sets the TTL and patches the checksum for the change (RFC 1624), which is cheaper
    /// than [`fill_checksum`](Self::fill_checksum) and keeps a bad checksum bad.
    #[inline]
    pub fn set_ttl_incremental(&mut self, ttl: u8) {
        let old = get_u16(self.buffer.as_ref(), field::TTL_PROTOCOL);
        self.set_ttl(ttl);
        let new = get_u16(self.buffer.as_ref(), field::TTL_PROTOCOL);
        self.set_checksum(checksum::update16(self.checksum(), old, new));
    }

    /// Sets the DSCP (low 6 bits used), keeping the ECN bits, and patches the checksum for
    /// the change (RFC 1624): the DSCP shares its 16-bit word with version and IHL.
    #[inline]
    pub fn set_dscp_incremental(&mut self, dscp: u8) {
        let old = get_u16(self.buffer.as_ref(), 0..2);
        self.set_dscp(dscp);
        let new = get_u16(self.buffer.as_ref(), 0..2);
        self.set_checksum(checksum::update16(self.checksum(), old, new));
    }

    /// Decrements the TTL (with an incremental checksum update) and returns the new TTL.
    /// A TTL of 0 is left alone. A router drops the packet when this returns 0.
    #[inline(always)]
    pub fn decrement_ttl(&mut self) -> u8 {
        let b = self.buffer.as_mut();
        let ttl = b[field::TTL];
        if ttl == 0 {
            return 0;
        }
        b[field::TTL] = ttl - 1;
        // The TTL is the high byte of its 16-bit word, so the header's sum drops by 0x0100
        // and its complement, the checksum, rises by as much with end-around carry (RFC
        // 1624; Linux's ip_decrease_ttl). A result of 0xffff is written as 0x0000, the
        // value a full recomputation gives: no real header sums to zero.
        let c = u32::from(get_u16(b, field::CHECKSUM)) + 0x0100;
        set_u16(b, field::CHECKSUM, (c + u32::from(c >= 0xffff)) as u16);
        ttl - 1
    }

    /// Sets the source address, patches the header checksum for it, and returns the old
    /// address so the caller can fix the L4 checksum (which covers it via the
    /// pseudo-header) with `UdpPacket`/`TcpPacket::update_checksum_for_addr`.
    #[inline]
    pub fn set_src_incremental(&mut self, addr: Ipv4Addr) -> Ipv4Addr {
        let old = self.src_addr();
        self.set_src_addr(addr);
        self.set_checksum(checksum::update32(self.checksum(), old.into(), addr.into()));
        old
    }

    /// The destination counterpart of [`set_src_incremental`](Self::set_src_incremental).
    #[inline]
    pub fn set_dst_incremental(&mut self, addr: Ipv4Addr) -> Ipv4Addr {
        let old = self.dst_addr();
        self.set_dst_addr(addr);
        self.set_checksum(checksum::update32(self.checksum(), old.into(), addr.into()));
        old
    }
}

/// An IPv4 header as values. Options are not represented: `parse` skips them and `emit`
/// writes a 20-byte header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Ipv4Repr {
    /// Source address.
    pub src_addr: Ipv4Addr,
    /// Destination address.
    pub dst_addr: Ipv4Addr,
    /// Protocol of the payload.
    pub protocol: IpProtocol,
    /// Length of the payload (`total_len - header_len`).
    pub payload_len: usize,
    /// Time to live.
    pub ttl: u8,
    /// DSCP (6 bits).
    pub dscp: u8,
    /// ECN (2 bits).
    pub ecn: u8,
    /// Identification.
    pub ident: u16,
    /// Don't Fragment.
    pub dont_frag: bool,
    /// More Fragments.
    pub more_frags: bool,
    /// Fragment offset in bytes (a multiple of 8).
    pub frag_offset: u16,
}

impl Ipv4Repr {
    /// Reads `packet`, verifying the header checksum ([`Error::Checksum`]).
    pub fn parse<T: AsRef<[u8]>>(packet: &Ipv4Packet<T>) -> Result<Self> {
        packet.check_len()?;
        if !packet.verify_checksum() {
            return Err(Error::Checksum);
        }
        Ok(Ipv4Repr {
            src_addr: packet.src_addr(),
            dst_addr: packet.dst_addr(),
            protocol: packet.protocol(),
            payload_len: usize::from(packet.total_len()) - packet.header_len(),
            ttl: packet.ttl(),
            dscp: packet.dscp(),
            ecn: packet.ecn(),
            ident: packet.ident(),
            dont_frag: packet.dont_frag(),
            more_frags: packet.more_frags(),
            frag_offset: packet.frag_offset(),
        })
    }

    /// Length of the emitted header (no options).
    #[inline]
    pub const fn header_len(&self) -> usize {
        HEADER_LEN
    }

    /// Header plus payload: the `total_len` that `emit` writes.
    #[inline]
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN + self.payload_len
    }

    /// Writes the header, checksum included, into `packet`; the payload is the caller's.
    /// `buffer_len()` must fit in 16 bits.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut Ipv4Packet<T>) {
        debug_assert!(self.buffer_len() <= usize::from(u16::MAX));
        packet.set_version(4);
        packet.set_header_len(HEADER_LEN);
        packet.set_dscp(self.dscp);
        packet.set_ecn(self.ecn);
        packet.set_total_len(self.buffer_len() as u16);
        packet.set_ident(self.ident);
        // The whole word at once, so the reserved bit is cleared too.
        let mut flags = (self.frag_offset / 8) & FRAG_OFFSET_MASK;
        if self.dont_frag {
            flags |= FLAG_DF;
        }
        if self.more_frags {
            flags |= FLAG_MF;
        }
        set_u16(packet.buffer.as_mut(), field::FLG_OFF, flags);
        packet.set_ttl(self.ttl);
        packet.set_protocol(self.protocol);
        packet.set_src_addr(self.src_addr);
        packet.set_dst_addr(self.dst_addr);
        packet.fill_checksum();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// 10.0.0.1 -> 10.0.0.2, DF, TTL 64, carrying an ICMP echo request with 16 data bytes.
    const ECHO: [u8; 44] = [
        0x45, 0x00, 0x00, 0x2c, // v4, IHL 5, DSCP/ECN 0, total 44
        0x1c, 0x46, 0x40, 0x00, // ident, DF, offset 0
        0x40, 0x01, 0x0a, 0x89, // TTL 64, ICMP, checksum
        0x0a, 0x00, 0x00, 0x01, // src
        0x0a, 0x00, 0x00, 0x02, // dst
        0x08, 0x00, 0xa7, 0x89, 0x0d, 0x2a, 0x00, 0x01, // ICMP echo request
        b'a', b'b', b'c', b'd', b'e', b'f', b'g', b'h', b'i', b'j', b'k', b'l', b'm', b'n', b'o',
        b'p',
    ];

    fn echo_repr() -> Ipv4Repr {
        Ipv4Repr {
            src_addr: Ipv4Addr::new(10, 0, 0, 1),
            dst_addr: Ipv4Addr::new(10, 0, 0, 2),
            protocol: IpProtocol::ICMP,
            payload_len: 24,
            ttl: 64,
            dscp: 0,
            ecn: 0,
            ident: 0x1c46,
            dont_frag: true,
            more_frags: false,
            frag_offset: 0,
        }
    }

    #[test]
    fn echo_fixture() {
        let p = Ipv4Packet::new_checked(&ECHO[..]).unwrap();
        assert_eq!(p.version(), 4);
        assert_eq!(p.ihl(), 5);
        assert_eq!(p.header_len(), 20);
        assert_eq!((p.dscp(), p.ecn()), (0, 0));
        assert_eq!(p.total_len(), 44);
        assert_eq!(p.ident(), 0x1c46);
        assert!(p.dont_frag() && !p.more_frags() && !p.is_fragment());
        assert_eq!(p.frag_offset(), 0);
        assert_eq!(p.ttl(), 64);
        assert_eq!(p.protocol(), IpProtocol::ICMP);
        assert_eq!(p.checksum(), 0x0a89);
        assert_eq!(p.src_addr(), Ipv4Addr::new(10, 0, 0, 1));
        assert_eq!(p.dst_addr(), Ipv4Addr::new(10, 0, 0, 2));
        assert!(p.options().is_empty());
        assert_eq!(p.payload(), &ECHO[20..]);
        assert!(p.verify_checksum());

        let repr = Ipv4Repr::parse(&p).unwrap();
        assert_eq!(repr, echo_repr());
        assert_eq!((repr.header_len(), repr.buffer_len()), (20, 44));
        let mut buf = [0u8; 44];
        let mut out = Ipv4Packet::new_unchecked(&mut buf[..]);
        repr.emit(&mut out);
        out.payload_mut().copy_from_slice(&ECHO[20..]);
        assert_eq!(buf, ECHO);
    }

    #[test]
    fn payload_stops_at_total_len() {
        // Ethernet pads to 60 bytes: 46 bytes of IP buffer for a 44-byte packet.
        let mut padded = [0u8; 46];
        padded[..44].copy_from_slice(&ECHO);
        let p = Ipv4Packet::new_checked(&padded[..]).unwrap();
        assert_eq!(p.payload(), &ECHO[20..]);
    }

    #[test]
    fn options_fixture() {
        // IHL 6 with a Router Alert option (RFC 2113), IGMP payload of 8 bytes.
        let mut pkt = [
            0x46, 0xc0, 0x00, 0x20, 0x00, 0x00, 0x00, 0x00, 0x01, 0x02, 0x00, 0x00, 0x0a, 0x00,
            0x00, 0x01, 0xe0, 0x00, 0x00, 0x16, 0x94, 0x04, 0x00, 0x00, 0x22, 0x00, 0xf9, 0x02,
            0x00, 0x00, 0x00, 0x01,
        ];
        let mut p = Ipv4Packet::new_checked(&mut pkt[..]).unwrap();
        p.fill_checksum();
        assert!(p.verify_checksum());
        assert_eq!(p.header_len(), 24);
        assert_eq!((p.dscp(), p.ecn()), (48, 0));
        assert_eq!(p.options(), &[0x94, 0x04, 0x00, 0x00]);
        assert_eq!(p.payload().len(), 8);
        let repr = Ipv4Repr::parse(&p).unwrap();
        assert_eq!(repr.payload_len, 8);
        assert_eq!(repr.protocol, IpProtocol(2));
    }

    /// A chain's first frame holds the header and part of the payload: the total length
    /// is checked against what the chain holds, the payload view ends at the buffer.
    #[test]
    fn a_chained_packets_header_is_checked_against_the_whole_chain() {
        let mut p = vec![0u8; 1000];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&3000u16.to_be_bytes());
        assert_eq!(
            Ipv4Packet::new_checked(&p[..]).unwrap_err(),
            Error::Truncated
        );
        assert_eq!(
            Ipv4Packet::new_checked_within(&p[..], 1999).unwrap_err(),
            Error::Truncated
        );
        let ip = Ipv4Packet::new_checked_within(&p[..], 2000).unwrap();
        assert_eq!(ip.payload().len(), 980);
        // Options past a (never made) short first frame: the views stay in the buffer.
        p[0] = 0x4f;
        let ip = Ipv4Packet::new_checked_within(&p[..40], 5000).unwrap();
        assert_eq!((ip.options().len(), ip.payload().len()), (20, 0));
    }

    #[test]
    fn check_len_errors() {
        assert_eq!(
            Ipv4Packet::new_checked(&ECHO[..19]).unwrap_err(),
            Error::Truncated
        );
        assert_eq!(
            Ipv4Packet::new_checked(&ECHO[..43]).unwrap_err(),
            Error::Truncated
        );
        let mut bad = ECHO;
        bad[0] = 0x65;
        assert_eq!(
            Ipv4Packet::new_checked(&bad[..]).unwrap_err(),
            Error::Malformed
        );
        bad[0] = 0x44;
        assert_eq!(
            Ipv4Packet::new_checked(&bad[..]).unwrap_err(),
            Error::Malformed
        );
        bad[0] = 0x45;
        bad[3] = 19;
        assert_eq!(
            Ipv4Packet::new_checked(&bad[..]).unwrap_err(),
            Error::Malformed
        );
        bad[0] = 0x4f; // 60-byte header in a 44-byte packet
        bad[3] = 44;
        assert_eq!(
            Ipv4Packet::new_checked(&bad[..]).unwrap_err(),
            Error::Malformed
        );
        let mut bad = ECHO;
        bad[11] ^= 1;
        let p = Ipv4Packet::new_checked(&bad[..]).unwrap();
        assert!(!p.verify_checksum());
        assert_eq!(Ipv4Repr::parse(&p), Err(Error::Checksum));
    }

    #[test]
    fn incremental_updates() {
        let mut buf = ECHO;
        let mut p = Ipv4Packet::new_checked(&mut buf[..]).unwrap();
        assert_eq!(p.decrement_ttl(), 63);
        assert!(p.verify_checksum());
        let old = p.set_src_incremental(Ipv4Addr::new(192, 0, 2, 33));
        assert_eq!(old, Ipv4Addr::new(10, 0, 0, 1));
        assert!(p.verify_checksum());
        let old = p.set_dst_incremental(Ipv4Addr::new(198, 51, 100, 7));
        assert_eq!(old, Ipv4Addr::new(10, 0, 0, 2));
        assert!(p.verify_checksum());
        p.set_ttl_incremental(1);
        assert_eq!(p.decrement_ttl(), 0);
        assert_eq!(p.decrement_ttl(), 0);
        assert_eq!(p.ttl(), 0);
        assert!(p.verify_checksum());
    }

    #[test]
    fn setters_survive_bad_lengths() {
        let mut buf = ECHO;
        let mut p = Ipv4Packet::new_checked(&mut buf[..]).unwrap();
        p.set_header_len(60);
        p.set_total_len(u16::MAX);
        let _ = (p.options(), p.payload(), p.verify_checksum());
        p.fill_checksum();
        p.set_header_len(0);
        p.set_total_len(0);
        let _ = (p.options(), p.payload());
        let _ = (p.options_mut().len(), p.payload_mut().len());
    }

    #[test]
    fn protocol_display() {
        assert_eq!(IpProtocol::UDP.to_string(), "UDP");
        assert_eq!(IpProtocol(47).to_string(), "47");
    }

    /// Any valid header: arbitrary bytes with the version, IHL and total length made sane.
    fn arb_packet() -> impl Strategy<Value = Vec<u8>> {
        (
            5usize..=15,
            0usize..40,
            proptest::collection::vec(any::<u8>(), 100),
        )
            .prop_map(|(ihl, payload, mut bytes)| {
                let total = ihl * 4 + payload;
                bytes.truncate(total);
                bytes[0] = 0x40 | ihl as u8;
                bytes[2..4].copy_from_slice(&(total as u16).to_be_bytes());
                Ipv4Packet::new_unchecked(&mut bytes[..]).fill_checksum();
                bytes
            })
    }

    proptest! {
        /// The DSCP rewrite's incremental checksum equals a full recomputation, and only
        /// the DSCP bits change.
        #[test]
        fn dscp_incremental_matches_full_checksum(
            mut header in proptest::array::uniform20(any::<u8>()),
            dscp in 0u8..64,
        ) {
            header[0] = 0x45;
            let mut p = Ipv4Packet::new_unchecked(header);
            p.fill_checksum();
            let before = p.into_inner();
            let mut p = Ipv4Packet::new_unchecked(before);
            p.set_dscp_incremental(dscp);
            prop_assert!(p.verify_checksum());
            prop_assert_eq!(p.dscp(), dscp);
            let after = p.into_inner();
            prop_assert_eq!(after[1] & 3, before[1] & 3);
            let mut full = Ipv4Packet::new_unchecked(after);
            full.fill_checksum();
            prop_assert_eq!(full.into_inner(), after);
        }
    }

    proptest! {
        #[test]
        fn checked_never_panics(mut data in proptest::collection::vec(any::<u8>(), 0..200), fix in any::<Option<(u8, u16)>>()) {
            // Random bytes rarely pass `check_len`; half the time make version and lengths plausible.
            if let (Some((ihl, total)), true) = (fix, data.len() >= 4) {
                data[0] = 0x40 | (ihl & 0x0f);
                let total = usize::from(total) % (data.len() + 8);
                data[2..4].copy_from_slice(&(total as u16).to_be_bytes());
            }
            if let Ok(p) = Ipv4Packet::new_checked(&data[..]) {
                let _ = (p.version(), p.ihl(), p.header_len(), p.dscp(), p.ecn(), p.total_len(), p.ident());
                let _ = (p.dont_frag(), p.more_frags(), p.frag_offset(), p.is_fragment(), p.ttl(), p.protocol());
                let _ = (p.checksum(), p.src_addr(), p.dst_addr(), p.options(), p.payload(), p.verify_checksum());
                prop_assert!(p.payload().len() + p.header_len() == usize::from(p.total_len()));
                let _ = Ipv4Repr::parse(&p);
            }
        }

        #[test]
        fn repr_round_trip(
            src in any::<u32>(), dst in any::<u32>(), proto in any::<u8>(), payload_len in 0usize..100,
            ttl in any::<u8>(), dscp in 0u8..64, ecn in 0u8..4, ident in any::<u16>(),
            dont_frag in any::<bool>(), more_frags in any::<bool>(), frag in 0u16..0x2000,
        ) {
            let repr = Ipv4Repr {
                src_addr: Ipv4Addr::from(src), dst_addr: Ipv4Addr::from(dst), protocol: IpProtocol(proto),
                payload_len, ttl, dscp, ecn, ident, dont_frag, more_frags, frag_offset: frag * 8,
            };
            let mut buf = vec![0xa5; repr.buffer_len()];
            repr.emit(&mut Ipv4Packet::new_unchecked(&mut buf[..]));
            let p = Ipv4Packet::new_checked(&buf[..]).unwrap();
            prop_assert_eq!(Ipv4Repr::parse(&p), Ok(repr));
            prop_assert_eq!(p.payload().len(), payload_len);
        }

        #[test]
        fn incremental_ttl_matches_recompute(mut bytes in arb_packet(), ttl in any::<u8>()) {
            let mut p = Ipv4Packet::new_checked(&mut bytes[..]).unwrap();
            p.set_ttl_incremental(ttl);
            let incremental = p.checksum();
            p.fill_checksum();
            prop_assert_eq!(incremental, p.checksum());
            p.decrement_ttl();
            let incremental = p.checksum();
            p.fill_checksum();
            prop_assert_eq!(incremental, p.checksum());
        }

        #[test]
        fn incremental_addr_matches_recompute(mut bytes in arb_packet(), src in any::<u32>(), dst in any::<u32>()) {
            let mut p = Ipv4Packet::new_checked(&mut bytes[..]).unwrap();
            p.set_src_incremental(Ipv4Addr::from(src));
            let incremental = p.checksum();
            p.fill_checksum();
            prop_assert_eq!(incremental, p.checksum());
            p.set_dst_incremental(Ipv4Addr::from(dst));
            let incremental = p.checksum();
            p.fill_checksum();
            prop_assert_eq!(incremental, p.checksum());
        }
    }
}
