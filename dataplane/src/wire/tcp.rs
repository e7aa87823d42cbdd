//! TCP (RFC 9293) segment headers over IPv4.

use core::ops::{BitOr, BitOrAssign};
use std::net::Ipv4Addr;

use super::checksum;
use super::{get_u16, get_u32, set_u16, set_u32, Error, IpProtocol, Result};

/// Length of a header without options.
pub const HEADER_LEN: usize = field::URGENT.end;
/// Length of the longest header (data offset 15).
pub const MAX_HEADER_LEN: usize = 60;

/// The control bits of the header (the low 9 bits of the data-offset/flags word).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct TcpFlags(pub u16);

impl TcpFlags {
    /// No more data from sender.
    pub const FIN: TcpFlags = TcpFlags(0x001);
    /// Synchronize sequence numbers.
    pub const SYN: TcpFlags = TcpFlags(0x002);
    /// Reset the connection.
    pub const RST: TcpFlags = TcpFlags(0x004);
    /// Push function.
    pub const PSH: TcpFlags = TcpFlags(0x008);
    /// The acknowledgment number is significant.
    pub const ACK: TcpFlags = TcpFlags(0x010);
    /// The urgent pointer is significant.
    pub const URG: TcpFlags = TcpFlags(0x020);
    /// ECN-Echo (RFC 3168).
    pub const ECE: TcpFlags = TcpFlags(0x040);
    /// Congestion Window Reduced (RFC 3168).
    pub const CWR: TcpFlags = TcpFlags(0x080);
    /// Accurate ECN (formerly the experimental NS bit of RFC 3540).
    pub const AE: TcpFlags = TcpFlags(0x100);
    /// Every bit this type carries.
    pub const ALL: TcpFlags = TcpFlags(0x1ff);

    /// Whether every bit of `other` is set.
    #[inline]
    pub const fn contains(self, other: TcpFlags) -> bool {
        self.0 & other.0 == other.0
    }

    /// No bits set.
    #[inline]
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }
}

impl BitOr for TcpFlags {
    type Output = TcpFlags;

    #[inline]
    fn bitor(self, rhs: TcpFlags) -> TcpFlags {
        TcpFlags(self.0 | rhs.0)
    }
}

impl BitOrAssign for TcpFlags {
    #[inline]
    fn bitor_assign(&mut self, rhs: TcpFlags) {
        self.0 |= rhs.0;
    }
}

mod field {
    use crate::wire::Field;

    pub const SRC_PORT: Field = 0..2;
    pub const DST_PORT: Field = 2..4;
    pub const SEQ_NUM: Field = 4..8;
    pub const ACK_NUM: Field = 8..12;
    /// Data offset (4 bits), reserved (3 bits), flags (9 bits).
    pub const OFF_FLAGS: Field = 12..14;
    pub const WINDOW: Field = 14..16;
    pub const CHECKSUM: Field = 16..18;
    pub const URGENT: Field = 18..20;
}

/// A view of a TCP segment. The buffer must be exactly the segment (normally
/// [`Ipv4Packet::payload`](super::Ipv4Packet::payload)): the payload and the checksum's
/// length run to its end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> TcpPacket<T> {
    /// Wraps `buffer` without checking it; accessors may panic on a short buffer.
    #[inline]
    pub const fn new_unchecked(buffer: T) -> Self {
        TcpPacket { buffer }
    }

    /// Wraps `buffer` after [`check_len`](Self::check_len).
    #[inline]
    pub fn new_checked(buffer: T) -> Result<Self> {
        let p = Self::new_unchecked(buffer);
        p.check_len()?;
        Ok(p)
    }

    /// Checks that the buffer holds the fixed header ([`Error::Truncated`]), that the data
    /// offset is at least 5 ([`Error::Malformed`]), and that the buffer holds the options
    /// ([`Error::Truncated`]).
    #[inline]
    pub fn check_len(&self) -> Result<()> {
        let len = self.buffer.as_ref().len();
        if len < HEADER_LEN {
            return Err(Error::Truncated);
        }
        if self.header_len() < HEADER_LEN {
            return Err(Error::Malformed);
        }
        if self.header_len() > len {
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

    /// Sequence number.
    #[inline]
    pub fn seq_number(&self) -> u32 {
        get_u32(self.buffer.as_ref(), field::SEQ_NUM)
    }

    /// Acknowledgment number (meaningful when ACK is set).
    #[inline]
    pub fn ack_number(&self) -> u32 {
        get_u32(self.buffer.as_ref(), field::ACK_NUM)
    }

    /// Data offset in 32-bit words.
    #[inline]
    pub fn data_offset(&self) -> u8 {
        self.buffer.as_ref()[field::OFF_FLAGS.start] >> 4
    }

    /// Header length in bytes, options included.
    #[inline]
    pub fn header_len(&self) -> usize {
        usize::from(self.data_offset()) * 4
    }

    /// Control bits.
    #[inline]
    pub fn flags(&self) -> TcpFlags {
        TcpFlags(get_u16(self.buffer.as_ref(), field::OFF_FLAGS) & TcpFlags::ALL.0)
    }

    /// Receive window.
    #[inline]
    pub fn window_len(&self) -> u16 {
        get_u16(self.buffer.as_ref(), field::WINDOW)
    }

    /// Checksum field.
    #[inline]
    pub fn checksum(&self) -> u16 {
        get_u16(self.buffer.as_ref(), field::CHECKSUM)
    }

    /// Urgent pointer (meaningful when URG is set).
    #[inline]
    pub fn urgent_ptr(&self) -> u16 {
        get_u16(self.buffer.as_ref(), field::URGENT)
    }

    /// End of the header within the buffer (clamped, so a setter cannot make it panic).
    #[inline]
    fn header_end(&self) -> usize {
        self.header_len()
            .clamp(HEADER_LEN, self.buffer.as_ref().len())
    }

    /// The raw options (empty when the data offset is 5).
    #[inline]
    pub fn options(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..self.header_end()]
    }

    /// Everything after the header.
    #[inline]
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[self.header_end()..]
    }

    /// One's-complement sum of the pseudo-header and the segment.
    #[inline]
    fn sum(&self, src: Ipv4Addr, dst: Ipv4Addr) -> u16 {
        let data = self.buffer.as_ref();
        // A segment longer than 64 KiB cannot come from IPv4; its length is then wrong
        // in the sum, and the checksum simply fails.
        let ph = checksum::pseudo_header_v4(src, dst, IpProtocol::TCP.0, data.len() as u16);
        checksum::add(ph, checksum::sum(data))
    }

    /// Whether the checksum is correct for these IPv4 addresses.
    #[inline]
    pub fn verify_checksum(&self, src: Ipv4Addr, dst: Ipv4Addr) -> bool {
        self.sum(src, dst) == 0xffff
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> TcpPacket<T> {
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

    /// Sets the sequence number.
    #[inline]
    pub fn set_seq_number(&mut self, seq: u32) {
        set_u32(self.buffer.as_mut(), field::SEQ_NUM, seq);
    }

    /// Sets the acknowledgment number.
    #[inline]
    pub fn set_ack_number(&mut self, ack: u32) {
        set_u32(self.buffer.as_mut(), field::ACK_NUM, ack);
    }

    /// Sets the header length in bytes (rounded down to 32-bit words, at most 60).
    #[inline]
    pub fn set_header_len(&mut self, len: usize) {
        let off = (len / 4).min(15) as u8;
        let b = &mut self.buffer.as_mut()[field::OFF_FLAGS.start];
        *b = (*b & 0x0f) | (off << 4);
    }

    /// Sets the control bits, keeping the data offset and reserved bits.
    #[inline]
    pub fn set_flags(&mut self, flags: TcpFlags) {
        let w = get_u16(self.buffer.as_ref(), field::OFF_FLAGS) & !TcpFlags::ALL.0;
        set_u16(
            self.buffer.as_mut(),
            field::OFF_FLAGS,
            w | (flags.0 & TcpFlags::ALL.0),
        );
    }

    /// Sets the receive window.
    #[inline]
    pub fn set_window_len(&mut self, window: u16) {
        set_u16(self.buffer.as_mut(), field::WINDOW, window);
    }

    /// Sets the checksum field.
    #[inline]
    pub fn set_checksum(&mut self, csum: u16) {
        set_u16(self.buffer.as_mut(), field::CHECKSUM, csum);
    }

    /// Sets the urgent pointer.
    #[inline]
    pub fn set_urgent_ptr(&mut self, ptr: u16) {
        set_u16(self.buffer.as_mut(), field::URGENT, ptr);
    }

    /// The raw options, writable.
    #[inline]
    pub fn options_mut(&mut self) -> &mut [u8] {
        let end = self.header_end();
        &mut self.buffer.as_mut()[HEADER_LEN..end]
    }

    /// Everything after the header, writable.
    #[inline]
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let start = self.header_end();
        &mut self.buffer.as_mut()[start..]
    }

    /// Computes the checksum with the IPv4 pseudo-header.
    #[inline]
    pub fn fill_checksum(&mut self, src: Ipv4Addr, dst: Ipv4Addr) {
        self.set_checksum(0);
        let csum = !self.sum(src, dst);
        self.set_checksum(csum);
    }

    /// Sets the source port and patches the checksum for it (RFC 1624).
    #[inline]
    pub fn set_src_port_incremental(&mut self, port: u16) {
        let old = self.src_port();
        self.set_src_port(port);
        self.set_checksum(checksum::update16(self.checksum(), old, port));
    }

    /// Sets the destination port and patches the checksum for it (RFC 1624).
    #[inline]
    pub fn set_dst_port_incremental(&mut self, port: u16) {
        let old = self.dst_port();
        self.set_dst_port(port);
        self.set_checksum(checksum::update16(self.checksum(), old, port));
    }

    /// Patches the checksum for an IPv4 source or destination address that changed from
    /// `old` to `new` (the pseudo-header covers both), e.g. after
    /// [`Ipv4Packet::set_src_incremental`](super::Ipv4Packet::set_src_incremental).
    #[inline]
    pub fn update_checksum_for_addr(&mut self, old: Ipv4Addr, new: Ipv4Addr) {
        self.set_checksum(checksum::update32(self.checksum(), old.into(), new.into()));
    }
}

/// A TCP header as values. Options are kept as raw bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TcpRepr<'a> {
    /// Source port.
    pub src_port: u16,
    /// Destination port.
    pub dst_port: u16,
    /// Sequence number.
    pub seq_number: u32,
    /// Acknowledgment number (sent as is, whether or not ACK is set).
    pub ack_number: u32,
    /// Control bits.
    pub flags: TcpFlags,
    /// Receive window.
    pub window_len: u16,
    /// Urgent pointer.
    pub urgent_ptr: u16,
    /// Raw options. `emit` pads them with zeros (End of Option List) to a multiple of 4
    /// bytes and writes at most 40.
    pub options: &'a [u8],
    /// Length of the payload.
    pub payload_len: usize,
}

impl<'a> TcpRepr<'a> {
    /// Reads `packet`; the options borrow from its buffer. The checksum needs the IP
    /// addresses, so it is not checked here: call [`TcpPacket::verify_checksum`].
    pub fn parse<T: AsRef<[u8]> + ?Sized>(packet: &TcpPacket<&'a T>) -> Result<Self> {
        packet.check_len()?;
        let data: &'a [u8] = <T as AsRef<[u8]>>::as_ref(packet.buffer);
        let header_len = packet.header_len();
        Ok(TcpRepr {
            src_port: packet.src_port(),
            dst_port: packet.dst_port(),
            seq_number: packet.seq_number(),
            ack_number: packet.ack_number(),
            flags: packet.flags(),
            window_len: packet.window_len(),
            urgent_ptr: packet.urgent_ptr(),
            options: &data[HEADER_LEN..header_len],
            payload_len: data.len() - header_len,
        })
    }

    /// Options bytes `emit` copies.
    #[inline]
    fn options_len(&self) -> usize {
        self.options.len().min(MAX_HEADER_LEN - HEADER_LEN)
    }

    /// Length of the emitted header, options and their padding included.
    #[inline]
    pub fn header_len(&self) -> usize {
        HEADER_LEN + self.options_len().next_multiple_of(4)
    }

    /// Header plus payload.
    #[inline]
    pub fn buffer_len(&self) -> usize {
        self.header_len() + self.payload_len
    }

    /// Writes the header with a zero checksum. Write the payload, then call
    /// [`TcpPacket::fill_checksum`].
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut TcpPacket<T>) {
        packet.set_src_port(self.src_port);
        packet.set_dst_port(self.dst_port);
        packet.set_seq_number(self.seq_number);
        packet.set_ack_number(self.ack_number);
        // The whole word at once, so the reserved bits are cleared.
        let off_flags = ((self.header_len() as u16 / 4) << 12) | (self.flags.0 & TcpFlags::ALL.0);
        set_u16(packet.buffer.as_mut(), field::OFF_FLAGS, off_flags);
        packet.set_window_len(self.window_len);
        packet.set_checksum(0);
        packet.set_urgent_ptr(self.urgent_ptr);
        let n = self.options_len();
        let options = packet.options_mut();
        options[..n].copy_from_slice(&self.options[..n]);
        options[n..].fill(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{Ipv4Packet, Ipv4Repr};
    use proptest::prelude::*;

    const SRC: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
    const DST: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);

    /// A SYN from 10.0.0.1:49152 to 10.0.0.2:80 with Linux's usual options, in IPv4.
    const SYN: [u8; 60] = [
        0x45, 0x00, 0x00, 0x3c, 0x3a, 0x5c, 0x40, 0x00, 0x40, 0x06, 0xec, 0x5d, // IPv4
        0x0a, 0x00, 0x00, 0x01, 0x0a, 0x00, 0x00, 0x02, //
        0xc0, 0x00, 0x00, 0x50, // ports 49152 -> 80
        0x12, 0x34, 0x56, 0x78, // seq
        0x00, 0x00, 0x00, 0x00, // ack
        0xa0, 0x02, 0xfa, 0xf0, // data offset 10, SYN, window 64240
        0x10, 0x0f, 0x00, 0x00, // checksum, urgent pointer
        0x02, 0x04, 0x05, 0xb4, // MSS 1460
        0x04, 0x02, // SACK permitted
        0x08, 0x0a, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, // timestamps 1, 0
        0x01, // NOP
        0x03, 0x03, 0x07, // window scale 7
    ];

    #[test]
    fn syn_fixture() {
        let ip = Ipv4Packet::new_checked(&SYN[..]).unwrap();
        assert_eq!(ip.protocol(), IpProtocol::TCP);
        assert!(ip.verify_checksum());
        let tcp = TcpPacket::new_checked(ip.payload()).unwrap();
        assert_eq!(tcp.src_port(), 49152);
        assert_eq!(tcp.dst_port(), 80);
        assert_eq!(tcp.seq_number(), 0x1234_5678);
        assert_eq!(tcp.ack_number(), 0);
        assert_eq!(tcp.data_offset(), 10);
        assert_eq!(tcp.header_len(), 40);
        assert_eq!(tcp.flags(), TcpFlags::SYN);
        assert!(
            tcp.flags().contains(TcpFlags::SYN)
                && !tcp.flags().contains(TcpFlags::SYN | TcpFlags::ACK)
        );
        assert_eq!(tcp.window_len(), 64240);
        assert_eq!(tcp.checksum(), 0x100f);
        assert_eq!(tcp.urgent_ptr(), 0);
        assert_eq!(tcp.options(), &SYN[40..]);
        assert!(tcp.payload().is_empty());
        assert!(tcp.verify_checksum(SRC, DST));
        assert!(!tcp.verify_checksum(DST, Ipv4Addr::UNSPECIFIED));

        let ip_repr = Ipv4Repr::parse(&ip).unwrap();
        let repr = TcpRepr::parse(&tcp).unwrap();
        assert_eq!(repr.options.len(), 20);
        assert_eq!((repr.header_len(), repr.buffer_len()), (40, 40));
        let mut buf = [0xffu8; 60];
        let mut ip_out = Ipv4Packet::new_unchecked(&mut buf[..]);
        ip_repr.emit(&mut ip_out);
        let mut tcp_out = TcpPacket::new_unchecked(ip_out.payload_mut());
        repr.emit(&mut tcp_out);
        tcp_out.fill_checksum(SRC, DST);
        assert_eq!(buf, SYN);
    }

    #[test]
    fn options_are_padded_and_capped() {
        let repr = TcpRepr {
            src_port: 1,
            dst_port: 2,
            seq_number: 3,
            ack_number: 4,
            flags: TcpFlags::ACK | TcpFlags::PSH,
            window_len: 5,
            urgent_ptr: 0,
            options: &[0x02, 0x04, 0x05, 0xb4, 0x01],
            payload_len: 3,
        };
        assert_eq!((repr.header_len(), repr.buffer_len()), (28, 31));
        let mut buf = [0xeeu8; 31];
        repr.emit(&mut TcpPacket::new_unchecked(&mut buf[..]));
        let p = TcpPacket::new_checked(&buf[..]).unwrap();
        assert_eq!(p.options(), &[0x02, 0x04, 0x05, 0xb4, 0x01, 0, 0, 0]);
        assert_eq!(p.payload(), &[0xee; 3]);
        let long = [1u8; 50];
        let repr = TcpRepr {
            options: &long,
            payload_len: 0,
            ..repr
        };
        assert_eq!(repr.header_len(), 60);
        let mut buf = [0u8; 60];
        repr.emit(&mut TcpPacket::new_unchecked(&mut buf[..]));
        assert_eq!(
            TcpPacket::new_checked(&buf[..]).unwrap().options(),
            &[1; 40]
        );
    }

    #[test]
    fn check_len_errors() {
        assert_eq!(
            TcpPacket::new_checked(&SYN[20..39]).unwrap_err(),
            Error::Truncated
        );
        assert_eq!(
            TcpPacket::new_checked(&SYN[20..59]).unwrap_err(),
            Error::Truncated
        );
        let mut seg = [0u8; 20];
        seg[12] = 0x40;
        assert_eq!(
            TcpPacket::new_checked(&seg[..]).unwrap_err(),
            Error::Malformed
        );
    }

    #[test]
    fn flag_setter_keeps_offset() {
        let mut seg = [0u8; 40];
        seg.copy_from_slice(&SYN[20..]);
        let mut p = TcpPacket::new_checked(&mut seg[..]).unwrap();
        p.set_flags(TcpFlags::SYN | TcpFlags::ACK | TcpFlags::ECE | TcpFlags::AE);
        assert_eq!(p.header_len(), 40);
        assert_eq!(p.flags(), TcpFlags(0x152));
        p.set_header_len(20);
        assert_eq!(p.flags(), TcpFlags(0x152));
        assert!(p.options().is_empty());
    }

    #[test]
    fn nat_rewrite_keeps_both_checksums_valid() {
        let mut buf = SYN;
        let mut ip = Ipv4Packet::new_checked(&mut buf[..]).unwrap();
        let new_dst = Ipv4Addr::new(172, 16, 5, 4);
        let old = ip.set_dst_incremental(new_dst);
        let mut tcp = TcpPacket::new_checked(ip.payload_mut()).unwrap();
        tcp.update_checksum_for_addr(old, new_dst);
        tcp.set_dst_port_incremental(8080);
        assert!(tcp.verify_checksum(SRC, new_dst));
        assert!(ip.verify_checksum());
    }

    /// A checksummed segment with arbitrary contents, and its addresses.
    fn arb_segment() -> impl Strategy<Value = (Vec<u8>, Ipv4Addr, Ipv4Addr)> {
        (
            proptest::collection::vec(any::<u8>(), 20..100),
            any::<u32>(),
            any::<u32>(),
        )
            .prop_map(|(mut d, s, t)| {
                let (src, dst) = (Ipv4Addr::from(s), Ipv4Addr::from(t));
                let mut tcp = TcpPacket::new_unchecked(&mut d[..]);
                tcp.set_header_len(20);
                tcp.fill_checksum(src, dst);
                (d, src, dst)
            })
    }

    proptest! {
        #[test]
        fn checked_never_panics(data in proptest::collection::vec(any::<u8>(), 0..200)) {
            if let Ok(p) = TcpPacket::new_checked(&data[..]) {
                let _ = (p.src_port(), p.dst_port(), p.seq_number(), p.ack_number(), p.data_offset(), p.header_len());
                let _ = (p.flags(), p.window_len(), p.checksum(), p.urgent_ptr(), p.options(), p.payload());
                let _ = p.verify_checksum(Ipv4Addr::LOCALHOST, Ipv4Addr::BROADCAST);
                let r = TcpRepr::parse(&p).unwrap();
                prop_assert_eq!(r.header_len(), p.header_len());
                prop_assert_eq!(r.payload_len, p.payload().len());
            }
        }

        #[test]
        fn repr_round_trip(
            ports in any::<(u16, u16)>(), seq in any::<u32>(), ack in any::<u32>(), flags in 0u16..0x200,
            window in any::<u16>(), urgent in any::<u16>(),
            options in proptest::collection::vec(any::<u8>(), 0..=10).prop_map(|mut v| { v.truncate(v.len() / 4 * 4); v }),
            payload_len in 0usize..50,
        ) {
            let repr = TcpRepr {
                src_port: ports.0, dst_port: ports.1, seq_number: seq, ack_number: ack, flags: TcpFlags(flags),
                window_len: window, urgent_ptr: urgent, options: &options, payload_len,
            };
            let mut buf = vec![0xa5; repr.buffer_len()];
            repr.emit(&mut TcpPacket::new_unchecked(&mut buf[..]));
            prop_assert_eq!(TcpRepr::parse(&TcpPacket::new_checked(&buf[..]).unwrap()), Ok(repr));
        }

        #[test]
        fn incremental_port_matches_recompute((mut d, src, dst) in arb_segment(), sp in any::<u16>(), dp in any::<u16>()) {
            let mut tcp = TcpPacket::new_checked(&mut d[..]).unwrap();
            tcp.set_src_port_incremental(sp);
            tcp.set_dst_port_incremental(dp);
            let incremental = tcp.checksum();
            tcp.fill_checksum(src, dst);
            prop_assert_eq!(incremental, tcp.checksum());
        }

        #[test]
        fn incremental_addr_matches_recompute((mut d, src, dst) in arb_segment(), new_src in any::<u32>(), new_dst in any::<u32>()) {
            let (new_src, new_dst) = (Ipv4Addr::from(new_src), Ipv4Addr::from(new_dst));
            let mut tcp = TcpPacket::new_checked(&mut d[..]).unwrap();
            tcp.update_checksum_for_addr(src, new_src);
            tcp.update_checksum_for_addr(dst, new_dst);
            let incremental = tcp.checksum();
            prop_assert!(tcp.verify_checksum(new_src, new_dst));
            tcp.fill_checksum(new_src, new_dst);
            prop_assert_eq!(incremental, tcp.checksum());
        }
    }
}
